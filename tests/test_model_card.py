"""Publishing a run as a reference checkpoint + model card, and the committed reference itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dvt_edge import load_checkpoint
from dvt_edge.checkpoint import CheckpointError, read_checkpoint
from dvt_edge.model_card import _NOT_IN_COMMAND, publish_run, step_commands, train_command
from dvt_edge.references import REFERENCES, Reference
from dvt_edge.train import build_parser
from dvt_runtime.io import sha256_file

#: each reference's bar: (min first-exit top-1, min last-exit top-1, min gain from an exit to the next), in points
BARS = {"cifar10": (75.0, 85.0, 2.0), "fashion-mnist": (84.0, 90.0, 0.5)}
#: images the bar is measured on: CIFAR-10's 5,000 held-out training images, Fashion-MNIST's test split
SIZES = {"cifar10": 5000, "fashion-mnist": 10000}


def test_publish_run_writes_final_weights_and_a_card(micro_ckpt, tmp_path):
    run = micro_ckpt.parent
    out = tmp_path / "assets" / "ref.pt"
    out.parent.mkdir()
    r = publish_run(str(run), str(out), threshold_n=500, progress=False)
    # weights are the final epoch's, without optimizer state
    raw = read_checkpoint(out)
    assert "train" not in raw and raw["format"] == "dvt-edge-checkpoint"
    final = load_checkpoint(run / "last.pt")[0].state_dict()
    for k, v in load_checkpoint(out)[0].state_dict().items():
        assert torch.equal(v, final[k]), k
    card = (out.parent / "MODEL_CARD_ref.md").read_text()
    assert sha256_file(out) in card and "not one of dvt-edge's own variants" not in card
    assert len(r["exits"]) == 3 and r["n"] == 10000 and "rough" not in card
    for e in r["exits"]:  # every per-exit figure of the evaluation is in the card's table
        assert re.search(rf"\| {e['exit']} \| {e['grid']} \| {e['gflops'] * 1e3:.2f} \| {e['top1']:.2f} \|", card), e
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert f"| {len(history)} | {history[-1]['train_loss']:.3f} |" in card
    from dvt_edge.provenance import environment_line  # which code, torch and CPU made it (version numbers alone cannot say)

    assert f"- Environment: {environment_line(history[-1]['environment'])}. A bit-identical rerun needs the same" in card
    assert "compute fp32 on 1 thread." in card
    assert (run / "card_eval" / "evaluate.json").is_file() and (run / "card_eval" / "evaluate.png").stat().st_size > 1000


def test_a_card_scored_on_few_images_says_its_figures_are_rough(micro_ckpt, tmp_path):
    """A card of accuracies on 60 images stated them to two decimals with nothing said (evaluate's report said it)."""
    import numpy as np

    classes = load_checkpoint(micro_ckpt)[1].classes
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "few.npz", images=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), labels=np.arange(60) % 10,
             classes=np.array(classes), split=np.array("val"))
    r = publish_run(str(micro_ckpt.parent), str(tmp_path / "few.pt"), data=f"npz:{tmp_path / 'few.npz'}", threshold_n=30, progress=False)
    card = (tmp_path / "MODEL_CARD_few.md").read_text()
    assert r["n"] == 60 and "Note: only 60 images: each is 1.7 points of accuracy, so these figures are rough" in card


def test_eval_data_given_relative_is_recorded_absolute(micro_ckpt, tmp_path, monkeypatch):
    """--eval-data imagefolder:test3 was recorded as typed: evaluate run from another folder holding its own test3/
    scored that one (a user's 1,690 training images, 85.27 / 89.70 / 94.50% for 78.10 / 82.86 / 83.81), unsaid. A path
    is recorded absolute, as a run's --data is; a named set stays a name."""
    classes = load_checkpoint(micro_ckpt)[1].classes
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "few.npz", images=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), labels=np.arange(60) % 10,
             classes=np.array(classes), split=np.array("val"))
    monkeypatch.chdir(tmp_path)
    publish_run(str(micro_ckpt.parent), str(tmp_path / "rel.pt"), eval_data="npz:few.npz", threshold_n=30, progress=False)
    assert load_checkpoint(tmp_path / "rel.pt")[1].extras["eval_data"] == f"npz:{tmp_path / 'few.npz'}"
    from dvt_edge.data import absolute_spec

    assert absolute_spec("fashion-mnist") == "fashion-mnist" and absolute_spec("cifar10-ref") == "cifar10-ref"


