"""python -m dvt_edge.evaluate: per-exit accuracy, FLOPs, and the authors' budget curve."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dvt_edge import save_checkpoint
from dvt_edge.checkpoint import load_checkpoint
from dvt_edge.data import load_dataset, stratified_subset
from dvt_edge.evaluate import evaluate_checkpoint, main
from dvt_edge.models import create_model
from dvt_edge.train import evaluate_exits
from dvt_runtime.io import sha256_file


def test_evaluate_writes_report(tmp_path, capsys):
    m = create_model("dvt_micro_fmnist").eval()
    ds = load_dataset("fashion-mnist", "val")
    save_checkpoint(tmp_path / "m.pt", m, classes=ds.classes, preprocess=ds.preprocess)
    assert main(["--checkpoint", str(tmp_path / "m.pt"), "--limit", "300", "--threshold-n", "300", "--out", str(tmp_path / "ev")]) == 0
    r = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert r["n"] == 300 and [e["grid"] for e in r["exits"]] == ["3x3", "5x5", "7x7"]
    # how it was made, in the file (a researcher could not tell a --limit run from a whole one, nor when or from which file)
    assert r["limit"] == 300 and r["checkpoint_sha256"] == sha256_file(tmp_path / "m.pt") and r["created"].startswith("20")
    import torch

    from dvt_edge.provenance import environment

    # which subset chose thresholds; which code and torch, and on how many threads (floats depend on them)
    assert r["threshold_seed"] == 1 and r["environment"] == environment(torch.get_num_threads()) and r["environment"]["threads"] >= 1
    for e in r["exits"]:  # each accuracy with its Wilson 95% interval on these 300 images (about +-4 points at 50-90%)
        lo, hi = e["top1_ci95"]
        assert lo < e["top1"] < hi and 2 < hi - lo < 12, e
    from dvt_runtime.stats import accuracy_interval

    assert accuracy_interval(50, 4) == pytest.approx((15.00, 85.00), abs=0.01)  # Wilson's, by hand: 0.5 +- 0.35 on 4
    assert accuracy_interval(85.16, 5000) == pytest.approx((84.15, 86.12), abs=0.01)
    with pytest.raises(ValueError, match="an accuracy in"):
        accuracy_interval(float("nan"), 100)
    assert r["command"] == f"python -m dvt_edge.evaluate --checkpoint {tmp_path / 'm.pt'} --limit 300 --threshold-n 300 --out {tmp_path / 'ev'}"
    assert [e["gflops"] for e in r["exits"]] == pytest.approx([e.gflops for e in m.exits])
    assert len(r["budget_curve"]) == 59
    for p in r["budget_curve"]:
        assert sum(p["exit_fractions"]) == pytest.approx(1.0)
        assert r["exits"][0]["gflops"] - 1e-9 <= p["mean_cost"] <= r["exits"][-1]["gflops"] + 1e-9
    # the per-exit numbers are the model's own: recompute on the same subset
    sub = ds.subset(stratified_subset(ds.labels, 300, seed=0))  # --limit: a seeded, class-stratified subset
    assert np.bincount(sub.labels).tolist() == [30] * 10
    x, y = sub.arrays()  # independently of evaluate_exits: the model's own forward pass on the subset
    with torch.no_grad():
        logits = m(torch.from_numpy(x))
    want = [float((lg.argmax(-1).numpy() == y).mean() * 100) for lg in logits]
    assert [e["top1"] for e in r["exits"]] == pytest.approx(want, abs=1e-9)
    assert evaluate_exits(m, sub)[0] == pytest.approx(want, abs=1e-9)
    assert (tmp_path / "ev" / "evaluate.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "FLOPs-budget curve" in out and "note: only" not in out  # 300 images: no small-sample note
    from dvt_edge.evaluate import format_report

    assert "note: only 4 images: each is 25 points of accuracy, so these figures are rough" in format_report(dict(r, n=4))


def test_threshold_images_say_whose_training_images_they_are(micro_ckpt, tmp_path, capsys):
    """A published model (no training recorded) scored on someone's folder said its threshold images were ones
    "the model trained on"; a checkpoint trained on other data says which."""
    from dvt_edge import create_model, save_checkpoint
    from dvt_edge.evaluate import evaluate_checkpoint

    save_checkpoint(tmp_path / "fresh.pt", create_model("dvt_micro_fmnist"))
    r = evaluate_checkpoint(str(tmp_path / "fresh.pt"), data="fashion-mnist", limit=50, threshold_n=40, progress=False)
    assert r["threshold_selection"] == "40 training images (seeded; the checkpoint records no training data)"
    d = tmp_path / "folder"
    for split in ("train", "val"):
        for c in range(10):
            (d / split / str(c)).mkdir(parents=True)
            cv2.imwrite(str(d / split / str(c) / "a.png"), np.full((28, 28), 20 * c, np.uint8))
    capsys.readouterr()
    r = evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{d}", threshold_n=5000, limit=200, progress=False)
    assert (r["threshold_n"], r["threshold_images"]) == (5000, 10)  # as asked, and as there were (it said 5000)
    err = capsys.readouterr().err  # fewer images than asked are said (bench --n 200 ran on 60 without a word)
    assert f"note: imagefolder:{d}'s val split has 10 images, all used to score it (up to 200 would be)" in err
    assert "train split has 10 images, all used to choose thresholds for it (up to 5000 would be)" in err
    r = evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{d}", threshold_n=10, progress=False)
    assert r["threshold_selection"] == f"10 training images (seeded; the checkpoint records training on fashion-mnist, not imagefolder:{d})"
    assert r["schema_version"] == 1 and r["unreadable_images"] == 0 and r["unreadable_files"] == []
    (d / "val" / "3" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # unreadable: left out, as before, and now said in the file
    r = evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{d}", threshold_n=10, progress=False)
    assert r["n"] == 10 and r["unreadable_images"] == 1 and r["unreadable_files"] == [str(d / "val" / "3" / "cut.png")]
    from dvt_edge.evaluate import format_report

    assert "10 images (1 unreadable left out: unreadable_files in evaluate.json)" in format_report(r)
    capsys.readouterr()
    evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{d}", threshold_n=10, limit=200, progress=False)
    err = capsys.readouterr().err  # the split holds 11 files: "has 10 images" understated it
    assert f"note: imagefolder:{d}'s val split has 10 readable images of the 11 chosen, all used to score it (up to 200 would be)" in err


def test_evaluate_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("hello")
    assert main(["--checkpoint", str(tmp_path / "x.pt")]) == 2
    assert "not a" in capsys.readouterr().err


def test_a_model_answering_nan_is_one_error_line(micro_ckpt, tmp_path, capsys):
    """evaluate_exits refuses non-finite outputs (training saved NaN models as 10% accurate): the CLI says so in one line;
    NaN weights are refused before, when the checkpoint loads, naming the tensor."""
    ckpt = torch.load(micro_ckpt, weights_only=True)
    bias = next(k for k in ckpt["model_state_dict"] if k.endswith("bias"))
    ckpt["model_state_dict"][bias] = torch.full_like(ckpt["model_state_dict"][bias], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    assert main(["--checkpoint", str(tmp_path / "nan.pt"), "--limit", "50", "--out", str(tmp_path / "o")]) == 2
    assert f"{bias} hold NaN or infinite weights" in capsys.readouterr().err
    # finite weights whose logits overflow: their softmax is NaN, or finite beside a -inf logit (evaluate had scored such a
    # broken model: 82.67% where export refused it)
    ckpt = torch.load(micro_ckpt, weights_only=True)
    head = [k for k in ckpt["model_state_dict"] if k.endswith("head.weight")][-1]
    ckpt["model_state_dict"][head].fill_(3e38)
    torch.save(ckpt, tmp_path / "overflow.pt")
    assert main(["--checkpoint", str(tmp_path / "overflow.pt"), "--limit", "50", "--out", str(tmp_path / "o")]) == 2
    assert "error: the model's outputs are not finite (exit 3 on 50 of 50 images)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # one -inf logit beside finite ones: its softmax is finite (0 there), and only the logits say the model is broken
    from dvt_edge.batches import NonFiniteOutputs

    model, _ = load_checkpoint(micro_ckpt)
    model.stages[-1].register_forward_hook(lambda mod, args, out: (out[0].index_fill(1, torch.tensor([3]), float("-inf")), *out[1:]))
    with pytest.raises(NonFiniteOutputs, match=r"not finite \(exit 3 on 20 of 20 images\)"):
        evaluate_exits(model, load_dataset("fashion-mnist", "val", limit=20))


def test_evaluate_exported_bundle_matches_pytorch(micro_ckpt, onnx_bundle, tmp_path):
    from dvt_edge.evaluate import evaluate_checkpoint, format_report

    r = evaluate_checkpoint(str(micro_ckpt), limit=200, threshold_n=200, bundles=[str(onnx_bundle)], progress=False)
    (a,) = r["artifacts"]
    assert a["target"] == "onnx" and len(a["top1"]) == 3
    # not "held-out"; micro_ckpt trained on a random 2000 of the training split (--train-limit), not on all of them
    assert r["threshold_selection"] == "200 training images (seeded; the model trained on a random 2000 of the 60000)"
    assert np.all(np.abs(np.asarray(a["delta_vs_pytorch_fp32"], float)) < 1.0)  # fp32: same answers up to ties (NaN fails)
    assert "delta vs PyTorch fp32" in format_report(r)
    # the figures are the bundle's own: an artifact whose exit 2 answers wrongly shows it
    from dvt_runtime.bundle import Bundle

    real = Bundle.run_exits

    def broken(self, x, *a, **k):
        logits = real(self, x, *a, **k)
        return [logits[0], np.roll(logits[1], 1, axis=1), logits[2]]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Bundle, "run_exits", broken)
        (b,) = evaluate_checkpoint(str(micro_ckpt), limit=200, threshold_n=200, bundles=[str(onnx_bundle)], progress=False)["artifacts"]
    assert b["delta_vs_pytorch_fp32"][1] < -5 and abs(b["delta_vs_pytorch_fp32"][0]) < 1.0


def test_evaluate_refuses_other_checkpoints_bundle_and_bad_threshold_n(micro_ckpt, onnx_bundle, tmp_path, capsys):
    """A bundle exported from other weights is not compared as this checkpoint's; --threshold-n 0 is an error, not a
    silent fall-back to choosing thresholds on the evaluation split."""
    import torch

    from dvt_edge.evaluate import evaluate_checkpoint

    other = tmp_path / "other.pt"
    ck = torch.load(micro_ckpt, weights_only=True)
    ck["model_state_dict"] = {k: v * 0 if v.is_floating_point() else v for k, v in ck["model_state_dict"].items()}
    torch.save(ck, other)
    with pytest.raises(ValueError, match="was exported from .*not from .*other.pt"):
        evaluate_checkpoint(str(other), limit=50, threshold_n=50, bundles=[str(onnx_bundle)], progress=False)
    for bad in (0, -5):
        assert main(["--checkpoint", str(micro_ckpt), "--threshold-n", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert "threshold_n (--threshold-n) must be a whole number >= 1" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["--checkpoint", str(micro_ckpt), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["--checkpoint", str(micro_ckpt), "--threads", "-1", "--out", str(tmp_path / "o2")]) == 2  # evaluate had no --threads
    assert "--threads must be >= 1, or 0 for torch's own choice" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_evaluate_refuses_an_unwritable_out_before_the_work(micro_ckpt, tmp_path, monkeypatch, capsys):
    """A read-only --out was found only after the evaluation, as a traceback with exit status 1."""
    import dvt_edge.evaluate as E
    from dvt_runtime import io

    monkeypatch.setattr(io, "unwritable", lambda folder: "read-only file system" if Path(folder) == tmp_path else "")
    monkeypatch.setattr(E, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    assert main(["--checkpoint", str(micro_ckpt), "--out", str(tmp_path / "ev")]) == 2
    assert f"--out {tmp_path / 'ev' / 'evaluate.json'}: cannot write in {tmp_path} (read-only file system)" in capsys.readouterr().err


def test_evaluate_default_out_is_under_runs_not_beside_the_checkpoint(micro_ckpt, tmp_path, monkeypatch):
    """Evaluating the shipped reference must not write into the package (or a wheel's site-packages)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(micro_ckpt), "--limit", "50", "--threshold-n", "50"]) == 0
    assert (tmp_path / "runs" / "evaluate" / "run-best" / "evaluate.json").is_file()  # the fixture's run/best.pt
    assert not (micro_ckpt.parent / "evaluate").exists()
    # two runs' best.pt went to runs/evaluate/best, the second replacing the first: each run's folder names its own
    for run in ("small", "ft"):
        (tmp_path / run).mkdir()
        shutil.copy(micro_ckpt, tmp_path / run / "best.pt")
        assert main(["--checkpoint", str(Path(run) / "best.pt"), "--limit", "50", "--threshold-n", "50"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "evaluate").iterdir()) == ["ft-best", "run-best", "small-best"]
    from dvt_edge.evaluate import default_out

    names = {c: default_out(c).name for c in ("a/model.v1.pt", "a/model.v2.pt", "a/resnet_0.5x.pt", "x/model_best.pth.tar", "r/last.pt",
                                              "b/best.PT", "c/.pt")}
    assert names == {"a/model.v1.pt": "model.v1", "a/model.v2.pt": "model.v2", "a/resnet_0.5x.pt": "resnet_0.5x",
                     "x/model_best.pth.tar": "x-model_best", "r/last.pt": "r-last", "b/best.PT": "b-best", "c/.pt": "c-checkpoint"}


def test_labels_of_other_classes_are_refused_and_an_exported_val_file_chooses_no_thresholds_as_training(micro_ckpt, tmp_path, capsys):
    """Another data set's labels score nothing: evaluate and bench refuse them (calibrate: tests/test_runtime.py);
    thresholds were chosen on an exported val file's own images and called "training images" (it had no split)."""
    from dvt_edge.bench import main as bench_main
    from dvt_edge.data import DataError, export_npz
    from dvt_edge.evaluate import evaluate_checkpoint

    export_npz(load_dataset("fashion-mnist", "val"), tmp_path / "val.npz", n=60, progress=False)
    z = dict(np.load(tmp_path / "val.npz", allow_pickle=False))
    np.savez(tmp_path / "other.npz", **{**z, "classes": np.array([f"c{i}" for i in range(10)])})
    other = f"npz:{tmp_path / 'other.npz'}"
    assert main(["--checkpoint", str(micro_ckpt), "--data", other, "--out", str(tmp_path / "e")]) == 2
    assert "cannot score this model: its classes ['c0'" in capsys.readouterr().err
    assert bench_main(["--checkpoint", str(micro_ckpt), "--data", other, "--targets", "onnx", "--precisions", "fp32", "--n", "60",
                       "--out", str(tmp_path / "b")]) == 2
    assert "cannot benchmark this model: its classes ['c0'" in capsys.readouterr().err
    with pytest.raises(DataError, match="holds only the 'val' split, not 'train'"):
        load_dataset(f"npz:{tmp_path / 'val.npz'}", "train")
    from dvt_edge.imageset import label_mismatch

    np.savez(tmp_path / "numbered.npz", **{**z, "classes": np.array([str(i) for i in range(10)])})  # names no classes
    fm = load_dataset("fashion-mnist", "val").classes
    assert label_mismatch(load_dataset(f"npz:{tmp_path / 'numbered.npz'}", "val"), 10, fm) is None
    assert label_mismatch(load_dataset(other, "val"), 10, fm) and label_mismatch(load_dataset(other, "val"), 10, None) is None
    r = evaluate_checkpoint(str(micro_ckpt), data=f"npz:{tmp_path / 'val.npz'}", threshold_n=60, progress=False)
    assert r["threshold_selection"].startswith("the evaluation split itself (training split unavailable"), r["threshold_selection"]


def test_a_bundle_that_cannot_run_here_is_one_error_before_any_work(micro_ckpt, onnx_bundle, tmp_path, capsys, monkeypatch):
    """A Core ML bundle off macOS was a BackendUnavailable traceback, after the whole PyTorch evaluation."""
    from dvt_edge import evaluate as ev
    from dvt_runtime.backends import BackendUnavailable
    from dvt_runtime.bundle import Bundle

    def unavailable(*a, **k):
        raise BackendUnavailable("Core ML runs only on macOS (coremltools' MLModel.predict)")

    def no_work(*a, **k):
        raise AssertionError("evaluated before the bundle was checked")

    monkeypatch.setattr(Bundle, "open", unavailable)
    monkeypatch.setattr(ev, "evaluate_exits", no_work)
    assert main(["--checkpoint", str(micro_ckpt), "--bundles", str(onnx_bundle), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"bundle {onnx_bundle} cannot run here: Core ML runs only on macOS" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_a_bundle_that_cannot_run_here_beside_others_is_a_row_not_an_abort(micro_ckpt, onnx_bundle, tmp_path, capsys, monkeypatch):
    """--bundles ONNX COREML on Linux aborted the whole run on the Core ML one: the ONNX bundle is scored, the other
    is a "not scored" row with the reason (in the JSON and the report) and a warning."""
    from dvt_runtime.backends import BackendUnavailable
    from dvt_runtime.bundle import Bundle

    real_open, mac = Bundle.open, str(tmp_path / "coreml-bundle")

    def open_here(path, *a, **k):
        if str(path) == mac:
            raise BackendUnavailable("Core ML runs only on macOS (coremltools' MLModel.predict)")
        return real_open(path, *a, **k)

    monkeypatch.setattr(Bundle, "open", open_here)
    assert main(["--checkpoint", str(micro_ckpt), "--limit", "100", "--threshold-n", "100", "--bundles", str(onnx_bundle), mac,
                 "--out", str(tmp_path / "e")]) == 0
    out, err = capsys.readouterr()
    assert f"warning: bundle {mac} cannot run here: Core ML runs only on macOS" in err
    r = json.loads((tmp_path / "e" / "evaluate.json").read_text())
    scored, skipped = r["artifacts"]
    assert scored["bundle"] == str(onnx_bundle) and all(np.isfinite(scored["top1"])) and "top1" not in skipped
    assert skipped == {"bundle": mac, "status": f"bundle {mac} cannot run here: Core ML runs only on macOS (coremltools' MLModel.predict)"}
    assert f"not scored: bundle {mac} cannot run here" in out


def test_one_set_npz_says_its_thresholds_come_from_the_scored_images_and_another_recipes_floats_are_refused(micro_ckpt, tmp_path):
    """An npz without a split entry is read whole as either split: the curve's thresholds were chosen on the scored images
    and called "training images"; float32 images another preprocessing made were scored without a word (81.80% where the
    model's own preprocessing gave 91.20%)."""
    from dvt_edge.data import DataError, export_npz
    from dvt_edge.evaluate import evaluate_checkpoint
    from dvt_runtime.preprocess import Preprocess

    export_npz(load_dataset("fashion-mnist", "val"), tmp_path / "val.npz", n=60, progress=False)
    z = {k: v for k, v in np.load(tmp_path / "val.npz", allow_pickle=False).items() if k != "split"}
    np.savez(tmp_path / "one.npz", **z)
    r = evaluate_checkpoint(str(micro_ckpt), data=f"npz:{tmp_path / 'one.npz'}", threshold_n=30, progress=False)
    assert "of the scored images themselves" in r["threshold_selection"] and "optimistic" in r["threshold_selection"], r
    other = Preprocess(size=28, resize=28, channels="gray", mean=(0.5,), std=(0.5,))
    pixels = load_dataset("fashion-mnist", "val", preprocess=other).limit(20)
    export_npz(pixels, tmp_path / "other.npz", progress=False)
    with pytest.raises(DataError, match=r"preprocessed otherwise than this model expects \(mean: \[0.5\] vs \[0.286\]"):
        evaluate_checkpoint(str(micro_ckpt), data=f"npz:{tmp_path / 'other.npz'}", progress=False)


def test_numbered_classes_score_a_bundle_as_they_score_the_checkpoint(micro_ckpt, onnx_bundle, tmp_path):
    """An npz without class names was scored against the checkpoint (numbered classes name nothing) and then refused
    for its bundle ("names other classes")."""
    from dvt_edge.data import export_npz
    from dvt_edge.evaluate import evaluate_checkpoint

    export_npz(load_dataset("fashion-mnist", "val"), tmp_path / "val.npz", n=60, progress=False)
    np.savez(tmp_path / "nameless.npz", **{k: v for k, v in np.load(tmp_path / "val.npz").items() if k != "classes"})
    r = evaluate_checkpoint(str(micro_ckpt), data=f"npz:{tmp_path / 'nameless.npz'}", threshold_n=30, bundles=[str(onnx_bundle)],
                            progress=False)
    (art,) = r["artifacts"]
    assert all(math.isfinite(d) and abs(d) <= 2.0 for d in art["delta_vs_pytorch_fp32"]), art


def test_the_shipped_sets_train_split_is_called_the_references_own_images():
    """The demo's evaluation said "the checkpoint records training on cifar10-jpeg, not cifar10-ref", which reads as a data
    mismatch: cifar10-ref's train split is 1,000 of the very images the reference trained on."""
    from dvt_edge.evaluate import _whose

    assert "1,000 of the images the reference trained on" in _whose({"data": "cifar10-jpeg"}, "cifar10-ref", 1000)
    assert "not fashion-mnist" in _whose({"data": "cifar10-jpeg"}, "fashion-mnist", 1000)


def test_a_checkpoints_own_dynamic_threshold_rows_are_scored_as_stored(tmp_path, capsys):
    """A published file's dynamic_threshold rows were never used by evaluate (the authors' --eval_mode 1), while its
    plot called the re-chosen curve "authors' thresholds". 1e8 never stops at an exit, -1e8 always does."""
    m = create_model("dvt_micro_fmnist").eval()
    ds = load_dataset("fashion-mnist", "val")
    save_checkpoint(tmp_path / "m.pt", m, classes=ds.classes, preprocess=ds.preprocess)
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    inf = float("inf")
    ck["dynamic_threshold"] = torch.tensor([[-1e8, -1e8, -1e8], [inf, 1e8, -inf], [1e8, -1e8, -1e8], [float("nan"), 0.5, -1e8]])
    torch.save(ck, tmp_path / "m.pt")
    assert main(["--checkpoint", str(tmp_path / "m.pt"), "--limit", "200", "--threshold-n", "200", "--out", str(tmp_path / "ev")]) == 0
    r = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    rows = r["checkpoint_thresholds_curve"]
    assert len(rows) == 3  # the row holding NaN left out
    for row, k in zip(rows, (0, 2, 1)):  # every image at exit 1, at exit 3, at exit 2
        assert row["exit_fractions"] == [float(i == k) for i in range(3)], row
        assert row["accuracy"] == pytest.approx(r["exits"][k]["top1"]) and row["mean_cost"] == pytest.approx(r["exits"][k]["gflops"])
    out = capsys.readouterr().out
    assert "the checkpoint's dynamic_threshold rows (3), scored here" in out and "note: 1 of its 4 dynamic_threshold rows hold NaN" in out
    save_checkpoint(tmp_path / "plain.pt", m, classes=ds.classes, preprocess=ds.preprocess)
    r = evaluate_checkpoint(str(tmp_path / "plain.pt"), limit=100, threshold_n=100, progress=False)
    assert r["checkpoint_thresholds_curve"] == []


def test_per_class_figures_show_a_rare_class_an_early_exit_never_answers():
    """A 4-class, 5:1 unbalanced custom set: exit 1 never predicted the rare class, which overall top-1 (60%) hid."""
    from dvt_edge.evaluate import format_report, per_class, per_class_lines

    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    probs = np.zeros((2, 10, 4))
    probs[0, np.arange(10), [0] * 6 + [0, 1, 1] + [0]] = 1  # exit 1: class 2 never predicted, class 3 has no images
    probs[1, np.arange(10), labels] = 1  # exit 2: all right
    pc = per_class(probs.argmax(-1), labels, ["Scratch Defect", "Dent", "OK Part", "Unused"])
    assert pc["support"] == [6, 3, 1, 0] and np.allclose(pc["recall"][0][:3], [100, 200 / 3, 0]) and pc["recall"][0][3] is None
    assert pc["predicted_pct"][0] == [80.0, 20.0, 0.0, 0.0] and pc["confusion_last_exit"][2] == [0, 0, 1, 0]
    text = "\n".join(per_class_lines(pc))
    assert "OK Part" in text and "note: exit 1 never predicts OK Part (on these images)" in text and "Unused" not in text
    assert "exit 2 never" not in text
    r = {"model": "m", "data": "d", "split": "val", "n": 10, "exits": [], "budget_curve": [], "threshold_selection": "x", "pareto": [],
         "per_class": pc}
    assert "per class (recall % at each exit alone; n images):" in format_report(r)


def test_a_test_folder_without_some_of_the_models_classes_is_scored_as_its_classes(micro_ckpt, tmp_path, capsys):
    """A labelled test folder lacking a class (no T-shirt/top photos: a '/' cannot name a folder anyway) was refused, 'it has
    9 classes, the model 10'; it is scored with the model's indices, the missing classes said. Folders named like the
    classes but for case or punctuation are read as those classes, and said."""
    ds = load_dataset("fashion-mnist", "val", limit=60, seed=2)
    keep = [k for k in range(1, 10)]
    for i in range(len(ds)):
        if int(ds.labels[i]) in keep:
            c = tmp_path / "d" / "val" / ds.classes[int(ds.labels[i])]
            c.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(c / f"{i}.png"), ds.images[i])
    r = evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{tmp_path / 'd'}", threshold_n=20, progress=False)
    assert "holds 9 of the model's 10 classes (none of 'T-shirt/top')" in capsys.readouterr().err
    want = ds.labels[np.isin(ds.labels, keep)]
    assert r["n"] == len(want) and r["per_class"]["support"] == np.bincount(want, minlength=10).tolist()
    # all of the classes in the folders' (sorted) order: relabelled by name, as the subset is (it was refused, "its classes
    # ['Ankle boot', 'Bag', ...] are not the checkpoint's", though they were)
    from dvt_edge.imageset import ImageSet, as_model_labels

    order = sorted(ds.classes)
    by_name = ImageSet(ds.name, "val", ds.images, np.array([order.index(ds.classes[k]) for k in ds.labels]), order, ds.preprocess)
    assert as_model_labels(by_name, 10, list(ds.classes)).labels.tolist() == ds.labels.tolist()
    assert as_model_labels(ds, 10, list(ds.classes)) is None  # the model's order already
    # folders spelled otherwise (case, punctuation) are read as the class they spell, said: `ankle_boot` had been refused
    # (rename), and the class T-shirt/top could not be scored at all (a folder cannot hold a '/'), while predict --labels read both
    (tmp_path / "d" / "val" / "Ankle boot").rename(tmp_path / "d" / "val" / "ankle_boot")
    (tmp_path / "d" / "val" / "T-shirt_top").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "val" / "T-shirt_top" / "t.png"), ds.images[int(np.flatnonzero(ds.labels == 0)[0])])
    capsys.readouterr()
    r2 = evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{tmp_path / 'd'}", threshold_n=20, progress=False)
    assert "folders read as the model's classes spelled otherwise: 'T-shirt_top' as 'T-shirt/top', 'ankle_boot' as 'Ankle boot'" in \
        capsys.readouterr().err
    assert r2["per_class"]["support"] == [1] + r["per_class"]["support"][1:]
    # a folder spelled like no class, or two folders spelled like one, is still refused with what to do
    (tmp_path / "d" / "val" / "Ankle boot").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "val" / "Ankle boot" / "a.png"), ds.images[0])
    with pytest.raises(ValueError, match=r"are spelled like the checkpoint's .* but not one for one .*: rename the folders") as e:
        evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{tmp_path / 'd'}", threshold_n=20, progress=False)
    assert "--finetune" not in str(e.value)  # its classes are the model's: a new model is no fix
    shutil.rmtree(tmp_path / "d" / "val" / "Ankle boot")
    (tmp_path / "d" / "val" / "ankle_boot").rename(tmp_path / "d" / "val" / "boots")
    with pytest.raises(ValueError, match=r"its classes \['boots'\] are none of the checkpoint's"):
        evaluate_checkpoint(str(micro_ckpt), data=f"imagefolder:{tmp_path / 'd'}", threshold_n=20, progress=False)