def test_fine_tuned_run_publishes_its_lineage_and_every_step(micro_ckpt, tmp_path):
    """A run fine-tuned (with self-distillation) from one of our runs: the published file records the
    source's SHA-256, arguments and accuracy; the card gives both steps' commands, the second
    fine-tuning from where the first wrote; publishing over the source itself works."""
    from dvt_edge.train import train

    step1 = micro_ckpt.parent
    src = tmp_path / "ref.pt"
    publish_run(str(step1), str(src), threshold_n=500, progress=False)
    src_sha = sha256_file(src)
    run = tmp_path / "ft"
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "500", "--val-limit", "200",
                                     "--batch-size", "64", "--lr", "1e-3", "--warmup-epochs", "0.1", "--no-augment", "--threads", "1",
                                     "--quiet", "--finetune", str(src), "--distill", "0.5", "--distill-temp", "3", "--out", str(run)]))
    with pytest.raises(ValueError, match=r"exists; pass --force to replace it and its model card"):
        publish_run(str(run), str(src), threshold_n=500, progress=False)
    publish_run(str(run), str(src), threshold_n=500, progress=False, force=True)  # the fine-tuned weights replace their source
    first = load_checkpoint(src)[1].extras["lineage"]
    publish_run(str(run), str(src), threshold_n=500, progress=False, force=True)  # again: the lineage is the one read then
    extras = load_checkpoint(src)[1].extras
    assert extras["lineage"] == first
    steps = json.loads(extras["lineage"])
    assert len(steps) == 1 and steps[0]["sha256"] == src_sha and steps[0]["checkpoint"] == str(src)
    assert steps[0]["args"] == json.loads(read_checkpoint(step1 / "last.pt")["train"]["args"])
    card = (tmp_path / "MODEL_CARD_ref.md").read_text()
    assert "Trained in 2 steps" in card and "0.5 x each earlier exit's KL divergence" in card and "temperature 3" in card
    cmds = step_commands(steps, json.loads(extras["train_summary"])["args"], str(run))
    assert len(cmds) == 2 and all(c in card for c in cmds), cmds
    assert f"--out {run}-step1" in cmds[0] and f"--finetune {run}-step1/last.pt" in cmds[1] and "--distill 0.5" in cmds[1]


def test_lineage_names_the_source_the_run_started_from_wherever_it_is_published(micro_ckpt, tmp_path, monkeypatch):
    """--finetune runs/src/last.pt was recorded as typed: published from another folder, the lineage took that folder's
    runs/src/last.pt (another file: its hash, arguments and accuracy). A source replaced since the run started is refused."""
    import shutil

    from dvt_edge.train import train

    for d, src in (("a", micro_ckpt), ("b", tmp_path / "other.pt")):
        (tmp_path / d / "runs" / "src").mkdir(parents=True)
        if d == "b":
            ckpt = read_checkpoint(micro_ckpt)
            ckpt["anytime_classification"] = [1.0, 2.0, 3.0]  # another file at the same relative path
            torch.save(ckpt, src)
        shutil.copy(src, tmp_path / d / "runs" / "src" / "last.pt")
    real = tmp_path / "a" / "runs" / "src" / "last.pt"
    monkeypatch.chdir(tmp_path / "a")
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "200", "--val-limit", "100",
                                     "--threads", "1", "--quiet", "--finetune", "runs/src/last.pt", "--out", str(tmp_path / "ft")]))
    monkeypatch.chdir(tmp_path / "b")
    publish_run(str(tmp_path / "ft"), str(tmp_path / "pub.pt"), threshold_n=100, progress=False)
    step = json.loads(load_checkpoint(tmp_path / "pub.pt")[1].extras["lineage"])[-1]
    assert step["checkpoint"] == str(real) and step["sha256"] == sha256_file(real)
    shutil.copy(tmp_path / "other.pt", real)  # the source replaced after the run started from it
    with pytest.raises(CheckpointError, match="which has changed since"):
        publish_run(str(tmp_path / "ft"), str(tmp_path / "pub2.pt"), threshold_n=100, progress=False)


def test_eval_data_the_run_trained_on_is_refused(micro_ckpt, tmp_path):
    """--eval-data cifar10-ref for a run on the official CIFAR-10 (all 50,000 training images, cifar10-ref's val among them)
    would have made every later figure of the published file in-sample."""
    (tmp_path / "run").mkdir()
    ckpt = read_checkpoint(micro_ckpt.parent / "last.pt")
    ckpt["train"]["args"] = json.dumps({**json.loads(ckpt["train"]["args"]), "data": "cifar10"})
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="--eval-data cifar10-ref: cifar10-ref's val images are 5,000 of CIFAR-10's training"):
        publish_run(str(tmp_path / "run"), str(tmp_path / "pub.pt"), eval_data="cifar10-ref", progress=False)
    with pytest.raises(CheckpointError, match="--data cifar10-ref: cifar10-ref's val images"):  # scored on them: the card's figures
        publish_run(str(tmp_path / "run"), str(tmp_path / "pub.pt"), data="cifar10-ref", progress=False)
    assert not (tmp_path / "pub.pt").exists()
    # a run recorded on a whole npz file (before npz files had a held-out 10%): a card scored on that file is in-sample too
    f = tmp_path / "set.npz"
    np.savez(f, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 10)
    ckpt["train"]["args"] = json.dumps({**json.loads(ckpt["train"]["args"]), "data": f"npz:{f}"})
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="--data npz:.*set.npz holds one set of images .* trained on all of it"):
        publish_run(str(tmp_path / "run"), str(tmp_path / "pub.pt"), data=f"npz:{f}", progress=False)
    assert not (tmp_path / "pub.pt").exists()


def _fine_tuned_run_whose_source_is_gone(micro_ckpt, tmp_path):
    """(source path, run dir): a micro run fine-tuned from a published file, which is then deleted."""
    from dvt_edge.train import train

    src = tmp_path / "src.pt"
    publish_run(str(micro_ckpt.parent), str(src), threshold_n=500, progress=False)
    run = tmp_path / "ft"
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "200", "--val-limit", "100",
                                     "--threads", "1", "--quiet", "--finetune", str(src), "--out", str(run)]))
    src.unlink()
    return src, run


def test_publish_refuses_a_run_whose_source_is_gone(micro_ckpt, tmp_path):
    src, run = _fine_tuned_run_whose_source_is_gone(micro_ckpt, tmp_path)
    with pytest.raises(CheckpointError, match="lineage"):
        publish_run(str(run), str(tmp_path / "out.pt"), threshold_n=500, progress=False)
    assert not (tmp_path / "out.pt").exists()


def test_lineage_records_an_earlier_source_that_is_gone(micro_ckpt, tmp_path):
    """Publishing needs the direct source; an earlier step's file that is gone is named, not required."""
    from dvt_edge.model_card import lineage
    from dvt_edge.references import PREVIOUS, Reference

    src, run = _fine_tuned_run_whose_source_is_gone(micro_ckpt, tmp_path)
    steps = lineage({"finetune": str(run / "last.pt")})  # fine-tuning the fine-tuned run again
    assert [s["checkpoint"] for s in steps] == [str(src), str(run / "last.pt")]
    assert steps[0]["sha256"] is None and "gone" in steps[0]["note"] and steps[1]["sha256"] == sha256_file(run / "last.pt")
    cmds = step_commands(steps, {**steps[1]["args"], "finetune": str(run / "last.pt")}, "runs/x")
    assert cmds[0].startswith(f"(start from {src}, SHA-256 unknown") and "--finetune runs/x-step2/last.pt" in cmds[2]
    bad = Reference("bad", "dvt_micro_fmnist", src, (("--finetune", PREVIOUS),), "")
    with pytest.raises(ValueError, match="first training step"):
        bad.step_argv(tmp_path / "r")


def test_a_224px_runs_command_names_its_batch_size():
    """A 224 px run at batch 128 got a command without --batch-size, which now trains at 32."""
    from dvt_edge.train import build_parser as bp

    args = vars(bp().parse_args(["--model", "dvt_t2t_vit_12", "--data", "imagefolder:/x", "--batch-size", "128", "--out", "r"]))
    assert "--batch-size 128" in train_command(args, "r")
    assert "--batch-size" not in train_command(vars(bp().parse_args(["--model", "dvt_micro_fmnist", "--out", "r"])), "r")


def test_train_command_reproduces_the_run_arguments(micro_ckpt):
    t = read_checkpoint(micro_ckpt.parent / "last.pt")["train"]
    args = json.loads(t["args"])
    cmd = train_command(args, "runs/again")
    assert cmd.startswith("python -m dvt_edge.train --model dvt_micro_fmnist --data fashion-mnist --epochs 1 --seed 0")
    again = vars(build_parser().parse_args(cmd.split()[3:]))
    assert again["out"] == "runs/again"
    assert {k: v for k, v in again.items() if k not in _NOT_IN_COMMAND} == {k: v for k, v in args.items() if k not in _NOT_IN_COMMAND}


def test_unfinished_run_is_refused_and_nothing_written(micro_ckpt, tmp_path):
    raw = read_checkpoint(micro_ckpt.parent / "last.pt")
    raw["train"]["epochs"] = raw["train"]["epoch"] + 5  # as if stopped early
    run = tmp_path / "run"
    run.mkdir()
    torch.save(raw, run / "last.pt")
    with pytest.raises(CheckpointError, match=rf"finish it with python -m dvt_edge.train --out {run} --resume$"):  # as typed, no '...'
        publish_run(str(run), str(tmp_path / "ref.pt"), progress=False)
    assert not (tmp_path / "ref.pt").exists()
    # a finished run that a --force run started over (stopped before its first epoch): --resume refuses it, publishing had not
    over = tmp_path / "over"
    over.mkdir()
    shutil.copy(micro_ckpt.parent / "last.pt", over / "last.pt")
    (over / "started-over.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"was started over with --force .* still the earlier run's.*delete .*started-over\.json"):
        publish_run(str(over), str(tmp_path / "ref.pt"), progress=False)
    assert not (tmp_path / "ref.pt").exists()
    with pytest.raises(CheckpointError, match="training run directory"):
        publish_run(str(tmp_path / "nope"), str(tmp_path / "ref.pt"), progress=False)


@pytest.mark.parametrize("edit, said", [
    (lambda h, t: h[-1].update(train_loss=float("nan")), "train_loss nan"),
    (lambda h, t: h[0].update(val_acc=[float("inf"), 50.0, 60.0]), "val_acc inf"),
    (lambda h, t: h[-1].update(val_acc=[10.0, -3.0, 60.0]), "val_acc -3.0"),
    (lambda h, t: t.update(run_seconds=float("inf")), "run_seconds inf"),
])
def test_a_run_whose_recorded_figures_are_damaged_is_not_published(micro_ckpt, tmp_path, edit, said):
    """A card printed 'inf min for the whole run' and epochs of nan / inf / -3.00 from an edited checkpoint's history."""
    raw = read_checkpoint(micro_ckpt.parent / "last.pt")
    history = json.loads(raw["train"]["history"])
    edit(history, raw["train"])
    raw["train"]["history"] = json.dumps(history)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(raw, run / "last.pt")
    with pytest.raises(CheckpointError, match=rf"recorded training figures are not finite or out of range \((epoch \d+: )?{said}\)"):
        publish_run(str(run), str(tmp_path / "ref.pt"), progress=False)
    assert not (tmp_path / "ref.pt").exists()


@pytest.mark.parametrize("ref", REFERENCES.values(), ids=list(REFERENCES))
def test_demo_retrain_is_the_reference_run(ref: Reference):
    """`python -m dvt_edge.demo --retrain` runs, step by step, the commands recorded in the committed
    reference (the last step's arguments and, for fine-tuned references, its lineage)."""
    extras = load_checkpoint(ref.checkpoint)[1].extras
    steps = json.loads(extras["lineage"]) if "lineage" in extras else []
    recorded_steps = [st["args"] for st in steps] + [json.loads(extras["train_summary"])["args"]]
    assert len(recorded_steps) == len(ref.steps)
    defaults = vars(build_parser().parse_args(["--out", "x"]))
    ignored = _NOT_IN_COMMAND | {"finetune"}  # a path: where the previous step wrote (checked below)
    for i, (argv, recorded) in enumerate(zip(ref.step_argv(Path("runs/x")), recorded_steps)):
        retrain = vars(build_parser().parse_args(argv))
        # flags added after the run was recorded must be at their defaults (the run did not have them)
        recorded = {**{k: defaults[k] for k in retrain if k not in recorded}, **recorded}
        assert {k: v for k, v in retrain.items() if k not in ignored} == {k: v for k, v in recorded.items() if k not in ignored}, i
        assert (retrain["finetune"] == f"runs/x-step{i}/last.pt") if i else retrain["finetune"] is None
        assert bool(recorded["finetune"]) == bool(i)
    card = ref.card.read_text()
    for cmd in step_commands(steps, recorded_steps[-1], "runs/x"):
        assert cmd.replace("runs/x", json.loads(extras["train_summary"])["args"]["out"]) in card


@pytest.fixture(scope="module", params=list(REFERENCES))
def reference_accuracy(request) -> tuple[Reference, list[float]]:
    """Per-exit top-1 of a committed reference on its evaluation set (no ../shared needed)."""
    from dvt_edge.data import default_data, load_dataset
    from dvt_edge.train import evaluate_exits

    ref = REFERENCES[request.param]
    assert ref.checkpoint.is_file(), f"the committed reference checkpoint {ref.checkpoint} is missing"
    model, info = load_checkpoint(ref.checkpoint)
    assert model.name == ref.model
    ds = load_dataset(default_data(model.name, info.extras), "val", preprocess=info.preprocess)
    assert len(ds) == SIZES[ref.key]
    return ref, evaluate_exits(model, ds)[0]


#: references that do not reach their bar yet: key -> why (the bar tests then xfail strictly, so a
#: retrained file that meets the bar makes the suite fail until its entry is removed)
SHORT_OF_BAR: dict[str, str] = {}


def _bar(ref: Reference, ok: bool, detail: str) -> None:
    """Assert the bar; for a reference listed in SHORT_OF_BAR, an expected failure that turns into an
    error as soon as the file meets the bar (strict)."""
    if ref.key in SHORT_OF_BAR:
        if ok:
            pytest.fail(f"{ref.key} now meets its bar ({detail}): remove it from SHORT_OF_BAR")
        pytest.xfail(f"{SHORT_OF_BAR[ref.key]} (measured: {detail})")
    assert ok, detail


def test_reference_card_states_the_file(reference_accuracy):
    """The card is this file's: its SHA-256 and every per-exit top-1 measured here."""
    ref, acc = reference_accuracy
    card = ref.card.read_text()
    assert sha256_file(ref.checkpoint) in card, f"{ref.card.name} describes another file: regenerate it with python -m dvt_edge.model_card"
    for i, a in enumerate(acc):
        assert re.search(rf"\| {i + 1} \| \d+x\d+ \| [\d.]+ \| {a:.2f} \|", card), (i, a)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(REFERENCES))
def test_reference_cards_budget_curve_is_what_its_command_gives(key):
    """The Fashion-MNIST card's Pareto rows dated from an older choice of threshold images (a seeded permutation, before the
    stratified subset): its own Results command gave other rows (1.94 MFLOPs at 88.14% where it said 1.92 at 88.12%)."""
    from dvt_edge.data import DataError
    from dvt_edge.evaluate import evaluate_checkpoint
    from dvt_edge.model_card import pareto_rows

    ref = REFERENCES[key]
    card = ref.card.read_text()
    cmd = re.search(r"## Results \(`python -m dvt_edge.evaluate --checkpoint (\S+) --data (\S+) --threshold-n (\d+)`\)", card)
    assert cmd, f"{ref.card.name} states no evaluate command"
    try:
        report = evaluate_checkpoint(str(ref.checkpoint), data=cmd.group(2), threshold_n=int(cmd.group(3)), progress=False)
    except DataError as e:  # CIFAR-10's training JPEGs (the threshold images) are not on every machine
        pytest.skip(f"{cmd.group(2)} is not here: {str(e)[:120]}")
    head = "| expected MFLOPs | top-1 % | exits taken (%) |\n|---|---|---|\n"
    stated = card[card.index(head) + len(head):].split("\n\n")[0].splitlines()
    assert stated == pareto_rows(report), f"{ref.card.name}: its Pareto rows are not what its command gives: regenerate them"


def test_reference_checkpoint_accuracy(reference_accuracy):
    """The reference's bar on its first and last exit."""
    ref, acc = reference_accuracy
    first, last, _ = BARS[ref.key]
    _bar(ref, acc[0] >= first and acc[-1] >= last, f"top-1 per exit {acc}, bar: exit 1 >= {first}, last >= {last}")


def test_reference_checkpoint_gains_clearly_from_exit_to_exit(reference_accuracy):
    """A clear gain from every exit to the next (the cascade's reason to exist)."""
    ref, acc = reference_accuracy
    gains = [b - a for a, b in zip(acc, acc[1:])]
    assert all(g >= BARS[ref.key][2] for g in gains), f"exit-to-exit gains {gains} (accuracies {acc}), bar >= {BARS[ref.key][2]}"


def test_reference_checkpoint_is_small():
    for ref in REFERENCES.values():
        assert ref.checkpoint.stat().st_size <= 5e6, ref.checkpoint


def test_demo_retrain_refuses_a_checkpoint_it_would_ignore(capsys, monkeypatch, tmp_path):
    import dvt_edge.demo as D

    monkeypatch.setattr(D, "_retrain", lambda *a: pytest.fail("--retrain started despite --checkpoint"))
    with pytest.raises(SystemExit) as e:
        D.main(["--retrain", "--checkpoint", "mine.pt", "--out", str(tmp_path)])
    assert e.value.code == 2 and "excludes --checkpoint" in capsys.readouterr().err


def test_lineage_never_unpickles_the_finetune_source(tmp_path):
    """A run trained with --trust-checkpoint from a file that needs full unpickling: publishing records the
    source by its SHA-256 and never runs its pickled code."""
    from dvt_edge.model_card import lineage
    from dvt_edge.models import create_model

    src = tmp_path / "evil.pt"
    torch.save({"model_state_dict": create_model("dvt_micro_fmnist").state_dict(), "x": _Boom()}, src)
    (entry,) = lineage({"finetune": str(src), "trust_checkpoint": True})
    assert entry["sha256"] and entry["args"] is None


def test_a_publication_stopped_between_its_two_renames_leaves_the_previous_pair(micro_ckpt, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the card was renamed into place and before the checkpoint was left a new card (another file's SHA-256)
    beside the previous checkpoint; a killed publication left a checkpoint-sized hidden file for good."""
    import dvt_edge.model_card as mc

    out = tmp_path / "ref.pt"
    card = tmp_path / "MODEL_CARD_ref.md"
    out.write_bytes(b"the previous file")
    card.write_text("the previous card")
    leftover = tmp_path / ".ref.publishing-999999999.pt"  # a killed publication's (its PID does not run)
    leftover.write_bytes(b"x" * 1000)
    real_replace = mc.os.replace

    def stopped(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(mc.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        mc.publish_run(str(micro_ckpt.parent), str(out), threshold_n=200, progress=False, force=True)
    assert out.read_bytes() == b"the previous file" and card.read_text() == "the previous card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD_ref.md", "ref.pt"]  # staging and leftovers gone
    assert "removed .ref.publishing-999999999.pt, left by an interrupted publication" in capsys.readouterr().err
    card.unlink()  # no previous card: the new one is not left beside the previous file either
    with pytest.raises(KeyboardInterrupt):
        mc.publish_run(str(micro_ckpt.parent), str(out), threshold_n=200, progress=False, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.pt"] and out.read_bytes() == b"the previous file"
    card.write_text("the previous card")

    def renamed_then_stopped(src, dst):  # Ctrl-C raised just after the checkpoint's rename took place: the new pair stays
        real_replace(src, dst)
        if Path(dst) == out:
            raise KeyboardInterrupt

    monkeypatch.setattr(mc.os, "replace", renamed_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        mc.publish_run(str(micro_ckpt.parent), str(out), threshold_n=200, progress=False, force=True)
    monkeypatch.undo()
    assert "the previous" not in card.read_text() and out.read_bytes() != b"the previous file"
    assert sha256_file(out) in card.read_text()  # the card names the file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD_ref.md", "ref.pt"]


class _Boom:
    def __reduce__(self):  # unpickling it would run this
        return (pytest.fail, ("the finetune source was unpickled while publishing",))


def test_failed_publish_leaves_the_previous_file_and_card(micro_ckpt, tmp_path, capsys):
    """The checkpoint moves into place only after its evaluation succeeded: a failed publish changes nothing."""
    from dvt_edge.model_card import main

    run = micro_ckpt.parent
    out = tmp_path / "pub" / "ref.pt"
    out.parent.mkdir()
    out.write_bytes(b"the user's previous file")
    (out.parent / "MODEL_CARD_ref.md").write_text("previous card")
    assert main(["--run", str(run), "--out", str(out)]) == 2  # never replaced unasked
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["--run", str(run), "--out", str(out), "--data", f"imagefolder:{tmp_path / 'nodata'}", "--force"]) == 2
    assert "error:" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's previous file" and (out.parent / "MODEL_CARD_ref.md").read_text() == "previous card"
    assert sorted(p.name for p in out.parent.iterdir()) == ["MODEL_CARD_ref.md", "ref.pt"]  # no temporary left behind
    for bad in (0, -3):
        assert main(["--run", str(run), "--out", str(out), "--threshold-n", str(bad)]) == 2
        assert "threshold_n (--threshold-n) must be a whole number >= 1" in capsys.readouterr().err
    assert main(["--run", str(run), "--out", str(out), "--threads", "-1"]) == 2  # it took every core, with no way to say fewer
    assert "--threads must be >= 1, or 0 for torch's own choice" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")  # a card that cannot be written is found before the evaluation, nothing moved
    assert main(["--run", str(run), "--out", str(tmp_path / "new.pt"), "--card", str(tmp_path / "afile" / "card.md")]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err and not (tmp_path / "new.pt").exists()
    before = sha256_file(run / "last.pt")
    assert main(["--run", str(run), "--out", str(run / "last.pt")]) == 2  # would wipe the run's training state
    assert "one of the run's own checkpoints" in capsys.readouterr().err and sha256_file(run / "last.pt") == before
    assert out.read_bytes() == b"the user's previous file"


def test_an_existing_card_is_replaced_only_with_force(micro_ckpt, tmp_path, capsys):
    """A new --out whose card path holds a file (the user's notes, another checkpoint's card via --card) replaced it
    without a word."""
    from dvt_edge.model_card import main

    run = micro_ckpt.parent
    (tmp_path / "MODEL_CARD_z.md").write_text("my notes")
    (tmp_path / "MODEL_CARD_x.md").write_text("x.pt's card")
    assert main(["--run", str(run), "--out", str(tmp_path / "z.pt")]) == 2
    assert f"the model card {tmp_path / 'MODEL_CARD_z.md'} exists; pass --force" in capsys.readouterr().err
    assert main(["--run", str(run), "--out", str(tmp_path / "y.pt"), "--card", str(tmp_path / "MODEL_CARD_x.md")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD_x.md", "MODEL_CARD_z.md"]  # nothing written
    assert (tmp_path / "MODEL_CARD_z.md").read_text() == "my notes" and (tmp_path / "MODEL_CARD_x.md").read_text() == "x.pt's card"
    assert main(["--run", str(run), "--out", str(tmp_path / "z.pt"), "--force", "--threshold-n", "100"]) == 0
    out = capsys.readouterr().out
    assert "# Model card: `z.pt`" in (tmp_path / "MODEL_CARD_z.md").read_text()
    top1 = re.search(r"per-exit top-1 \[([^\]]*)\]", out).group(1).split(", ")
    assert all(len(v.split(".")[-1]) <= 2 for v in top1), out  # rounded, no float noise


def test_card_states_the_command_that_writes_it(micro_ckpt, tmp_path):
    """Every publishing argument is in the card's command, quoted; the evaluate command names --threshold-n."""
    import shlex

    run = micro_ckpt.parent
    out = tmp_path / "my assets" / "ref.pt"
    out.parent.mkdir()
    publish_run(str(run), str(out), threshold_n=300, progress=False, eval_data="fashion-mnist", notes=["shared machine"])
    card = (out.parent / "MODEL_CARD_ref.md").read_text()
    cmd = re.search(r"Written by `([^`]*)`", card).group(1)
    argv = shlex.split(cmd.split(" (and the")[0])
    assert argv[argv.index("--out") + 1] == str(out) and argv[argv.index("--threshold-n") + 1] == "300"
    assert argv[argv.index("--eval-data") + 1] == "fashion-mnist" and "1 --note line(s) under Notes" in cmd
    assert "## Notes\n\n- shared machine" in card
    ev = shlex.split(re.search(r"## Results \(`([^`]*)`\)", card).group(1))
    assert ev[ev.index("--checkpoint") + 1] == str(out) and ev[ev.index("--threshold-n") + 1] == "300"


def test_outside_sources_figures_are_not_called_our_runs():
    from dvt_edge.model_card import _command_lines

    step = {"checkpoint": "authors.pth.tar", "sha256": "abc", "args": None, "accuracies": [69.0, 75.6, 80.0]}
    text = "\n".join(_command_lines({"model": "m", "data": "d", "epochs": 1, "seed": 0, "finetune": "authors.pth.tar"},
                                    Path("runs/x"), [step]))
    assert "on the training run's validation split" not in text and "measured by whoever trained it" in text


def test_demo_checks_arguments_first_and_errors_are_not_tracebacks(capsys, monkeypatch, tmp_path):
    """Bad --targets/--precisions/--n fail before the zoo, the evaluation or any training; a missing or
    unreadable --checkpoint is an error line with status 2."""
    import dvt_edge.demo as D

    monkeypatch.setattr(D, "_show_zoo", lambda: pytest.fail("work started before the arguments were checked"))
    for argv, match in ((["--targets", "bogus"], "unknown target 'bogus'"), (["--precisions", "fp23"], "--precisions ['fp23'] not supported"),
                        (["--n", "1"], "--n must be at least 4"), (["--checkpoint", str(tmp_path / "nope.pt")], "no checkpoint at")):
        assert D.main([*argv, "--out", str(tmp_path / "o")]) == 2
        assert match in capsys.readouterr().err, argv
    monkeypatch.setattr(D, "_show_zoo", lambda: None)
    (tmp_path / "junk.pt").write_text("junk")
    assert D.main(["--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_demo_takes_threads_and_no_progress_as_every_other_command(monkeypatch, tmp_path, capsys):
    """The demo's evaluation and exports took every core beside a training, and its bars filled a CI log (TQDM_DISABLE
    was the only way out)."""
    import dvt_edge.demo as D
    from dvt_runtime.console import progress_silenced

    seen = []
    monkeypatch.setattr(D, "_tour", lambda args: seen.append((torch.get_num_threads(), progress_silenced())) or 0)
    before = torch.get_num_threads()
    try:
        assert D.main(["--threads", "1", "--no-progress", "--out", str(tmp_path)]) == 0 and seen == [(1, True)]
        assert D.main(["--out", str(tmp_path)]) == 0 and seen[-1] == (1, False)
        assert D.main(["--threads", "0", "--out", str(tmp_path)]) == 0 and seen[-1] == (1, False)  # torch's own choice, as left
        assert D.main(["--threads", "-1", "--out", str(tmp_path)]) == 2 and len(seen) == 3
        assert "--threads must be >= 1, or 0 for torch's own choice" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_demo_retrain_resumes_an_interrupted_run_and_skips_a_finished_one(micro_ckpt, monkeypatch, tmp_path):
    import shutil

    import dvt_edge.demo as D
    import dvt_edge.train as T

    ref = Reference("x", "dvt_micro_fmnist", Path("x.pt"), (("--model", "dvt_micro_fmnist", "--epochs", "1"),), "test")
    calls = []
    monkeypatch.setattr(T, "main", lambda argv: calls.append(list(argv)) or 0)
    monkeypatch.setattr("dvt_edge.model_card.publish_run", lambda *a, **k: {"card": "c"})
    run = tmp_path / "retrain"
    D._retrain(ref, run, run / "x.pt")  # nothing there yet: a fresh run, never --force
    assert "--force" not in calls[-1] and "--resume" not in calls[-1]
    run.mkdir()
    shutil.copy(micro_ckpt.parent / "last.pt", run / "last.pt")  # finished (1 of 1 epochs)
    D._retrain(ref, run, run / "x.pt")
    assert len(calls) == 1  # skipped
    raw = torch.load(run / "last.pt", weights_only=True)
    raw["train"]["epochs"] = raw["train"]["epoch"] + 3  # interrupted
    torch.save(raw, run / "last.pt")
    D._retrain(ref, run, run / "x.pt")
    assert calls[-1][-1] == "--resume" and "--force" not in calls[-1]
    # another reference's run in that folder is never published under this one's name
    other = Reference("y", "dvt_tiny_fmnist", Path("y.pt"), (("--model", "dvt_tiny_fmnist", "--epochs", "1"),), "test")
    with pytest.raises(ValueError, match="holds a training run of 'dvt_micro_fmnist', not 'dvt_tiny_fmnist'"):
        D._retrain(other, run, run / "y.pt")


def test_demo_calibrates_the_closest_row_when_none_matched_and_says_so(monkeypatch, tmp_path, capsys):
    """On the default 1,000 measured images no row matched within 0.2 points (2 images) in a new user's two tours, so the
    tour never reached its calibration step nor its headline; it now calibrates the closest row and says it is not matched."""
    import dvt_edge.demo as D

    rows = [{"status": "ok", "target": "onnx", "precision": "fp32", "matched": {"within_match": False, "accuracy_delta": -0.6,
                                                                                  "measured_mean_ms": 1.0}},
            {"status": "ok", "target": "ort", "precision": "int8", "matched": {"within_match": False, "accuracy_delta": -1.3,
                                                                                 "measured_mean_ms": 0.5}},
            {"status": "error", "target": "coreml", "precision": "fp32", "error": "TargetUnavailable: Core ML runs on macOS"}]
    calibrated = []
    monkeypatch.setattr(D, "_show_zoo", lambda: None)
    monkeypatch.setattr(D, "_evaluate", lambda *a: ("cifar10-ref", None))
    monkeypatch.setattr(D, "_benchmark", lambda *a: ({"rows": rows}, "host"))
    monkeypatch.setattr(D, "_calibrate_best", lambda result, best, *a: calibrated.append(best["target"]))
    monkeypatch.setattr(D, "_print_summary", lambda *a: None)
    assert D.main(["--n", "200", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert calibrated == ["onnx"] and "on the 100 measured images" in out and "calibrating the closest, onnx fp32 (-0.60 points)" in out
    monkeypatch.setattr(D, "_benchmark", lambda *a: ({"rows": rows[2:]}, "host"))
    assert D.main(["--n", "200", "--out", str(tmp_path)]) == 1  # nothing measured: a failed tour, as bench says it (it exited 0)
    assert "calibration for this device: skipped" in capsys.readouterr().out and calibrated == ["onnx"]
    monkeypatch.setattr(D, "_benchmark", lambda *a: ({"rows": rows[:1] + [dict(rows[2], error="RuntimeError: export failed")]}, "host"))
    assert D.main(["--n", "200", "--out", str(tmp_path)]) == 1  # a row asked for failed
    assert "error: 1 of 2 rows failed (coreml fp32)" in capsys.readouterr().err


def test_lineage_of_a_run_fine_tuned_from_its_own_file_ends(micro_ckpt, tmp_path):
    """A last.pt whose recorded --finetune is itself (written before train refused it) gives a finite
    lineage that says so, never endless recursion."""
    from dvt_edge.model_card import lineage

    run = tmp_path / "run"
    shutil.copytree(micro_ckpt.parent, run)
    raw = read_checkpoint(run / "last.pt")
    args = json.loads(raw["train"]["args"])
    raw["train"]["args"] = json.dumps({**args, "finetune": str(run / "last.pt")})
    torch.save(raw, run / "last.pt")
    steps = lineage({"finetune": str(run / "last.pt")})
    assert [s["checkpoint"] for s in steps] == [str(run / "last.pt")] * 2
    assert "already in this lineage" in steps[0]["note"] and steps[1]["sha256"] == sha256_file(run / "last.pt")


def test_the_demos_not_matched_note_counts_the_images_measured(monkeypatch, tmp_path, capsys):
    """--n 10000 on a set of 5,000 said '5000 measured images (... --n 5000 measures 2,500)': 2,500 were measured."""
    from dvt_edge import demo

    row = {"target": "onnx", "precision": "fp32", "status": "ok", "n_holdout": 2500, "static": [{"accuracy": 80, "measured_mean_ms": 1.0}],
           "matched": {"within_match": False, "accuracy_delta": -0.4, "measured_mean_ms": 0.5, "accuracy": 79.6, "speedup_vs_last_exit": 2.0}}
    monkeypatch.setattr(demo, "_show_zoo", lambda: None)
    monkeypatch.setattr(demo, "_evaluate", lambda ckpt, data, out: ("cifar10-ref", None))
    monkeypatch.setattr(demo, "_benchmark", lambda ckpt, data, args, out: ({"rows": [row], "n_images": 5000, "model": "m"}, "vm"))
    monkeypatch.setattr(demo, "_calibrate_best", lambda *a: None)
    monkeypatch.setattr(demo, "_print_summary", lambda *a: None)
    demo.main(["--targets", "onnx", "--precisions", "fp32", "--n", "10000", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "on the 2500 measured images (0.2 points is 5 image(s) there); calibrating the closest" in out, out


def test_the_card_says_when_a_resume_changed_the_compute_precision_threads_or_environment(micro_ckpt):
    """--amp and --threads may change on --resume, and so may the machine or the code: the card gave the last precision
    for every epoch and no threads or environment, so its command did not reproduce the weights and nothing said so."""
    from dvt_edge.model_card import _compute, _environment_lines

    history = json.loads(read_checkpoint(micro_ckpt.parent / "last.pt")["train"]["history"])
    assert [(h["amp"], h["threads"]) for h in history] == [("fp32", 1)]  # each epoch records its own
    assert _compute({"amp": "fp32"}, history) == "fp32 on 1 thread"
    mixed = [{"epoch": 1, "amp": "bf16", "threads": 2}, {"epoch": 2, "amp": "bf16", "threads": 2}, {"epoch": 3, "amp": "fp32", "threads": 2},
             {"epoch": 4, "amp": "fp32", "threads": 1}]
    assert _compute({"amp": "fp32"}, mixed) == (
        "bf16 autocast (weights and optimizer fp32) on 2 threads in epochs 1-2, fp32 on 2 threads in epoch 3, fp32 on 1 thread in "
        "epoch 4 (changed on resume: a rerun with one setting throughout will not give bit-identical weights)")
    assert _compute({"amp": "bf16"}, [{"epoch": 1}, {"epoch": 2}]) == "bf16 autocast (weights and optimizer fp32)"  # older runs
    assert _compute({"amp": "fp32"}, [{"epoch": 1}, {"epoch": 2, "amp": "fp32", "threads": 2}]) == "fp32"  # an old run resumed: no change said
    env = history[0]["environment"]
    other = {**env, "cpu": "Another CPU"}
    lines = _environment_lines([{"epoch": 1, "environment": env}, {"epoch": 2, "environment": env}, {"epoch": 3, "environment": other}])
    assert lines[0].startswith("- Environment (changed on resume") and lines[1].startswith("  - epochs 1-2: dvt-edge ")
    assert lines[2].startswith("  - epoch 3: ") and "Another CPU" in lines[2] and "Another CPU" not in lines[1]
    assert _environment_lines([{"epoch": 1}])[0].startswith("- Environment: not recorded")
    old_run = _environment_lines([{"epoch": 1}, {"epoch": 2, "environment": env}])
    assert old_run[0].startswith("- Environment (recorded from a resume on;") and old_run[1] == "  - epoch 1: not recorded"


def test_a_card_of_a_variant_a_script_registered_says_how_to_register_it(monkeypatch):
    """The card's training command named a variant registered by a launcher script: run as printed, in a fresh process,
    it stopped at an unknown model. The card now gives the register_model call, which rebuilds the same config."""
    from types import SimpleNamespace

    import dvt_edge.models as M
    from dvt_edge.model_card import _unregistered_line

    assert _unregistered_line(M.create_model("dvt_micro_fmnist")) == []
    for name in ("_REGISTRY", "_DESCRIPTIONS", "_DEFAULTS"):  # copies, undone after the test
        monkeypatch.setattr(M, name, dict(getattr(M, name)))
    for i, base in enumerate(sorted(M.BUILTIN_MODELS)):  # every field kind: dvt_deit_small's qkv_bias=True had read `true`
        cfg = M.get_config(base, num_classes=7)
        (line,) = _unregistered_line(SimpleNamespace(cfg=cfg, name=f"dvt_mine{i}"))  # what it reads of the model
        snippet = line.split("`")[3]
        assert snippet.startswith(f"from dvt_edge.models import DVTConfig, register_model; register_model('dvt_mine{i}', "), line
        exec(snippet, {})
        assert M.get_config(f"dvt_mine{i}") == cfg, base


def test_a_legal_255_byte_checkpoint_name_publishes(micro_ckpt, tmp_path):
    """The checkpoint's temporary name keeps its suffix and stays a legal name (a long legal --out failed at it, after the
    evaluation); the default card name beside it would be too long, and the error says --card."""
    out = tmp_path / ("r" * 252 + ".pt")  # 255 bytes: the most a Linux file name takes
    with pytest.raises(ValueError, match=r"the model card .*MODEL_CARD_r+\.md: its file name is 266 bytes.*pass --card PATH"):
        publish_run(str(micro_ckpt.parent), str(out), threshold_n=500, progress=False)
    assert not out.exists()
    publish_run(str(micro_ckpt.parent), str(out), card=str(tmp_path / "card.md"), threshold_n=500, progress=False)
    assert read_checkpoint(out)["format"] == "dvt-edge-checkpoint" and (tmp_path / "card.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "card.md"])  # no temporary file left behind


def test_exit_gains_are_between_the_figures_shown():
    """The card took gains from unrounded accuracies (33.333 -> 66.667: +33.33), the terminal from the rounded ones (+33.34)."""
    from dvt_edge.model_card import exit_gains

    assert exit_gains([100 / 3, 200 / 3, 75.0]) == exit_gains([33.33, 66.67, 75.0]) == [33.34, 8.33]
