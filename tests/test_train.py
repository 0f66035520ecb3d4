"""Training: learns on real Fashion-MNIST, resumes exactly, survives kill -9, runs under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dvt_edge import load_checkpoint
from dvt_edge.checkpoint import CheckpointError
from dvt_edge.train import build_parser, train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--model", "dvt_micro_fmnist", "--data", "fashion-mnist", "--train-limit", "1500", "--val-limit", "500",
         "--batch-size", "64", "--threads", "1", "--quiet", "--lr", "1e-2", "--warmup-epochs", "0.1", "--no-augment"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_cli(*args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dvt_edge.train", *QUICK, *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def test_short_run_beats_chance(tmp_path):
    args = build_parser().parse_args([*QUICK, "--train-limit", "3000", "--epochs", "2", "--out", str(tmp_path)])
    summary = train(args)
    acc = summary["history"][-1]["val_acc"]
    assert len(acc) == 3 and min(acc) > 30.0 and max(acc) > 45.0, acc  # chance is 10%; measured 55-64 over seeds and CPUs
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["schema"], metrics["schema_version"]) == ("dvt-edge/train-metrics/1", 1)
    assert len(metrics["history"]) == 2 and (tmp_path / "metrics.png").stat().st_size > 1000
    model, info = load_checkpoint(tmp_path / "best.pt")
    assert info.classes[0] == "T-shirt/top" and info.preprocess is not None
    assert info.accuracies == pytest.approx(max(metrics["history"], key=lambda h: h["val_acc"][-1])["val_acc"])


@pytest.mark.xdist_group("subprocess-train")
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    r = _train_cli("--epochs", "3", "--out", str(straight))
    assert r.returncode == 0, r.stdout + r.stderr
    # same run, killed with SIGKILL as soon as the first checkpoint exists (mid-epoch 2)
    p = _train_cli("--epochs", "3", "--out", str(broken), wait=False)
    deadline = time.time() + 240
    while not (broken / "last.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run should have been killed mid-training"
    _, info = load_checkpoint(broken / "last.pt")  # previous checkpoint still readable
    done = info.extras["train"]["epoch"]
    assert 1 <= done < 3
    # overwriting without --resume is refused, and nothing is touched
    before = (broken / "last.pt").read_bytes()
    r = _train_cli("--epochs", "3", "--out", str(broken))
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (broken / "last.pt").read_bytes() == before
    # resume finishes with exactly the uninterrupted weights
    r = _train_cli("--epochs", "3", "--out", str(broken), "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = _weights(straight / "last.pt"), _weights(broken / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((straight / "metrics.json").read_text())["history"]
    hb = json.loads((broken / "metrics.json").read_text())["history"]
    assert [h["val_acc"] for h in ha] == [h["val_acc"] for h in hb]


def test_a_limit_below_the_class_count_is_warned(tmp_path):
    """--train-limit 2 on 3 classes trained on 2 of them without a word."""
    from dvt_edge.train import _load_splits

    with pytest.warns(UserWarning, match=r"--train-limit 4 is fewer than the 10 classes: 6 class\(es\) have no image in that split"):
        tr, _ = _load_splits("fashion-mnist", train_limit=4, val_limit=50)
    assert len(set(tr.labels.tolist())) == 4


def test_resume_with_another_model_is_refused(tmp_path):
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "200", "--out", str(tmp_path)])
    train(args)
    before = (tmp_path / "last.pt").read_bytes()
    bad = build_parser().parse_args([*QUICK, "--model", "dvt_tiny_fmnist", "--epochs", "2", "--out", str(tmp_path), "--resume"])
    with pytest.raises(CheckpointError, match="dvt_micro_fmnist"):
        train(bad)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_a_force_run_stopped_before_its_first_epoch_is_not_resumed_as_the_earlier_run(tmp_path, monkeypatch):
    """--force left the earlier run's checkpoints until its first epoch was saved: a --resume in between went on with the
    earlier run as if it were the new one."""
    import dvt_edge.train as train_mod

    def run(*extra: str):
        return train(build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "200", "--out", str(tmp_path), *extra]))

    run()
    before = (tmp_path / "last.pt").read_bytes()
    real_epoch = train_mod._train_epoch
    monkeypatch.setattr(train_mod, "_train_epoch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run("--force", "--lr", "0.02")
    assert (tmp_path / "last.pt").read_bytes() == before  # the earlier run's, kept until the new one saves its own
    with pytest.raises(CheckpointError, match="stopped before its first epoch ended, so .* is still the earlier run's"):
        run("--resume")
    monkeypatch.setattr(train_mod, "_train_epoch", real_epoch)
    run("--force", "--lr", "0.02")
    assert not (tmp_path / "started-over.json").exists()
    run("--resume", "--lr", "0.02")  # the new run, finished: nothing left to train, no refusal


def test_resume_with_other_run_settings_is_refused(tmp_path, capsys):
    """--resume continues the run as started: a new --epochs would re-plan the LR curve, a new --lr be overridden
    by the saved optimizer, a new --train-limit change the images mid-run. Refused, naming each flag; threads may change."""
    def run(*extra: str):
        return train(build_parser().parse_args([*QUICK, "--train-limit", "200", "--out", str(tmp_path), *extra]))

    run("--epochs", "1")
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"--epochs 1 \(now 2\), --lr 0.01 \(now 0.5\)"):
        run("--epochs", "2", "--lr", "0.5", "--resume")
    assert (tmp_path / "last.pt").read_bytes() == before
    run("--epochs", "1", "--threads", "2", "--resume")  # the thread count may differ (nothing left to train)
    # `--out RUN --resume` alone goes on with the run's own flags (it was refused as other settings: every flag retyped)
    capsys.readouterr()
    train(build_parser().parse_args(["--out", str(tmp_path), "--resume", "--quiet"]))
    err = capsys.readouterr()
    assert "note: --resume goes on with the run's own --batch-size 64, --epochs 1" in err.err and "--no-augment True" not in err.err
    assert f"note: {tmp_path} finished its 1 epoch(s): nothing left to train" in err.err  # it printed "training ..." and stopped
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["train"]["rng"] = ckpt["train"]["rng"] * 2  # as if run by two processes: steps per epoch would differ
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"run with 2 process\(es\), this run has 1"):
        run("--epochs", "1", "--resume")


def test_a_resume_on_other_threads_or_code_is_warned_and_recorded_per_epoch(tmp_path, monkeypatch):
    """--threads may change on --resume (a run moves to another machine), but float sums then round otherwise: the resumed
    run's weights differ from an uninterrupted run's, and the card's command gave the last thread count as the run's."""
    import dvt_edge.train as train_mod
    from dvt_edge.resume import resumed_differently

    real_epoch, calls = train_mod._train_epoch, []

    def stop_second(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a)

    before = torch.get_num_threads()
    try:
        args = [*QUICK, "--epochs", "2", "--train-limit", "200", "--out", str(tmp_path)]
        monkeypatch.setattr(train_mod, "_train_epoch", stop_second)
        with pytest.raises(KeyboardInterrupt):
            train(build_parser().parse_args([*args, "--threads", "1"]))
        monkeypatch.setattr(train_mod, "_train_epoch", real_epoch)
        with pytest.warns(UserWarning, match=r"epoch 1 ran otherwise \(--threads 1 -> 2\): .* may not be bit-identical"):
            train(build_parser().parse_args([*args, "--threads", "2", "--resume"]))
    finally:
        torch.set_num_threads(before)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["threads"] for h in history] == [1, 2]
    env = history[0]["environment"]
    assert env == history[1]["environment"] and env["torch"] == torch.__version__ and "threads" not in env
    assert resumed_differently(history, "fp32", 2, env) is None  # nothing differs from the last epoch
    said = resumed_differently(history, "bf16", 2, {**env, "revision": "b" * 40})
    assert "--amp fp32 -> bf16" in said and f"code revision {env['revision']} -> {'b' * 40}" in said
    assert resumed_differently([{"epoch": 1}], "fp32", 3, env) is None  # an epoch recorded before threads were: nothing to compare


def test_resume_keeps_the_source_the_run_started_from(tmp_path, monkeypatch):
    """A run from scratch resumed with --finetune X was recorded (and published) as fine-tuned from X, an initialisation
    that never ran; another --finetune than the run's own is refused too."""
    def run(out, *extra: str):
        return train(build_parser().parse_args([*QUICK, "--train-limit", "200", "--epochs", "1", "--out", str(out), *extra]))

    run(tmp_path / "a")
    with pytest.raises(CheckpointError, match="was trained from scratch, not from --finetune"):
        run(tmp_path / "a", "--epochs", "2", "--resume", "--finetune", str(tmp_path / "a" / "last.pt"))
    run(tmp_path / "b", "--finetune", str(tmp_path / "a" / "last.pt"))
    with pytest.raises(CheckpointError, match="was fine-tuned from .*a/last.pt, not"):
        run(tmp_path / "b", "--resume", "--finetune", str(tmp_path / "b" / "last.pt"))
    run(tmp_path / "b", "--resume", "--finetune", str(tmp_path / "a" / "last.pt"))  # its own source, given again: fine
    import dvt_edge.train as T

    one = T._train_epoch
    monkeypatch.setattr(T, "_train_epoch", lambda r, epoch: (_ for _ in ()).throw(KeyboardInterrupt) if epoch == 1 else one(r, epoch))
    with pytest.raises(KeyboardInterrupt):  # stopped after its first of two epochs
        run(tmp_path / "c", "--finetune", str(tmp_path / "a" / "last.pt"), "--epochs", "2")
    monkeypatch.setattr(T, "_train_epoch", one)
    monkeypatch.chdir(tmp_path)  # given again relative: recorded as the run recorded it (absolute), not as typed
    run(tmp_path / "c", "--epochs", "2", "--resume", "--finetune", "a/last.pt")
    args = json.loads(torch.load(tmp_path / "c" / "last.pt", weights_only=True)["train"]["args"])
    assert args["epochs"] == 2 and args["finetune"] == str(tmp_path / "a" / "last.pt"), args


def test_a_resumed_run_keeps_its_preprocessing_though_its_variant_is_not_registered_there(tmp_path, monkeypatch):
    """A variant registered by a launcher script with its own preprocessing was resumed by the printed command, in a process that
    does not register it: epochs 2 on trained with the data's own preprocessing, unsaid, and the checkpoint recorded it."""
    import dvt_edge.models as M
    import dvt_edge.train as T

    # as register_model("dvt_micro_script", ...) in a launcher script, with its own preprocessing (undone after the test)
    monkeypatch.setitem(M._REGISTRY, "dvt_micro_script", M.get_config("dvt_micro_fmnist"))
    monkeypatch.setitem(M._DESCRIPTIONS, "dvt_micro_script", "")
    from dvt_runtime.preprocess import Preprocess

    own = Preprocess(size=28, resize=32, channels="gray", mean=(0.5,), std=(0.25,), interpolation="area")  # fits, not the data's
    monkeypatch.setitem(M._DEFAULTS, "dvt_micro_script", {"preprocess": own.to_dict(), "dataset": ""})
    run = [*QUICK, "--model", "dvt_micro_script", "--train-limit", "100", "--val-limit", "50", "--epochs", "2", "--out", str(tmp_path)]
    one = T._train_epoch
    monkeypatch.setattr(T, "_train_epoch", lambda r, epoch: (_ for _ in ()).throw(KeyboardInterrupt) if epoch == 1 else one(r, epoch))
    with pytest.raises(KeyboardInterrupt):  # stopped after its first of two epochs
        train(build_parser().parse_args(run))
    monkeypatch.setattr(T, "_train_epoch", one)
    first = torch.load(tmp_path / "last.pt", weights_only=True)["preprocess"]
    assert first == own.to_dict(), first
    for reg in (M._REGISTRY, M._DESCRIPTIONS, M._DEFAULTS):
        monkeypatch.delitem(reg, "dvt_micro_script")  # the resuming process: the script's registration is gone
    train(build_parser().parse_args(["--out", str(tmp_path), "--resume", "--quiet", "--threads", "1"]))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert json.loads(ck["train"]["args"])["epochs"] == 2 and ck["preprocess"] == first, (ck["preprocess"], first)
    # fine-tuned from in that process, without --model: rebuilt from the checkpoint (it had been refused as an unknown
    # model, which evaluate and export rebuild), trained with the preprocessing its weights learned, not the data's
    train(build_parser().parse_args(["--finetune", str(tmp_path / "last.pt"), "--data", "fashion-mnist", "--train-limit", "100",
                                     "--val-limit", "50", "--epochs", "1", "--quiet", "--threads", "1", "--out", str(tmp_path / "ft")]))
    ft = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert ft["model"]["name"] == "dvt_micro_script" and ft["preprocess"] == first, (ft["model"]["name"], ft["preprocess"])
    # a mistyped --model beside it is not taken for the checkpoint's variant (it had trained dvt_micro_script, named as the typo)
    monkeypatch.setattr(T, "_load_splits", lambda *a: pytest.fail("the data was read before the typo was said"))
    with pytest.raises(ValueError, match=r"--model 'dvt_micro_scrpt' is not registered here and is not --finetune's variant 'dvt_micro_script'"):
        train(build_parser().parse_args(["--finetune", str(tmp_path / "last.pt"), "--model", "dvt_micro_scrpt", "--data", "fashion-mnist",
                                         "--train-limit", "100", "--val-limit", "50", "--quiet", "--out", str(tmp_path / "typo")]))


def test_a_model_whose_outputs_are_not_finite_fails_and_saves_nothing(tmp_path):
    """An epoch whose last step broke the weights: every output NaN, argmax 0, so 'val top-1' was class 0's share (10%) and
    last.pt and best.pt were saved; a resume then went on from NaN weights."""
    args = build_parser().parse_args([*QUICK, "--train-limit", "64", "--val-limit", "50", "--epochs", "1", "--lr", "1e30",
                                      "--out", str(tmp_path)])
    with pytest.raises(FloatingPointError, match=r"outputs are not finite \(exit 1 on 50 of 50"):
        train(args)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_images_stored_preprocessed_otherwise_than_the_model_expects_are_refused(tmp_path):
    """A float npz normalised with mean/std 0.5 was trained on as it was, while the checkpoint recorded the model's own
    0.286/0.353: evaluate then refused the same file, and a bundle would feed camera frames the model never saw."""
    import json

    import numpy as np

    from dvt_edge.data import DataError, load_dataset
    from dvt_runtime.preprocess import Preprocess

    ds = load_dataset("fashion-mnist", "train", limit=200, seed=0)
    for mean, ok in (((0.5,), False), (tuple(ds.preprocess.mean), True)):
        ds.preprocess = Preprocess(**{**ds.preprocess.to_dict(), "mean": mean})
        x, y = ds.arrays()
        np.savez(tmp_path / "pre.npz", images=x, labels=y, classes=np.array(ds.classes), preprocess=np.array(json.dumps(ds.preprocess.to_dict())))
        args = build_parser().parse_args([*QUICK, "--data", f"npz:{tmp_path / 'pre.npz'}", "--epochs", "1", "--out", str(tmp_path / str(ok))])
        if ok:  # preprocessed as the model expects: trained on
            train(args)
            continue
        with pytest.raises(DataError, match=r"already preprocessed as .*'mean': \[0.5\].*write the set as uint8 pixels"):
            train(args)


def test_a_224px_run_without_batch_size_takes_a_batch_that_fits_and_a_warmup_covering_the_run_warns(tmp_path, capsys, monkeypatch):
    """The README's fine-tune of a published 224 px checkpoint ran at the default batch 128: about 19 GB of memory (batch 32
    peaked at 5.7 GB); a one-epoch run with the default 1-epoch warm-up ended at the peak learning rate, unsaid."""
    import cv2
    import numpy as np

    import dvt_edge.train as T

    seen = {}

    def stop(args, *a, **k):  # everything before the first batch, then stop
        seen["batch"] = args.batch_size
        raise SystemExit(0)

    monkeypatch.setattr(T, "_setup_run", stop)
    for c in ("a", "b"):
        (tmp_path / "f" / "train" / c).mkdir(parents=True)
        for i in range(12):
            cv2.imwrite(str(tmp_path / "f" / "train" / c / f"{i}.png"), np.full((40, 40, 3), 10 * i + (100 if c == "a" else 0), np.uint8))
    base = ["--model", "dvt_deit_small", "--data", f"imagefolder:{tmp_path / 'f'}", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]
    with pytest.warns(UserWarning, match=r"--warmup-epochs 1 covers all 1 epoch\(s\): the learning rate only rises"), pytest.raises(SystemExit):
        train(build_parser().parse_args(base))
    assert seen["batch"] == 32 and "note: --batch-size 32 for a 224 px model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train(build_parser().parse_args([*base, "--batch-size", "128", "--warmup-epochs", "0.5"]))
    assert seen["batch"] == 128  # given: kept
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.models import create_model

    ck = save_checkpoint(tmp_path / "t2t.pt", create_model("dvt_t2t_micro"), classes=["a", "b"])
    with pytest.raises(CheckpointError, match=r"only \d+ of \d+ tensors fit model 'dvt_deit_small'; the checkpoint is 'dvt_t2t_micro': drop --model"):
        train(build_parser().parse_args([*base, "--finetune", str(ck), "--force"]))  # it asked "is it the same architecture?"


def test_finetune_onto_new_classes_reinitialises_heads(tmp_path):
    from dvt_edge import save_checkpoint
    from dvt_edge.models import create_model

    src = create_model("dvt_micro_fmnist", num_classes=7)
    save_checkpoint(tmp_path / "src.pt", src)
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                      "--finetune", str(tmp_path / "src.pt"), "--lr", "0", "--out", str(tmp_path / "ft")])
    train(args)
    m, _ = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert m.cfg.num_classes == 10
    s = src.state_dict()
    for k, v in m.state_dict().items():
        if ".head." not in k and v.dtype.is_floating_point:
            assert torch.equal(v, s[k]), k  # lr 0: copied weights unchanged


@pytest.mark.xdist_group("subprocess-train")
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dvt_edge.train", *QUICK, "--epochs", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["history"]) == 1
    load_checkpoint(out / "last.pt")
    rng = torch.load(out / "last.pt", weights_only=False)["train"]["rng"]  # each rank's own stream: its own drop-path masks
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    if os.name == "nt":
        return
    from dvt_edge.resume import LOCK_NAME  # a run holding the folder: every rank says so (the others had waited in DDP's setup)

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)", str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode != 0 and (r.stdout + r.stderr).count(f"error: another training run is writing to {out}") == 2, r.stderr[-3000:]


def test_self_distillation_loss():
    """--distill adds each earlier exit's KL from the last exit's detached answer (x temp^2); off, the sum of cross-entropies."""
    import torch.nn.functional as F

    from dvt_edge.train import exit_loss

    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(8, 10, generator=g, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 10, (8,), generator=g)
    ce = sum(F.cross_entropy(o, y) for o in outs)
    assert torch.allclose(exit_loss(outs, y), ce)
    kd = exit_loss(outs, y, distill=0.5, temp=2.0) - ce
    t = F.softmax(outs[-1] / 2, -1)
    want = 0.5 * 4 * sum((t * (t.log() - F.log_softmax(o / 2, -1))).sum(-1).mean() for o in outs[:2])
    assert torch.isfinite(kd) and kd > 0 and torch.allclose(kd, want, atol=1e-5), (kd, want)
    # the teacher is detached: the distillation term moves only the earlier exits
    kd.backward()
    assert outs[-1].grad is None or float(outs[-1].grad.abs().max()) == 0.0
    assert float(outs[0].grad.abs().max()) > 0
    same = [outs[-1].detach().clone() for _ in range(3)]
    assert float(exit_loss(same, y, distill=1.0) - exit_loss(same, y)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("flag,value", [("--distill", "-1"), ("--distill", "nan"), ("--distill-temp", "0"), ("--distill-temp", "inf"),
                                        ("--distill-temp", "1e-300"), ("--warmup-epochs", "1e308"), ("--seed", "-1"), ("--seed", "4294967296")])
def test_bad_distill_arguments_are_refused(tmp_path, flag, value):
    """--distill-temp 1e-300 was blamed on --lr ("loss became nan"), --warmup-epochs 1e308 overflowed into a traceback."""
    from dvt_edge.train import build_parser, check_args

    with pytest.raises(ValueError, match=flag):
        check_args(build_parser().parse_args([flag, value, "--out", str(tmp_path)]))


@pytest.mark.parametrize("lr", ["0", "1e-320"])
def test_a_learning_rate_that_changes_nothing_is_warned(tmp_path, lr):
    """--lr 1e-320 trained a run that learned nothing (val top-1 at chance), without a word; --lr 0 was warned."""
    from dvt_edge.train import build_parser, check_args

    with pytest.warns(UserWarning, match=rf"--lr {lr}: no weight will change"):
        check_args(build_parser().parse_args(["--lr", lr, "--out", str(tmp_path)]))


def test_finetune_with_the_same_classes_keeps_every_tensor(tmp_path):
    """Fine-tuning one of our checkpoints (e.g. to self-distil it) starts from all of its weights, heads included."""
    from dvt_edge import save_checkpoint
    from dvt_edge.models import create_model

    src = create_model("dvt_micro_fmnist")
    save_checkpoint(tmp_path / "src.pt", src)
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                      "--finetune", str(tmp_path / "src.pt"), "--lr", "0", "--out", str(tmp_path / "ft")])
    train(args)
    m, _ = load_checkpoint(tmp_path / "ft" / "last.pt")
    s = src.state_dict()
    heads = [k for k in s if ".head." in k]
    assert heads
    for k, v in m.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.equal(v, s[k]), k


def test_finetune_without_model_takes_the_checkpoints_architecture(tmp_path, capsys):
    """`train --finetune model_best.pth.tar` without --model built the default Fashion-MNIST model and failed with
    "only 0 of 224 tensors fit": the architecture comes from the checkpoint (a published one's inferred from its keys)."""
    from dvt_edge import save_checkpoint
    from dvt_edge.checkpoint import checkpoint_model_name
    from dvt_edge.models import create_model
    from tests.test_checkpoint import PUBLISHED, published_state_dict, save_published

    save_checkpoint(tmp_path / "src.pt", create_model("dvt_micro_fmnist"))
    args = build_parser().parse_args([*QUICK[2:], "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                      "--finetune", str(tmp_path / "src.pt"), "--lr", "0", "--out", str(tmp_path / "ft")])
    assert args.model is None
    train(args)
    assert args.model == "dvt_micro_fmnist" and load_checkpoint(tmp_path / "ft" / "last.pt")[0].name == "dvt_micro_fmnist"
    assert "note: --model dvt_micro_fmnist, the architecture of --finetune" in capsys.readouterr().out
    pub = save_published(tmp_path / "model_best.pth.tar", published_state_dict(PUBLISHED["dvt_t2t_vit_12"]))
    assert checkpoint_model_name(pub) == "dvt_t2t_vit_12"
    resumed = build_parser().parse_args([*QUICK[2:], "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                         "--lr", "0", "--resume", "--out", str(tmp_path / "ft")])
    train(resumed)  # a resume without --model: the run's own
    assert resumed.model == "dvt_micro_fmnist"
    assert build_parser().parse_args(["--out", "x"]).model is None


def test_a_finetune_without_lr_peaks_at_the_finetune_rate(tmp_path, capsys):
    """A fine-tune took the from-scratch peak rate 1e-3 unless --lr was given (the README's command passed 5e-4)."""
    from dvt_edge import save_checkpoint
    from dvt_edge.data import recorded_train_args
    from dvt_edge.models import create_model
    from dvt_edge.train import FINETUNE_LR

    save_checkpoint(tmp_path / "src.pt", create_model("dvt_micro_fmnist"))
    quick = [a for i, a in enumerate(QUICK) if "--lr" not in QUICK[i - 1: i + 1]]  # QUICK without its --lr
    args = build_parser().parse_args([*quick, "--epochs", "1", "--train-limit", "60", "--val-limit", "30",
                                      "--finetune", str(tmp_path / "src.pt"), "--out", str(tmp_path / "ft")])
    train(args)
    assert args.lr == FINETUNE_LR == 5e-4 and f"note: --lr {FINETUNE_LR:g} for a fine-tune" in capsys.readouterr().out
    assert recorded_train_args(load_checkpoint(tmp_path / "ft" / "last.pt")[1].extras)["lr"] == FINETUNE_LR
    given = build_parser().parse_args([*QUICK, "--epochs", "1", "--finetune", str(tmp_path / "src.pt"), "--out", "x"])
    assert given.lr == 1e-2  # a given rate is kept (the change happens in train, only when none is given)
    resumed = build_parser().parse_args(["--out", str(tmp_path / "ft"), "--resume", "--threads", "1", "--quiet"])
    train(resumed)  # the run's own rate, not the default
    assert resumed.lr == FINETUNE_LR
    from dvt_edge.model_card import train_command

    # a fine-tune at 1e-3 (--lr's default) reruns at 1e-3: its card's command names the rate
    assert "--lr 0.001" in train_command({**vars(args), "lr": 1e-3}, "x") and "--lr" not in train_command({**vars(args), "finetune": None,
                                                                                                           "lr": 1e-3}, "x")


def test_finetune_with_other_class_names_reinitialises_heads(tmp_path):
    """Same number of classes, other names (or order): the heads are not carried over."""
    from dvt_edge import save_checkpoint
    from dvt_edge.models import create_model

    src = create_model("dvt_micro_fmnist")
    names = [f"class{i}" for i in range(10)]
    save_checkpoint(tmp_path / "src.pt", src, classes=names)
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                      "--finetune", str(tmp_path / "src.pt"), "--lr", "0", "--out", str(tmp_path / "ft")])
    train(args)
    m, _ = load_checkpoint(tmp_path / "ft" / "last.pt")
    s = src.state_dict()
    for k, v in m.state_dict().items():
        if ".head." not in k and v.dtype.is_floating_point:
            assert torch.equal(v, s[k]), k
        elif k.endswith(".head.weight"):  # fresh init (biases start at zero either way)
            assert not torch.equal(v, s[k]), k


def test_finetune_carries_the_head_rows_of_classes_named_alike(tmp_path, capsys):
    """One class renamed re-initialised every head: the rows of the nine classes named alike (in another order here) carry
    over to their new places, and only the renamed class starts fresh."""
    from dvt_edge import save_checkpoint
    from dvt_edge.fashion_mnist import FASHION_MNIST_CLASSES as CLASSES
    from dvt_edge.models import create_model

    src = create_model("dvt_micro_fmnist")
    names = [("Blouse" if c == "Shirt" else c) for c in reversed(CLASSES)]  # the data's classes, reversed, one renamed
    save_checkpoint(tmp_path / "src.pt", src, classes=names)
    train(build_parser().parse_args([*QUICK, "--epochs", "1", "--train-limit", "100", "--val-limit", "50",
                                     "--finetune", str(tmp_path / "src.pt"), "--lr", "0", "--out", str(tmp_path / "ft")]))
    assert "the rows of the 9 class(es) named alike carried over" in capsys.readouterr().out
    m, info = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert info.classes == list(CLASSES)
    s = src.state_dict()
    for k, v in m.state_dict().items():
        if ".head." in k:
            for i, c in enumerate(CLASSES):
                if c == "Shirt":  # fresh (a weight row; biases start at zero)
                    assert k.endswith(".bias") or not torch.equal(v[i], s[k][names.index("Blouse")]), k
                else:
                    assert torch.equal(v[i], s[k][names.index(c)]), (k, c)


def test_numbered_classes_are_never_named_alike():
    """Files without class names get "0".."K-1": a numbered 10-class checkpoint onto an unrelated numbered 5-class set
    carried rows "0".."4" as if they were the same classes."""
    from dvt_edge.models import create_model
    from dvt_edge.transfer import carry_head_rows

    src = create_model("dvt_micro_fmnist").state_dict()
    model = create_model("dvt_micro_fmnist", num_classes=5)
    assert carry_head_rows(model, src, [str(i) for i in range(10)], [str(i) for i in range(5)]) == []
    assert carry_head_rows(model, src, [f"c{i}" for i in range(10)], ["c3", "x", "c1", "y", "z"]) == ["c3", "c1"]
    # a folder Cat, or 'ship ' with a trailing space, carried nothing from the CIFAR reference's cat and ship
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert carry_head_rows(model, src, cifar, ["Cat", "Dogs", "ship ", "Pickup_Truck", "bird"]) == ["Cat <- cat", "ship  <- ship", "bird"]
    for k in ("head.weight", "head.bias"):
        for key in [n for n in src if n.endswith(k)]:
            assert torch.equal(model.state_dict()[key][0], src[key][3]) and torch.equal(model.state_dict()[key][2], src[key][8]), key
    assert carry_head_rows(model, src, ["cat", "Cat", "dog", *"abcdefg"], ["CAT", "dog", "x", "y", "z"]) == ["dog"]  # cat ambiguous: none
    # names without letters or digits are spelled like no other (a bird emoji's row had gone to a fish emoji's class)
    assert carry_head_rows(model, src, ["cat", "dog", "\U0001F426", *"abcdefg"], ["cat", "dog", "\U0001F41F", "x", "y"]) == ["cat", "dog"]


def test_bf16_warning_names_the_fix_on_cpus_without_native_bf16(monkeypatch):
    from dvt_edge.batches import bf16_warning

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    w = bf16_warning("bf16", cpu)
    assert w is not None and "--amp fp32" in w
    assert bf16_warning("fp32", cpu) is None
    assert bf16_warning("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert bf16_warning("bf16", cpu) is None


def test_epoch_shards_are_one_permutation_dealt_out_equally():
    """Several processes: their generators differ (seed*1000 + rank), so each drew its own permutation and the
    'disjoint' shards overlapped; and unequal shard lengths (257 images, 2 processes) deadlock DDP's gradient sync."""
    from dvt_edge.batches import epoch_shard

    gens = [torch.Generator().manual_seed(1000 + r) for r in range(2)]
    a, b = (epoch_shard(257, 3, 1, r, 2, gens[r]) for r in range(2))
    assert len(a) == len(b) == 129
    assert set(a.tolist()) | set(b.tolist()) == set(range(257)) and len(set(a.tolist()) & set(b.tolist())) == 1  # one wrapped
    assert not torch.equal(epoch_shard(257, 4, 1, 0, 2, gens[0]), a)  # a new order each epoch
    one = torch.Generator().manual_seed(5)  # one process: its own generator, as before (bit-for-bit reruns)
    assert torch.equal(epoch_shard(10, 0, 0, 0, 1, one), torch.randperm(10, generator=torch.Generator().manual_seed(5)))


def test_finetune_from_a_checkpoint_this_run_overwrites_is_refused(tmp_path):
    """--finetune OUT/last.pt --force --out OUT would overwrite its own starting point (and its lineage
    would name itself): refused before anything is written."""
    from dvt_edge import save_checkpoint
    from dvt_edge.models import create_model

    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(out / "last.pt", create_model("dvt_micro_fmnist"))
    before = (out / "last.pt").read_bytes()
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--finetune", str(out / "last.pt"), "--force", "--out", str(out)])
    with pytest.raises(CheckpointError, match="a checkpoint this run writes.*copy it elsewhere"):
        train(args)
    assert (out / "last.pt").read_bytes() == before


def test_diverged_loss_is_one_error_line(tmp_path):
    r = _train_cli("--train-limit", "300", "--val-limit", "100", "--lr", "1e30", "--warmup-epochs", "0", "--epochs", "1",
                   "--out", str(tmp_path / "r"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "loss became nan at epoch 1; lower --lr" in r.stderr


def test_one_class_data_is_refused(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "train" / "only").mkdir(parents=True)
    for i in range(30):
        cv2.imwrite(str(tmp_path / "train" / "only" / f"{i}.png"), np.full((28, 28), i * 8, np.uint8))
    args = build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path}", "--epochs", "1",
                                      "--threads", "1", "--quiet", "--out", str(tmp_path / "r")])
    from dvt_edge.data import DataError

    with pytest.raises(DataError, match=r"1 class\(es\) \(\['only'\]\); a classifier needs at least 2"):
        train(args)
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (training picks it when present)")
def test_training_on_a_gpu_evaluates_and_checkpoints(tmp_path):
    """Training used to crash at the end of epoch 1 on a GPU: evaluation fed CPU batches to the CUDA model."""
    args = build_parser().parse_args([*QUICK, "--epochs", "1", "--out", str(tmp_path)])
    summary = train(args)
    acc = summary["history"][-1]["val_acc"]
    assert len(acc) == 3 and min(acc) > 10.0, acc  # above chance after one epoch
    _, info = load_checkpoint(tmp_path / "last.pt")
    assert info.accuracies == pytest.approx(acc)
    raw = torch.load(tmp_path / "last.pt", map_location=None, weights_only=True)  # where each tensor was saved
    assert all(t.device.type == "cpu" for t in raw["model_state_dict"].values())  # weights load on a machine without a GPU


def test_an_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """--out pointing at a file trained a whole epoch, then failed with a FileExistsError traceback."""
    import dvt_edge.train as T

    f = tmp_path / "afile.txt"
    f.write_text("mine")
    monkeypatch.setattr(T, "_load_splits", lambda data, *a: pytest.fail("data was read before --out was checked"))
    for extra in ([], ["--force"]):
        with pytest.raises(CheckpointError, match=r"--out .*afile.txt is a file; pass a folder for the run"):
            train(build_parser().parse_args([*QUICK, "--epochs", "1", *extra, "--out", str(f)]))
    assert f.read_text() == "mine"


def test_without_data_a_model_trains_on_its_own_training_set(tmp_path, monkeypatch):
    """`--model dvt_small_cifar` without --data trained on Fashion-MNIST (the flag's fixed default) with only a note."""
    import dvt_edge.train as T
    from dvt_edge.data import DataError, default_train_data

    assert default_train_data("dvt_small_cifar") == "cifar10-jpeg"  # the reference's recipe
    assert default_train_data("dvt_micro_fmnist") == "fashion-mnist"
    with pytest.raises(DataError, match="no training data is known for model 'dvt_t2t_vit_12'; pass --data"):
        default_train_data("dvt_t2t_vit_12")
    with pytest.raises(DataError, match=r"unknown model 'dvt_small_cifr'.*Did you mean 'dvt_small_cifar'\?.*registered by a script, pass --data"):
        default_train_data("dvt_small_cifr")  # a typo, or --finetune of a script's variant without --data (it said only "unknown model")

    class Read(Exception):
        pass

    def read(data, *limits):
        raise Read(data)

    monkeypatch.setattr(T, "_load_splits", read)
    args = build_parser().parse_args(["--model", "dvt_small_cifar", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert args.data is None
    with pytest.raises(Read, match="^cifar10-jpeg$"):
        train(args)
    assert args.data == "cifar10-jpeg"  # recorded in the run as if given


def test_a_limit_above_the_split_says_so(tmp_path):
    r = _train_cli("--train-limit", "300", "--val-limit", "100000", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: --val-limit 100000 is more than the 10000 images of fashion-mnist's val split: all of them are used" in r.stdout


def test_resume_without_data_takes_the_runs_own(micro_ckpt, monkeypatch):
    """A run resumed without --data continues on the data it recorded, not on the model's default training set."""
    import dvt_edge.train as T

    monkeypatch.setattr(T, "default_train_data", lambda model: pytest.fail("the run's own data was not used"))
    args = build_parser().parse_args(["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "2000", "--val-limit", "200",
                                      "--batch-size", "64", "--lr", "1e-2", "--warmup-epochs", "0.1", "--no-augment", "--threads", "1",
                                      "--quiet", "--resume", "--out", str(micro_ckpt.parent)])
    assert args.data is None and T.resume_run(args, micro_ckpt.parent, vars(build_parser().parse_args(["--out", "x"]))) is not None
    assert args.data == "fashion-mnist"


def test_a_relative_folder_is_recorded_as_the_folder_it_was(tmp_path, monkeypatch, capsys):
    """--data imagefolder:photos was recorded as given: from another working directory evaluate and export read
    another photos/ folder there (silently), or none, and another data set stood in."""
    import cv2
    import numpy as np

    from dvt_edge.data import checkpoint_data, recorded_train_args

    for split, n in (("train", 12), ("val", 4)):
        for ci, c in enumerate(("a", "b")):
            (tmp_path / "photos" / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / "photos" / split / c / f"{i}.png"), np.full((28, 28), 60 + 120 * ci + i, np.uint8))
    monkeypatch.chdir(tmp_path)
    args = ["--model", "dvt_micro_fmnist", "--data", "imagefolder:photos", "--epochs", "1", "--threads", "1", "--quiet"]
    train(build_parser().parse_args([*args, "--out", "r"]))
    model, info = load_checkpoint(tmp_path / "r" / "last.pt")
    assert recorded_train_args(info.extras)["data"] == f"imagefolder:{tmp_path / 'photos'}"
    (tmp_path / "elsewhere" / "photos" / "train" / "a").mkdir(parents=True)  # a decoy where the relative path now points
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert checkpoint_data(model.name, info.extras, model.cfg) == (f"imagefolder:{tmp_path / 'photos'}", "")
    monkeypatch.chdir(tmp_path)  # resumed with the same relative flag: the same data, not a changed setting
    train(build_parser().parse_args([*args, "--resume", "--out", "r"]))
    for epochs, data in ((2, ["--data", "imagefolder:photos"]), (3, [])):  # a run recorded before paths were made absolute,
        raw = torch.load(tmp_path / "r" / "last.pt", weights_only=True)  # resumed with its relative --data, then without
        raw["train"]["args"] = json.dumps({**json.loads(raw["train"]["args"]), "data": "imagefolder:photos", "epochs": epochs})
        torch.save(raw, tmp_path / "r" / "last.pt")
        train(build_parser().parse_args([*data, "--epochs", str(epochs), "--threads", "1", "--quiet", "--resume", "--out", "r"]))
        assert recorded_train_args(load_checkpoint(tmp_path / "r" / "last.pt")[1].extras)["data"] == f"imagefolder:{tmp_path / 'photos'}"
    # the folder moved: the set standing in (Fashion-MNIST, 10 classes) is named as a stand-in, and the fix is --data
    from dvt_edge.data import DataError
    from dvt_edge.evaluate import evaluate_checkpoint

    (tmp_path / "photos").rename(tmp_path / "moved")
    with pytest.raises(DataError, match=r"fashion-mnist cannot score this model: .*It stood in because the checkpoint's own data "
                                        r"could not be read here \(imagefolder:.*photos.*pass --data SPEC with the images the model "
                                        r"was trained on \(moved\? their new path\)"):
        evaluate_checkpoint(str(tmp_path / "r" / "last.pt"), progress=False)
    from dvt_edge.export.__main__ import main as export_main  # export writes a bundle without thresholds: said as a warning

    capsys.readouterr()
    assert export_main(["--checkpoint", str(tmp_path / "r" / "last.pt"), "--target", "onnx", "--precision", "fp32", "--out", "b"]) == 0
    assert "warning: the bundle will have no thresholds (every image runs to the last exit)" in capsys.readouterr().err


def test_a_folder_whose_holdout_moved_since_training_is_said(tmp_path, capsys):
    """Without val/ the holdout is drawn from train/'s file list: photos added after training moved trained-on
    images into it (45 of 64 in a user's walk), and evaluate, export and the calibration set read them silently."""
    import cv2
    import numpy as np

    from dvt_edge.data import DataError
    from dvt_edge.data import main as data_main
    from dvt_edge.evaluate import evaluate_checkpoint
    from dvt_edge.export.__main__ import main as export_main

    def add(first: int, n: int) -> None:
        for ci, c in enumerate(("a", "b")):
            (tmp_path / "photos" / "train" / c).mkdir(parents=True, exist_ok=True)
            for i in range(first, first + n):
                img = np.full((28, 28), 40 + 150 * ci + i, np.uint8) + (np.arange(28, dtype=np.uint8) % 8 * 3)  # not blank
                cv2.imwrite(str(tmp_path / "photos" / "train" / c / f"{i:03d}.png"), img)

    add(0, 20)
    spec = f"imagefolder:{tmp_path / 'photos'}"
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", spec, "--epochs", "1", "--threads", "1", "--quiet",
                                     "--out", str(tmp_path / "r")]))
    ckpt = str(tmp_path / "r" / "last.pt")
    assert load_checkpoint(ckpt)[1].extras["holdout"]["files"] == 4
    said = "has changed since the model was trained on it: with no val/ folder its held-out images are drawn from train/'s file list"
    capsys.readouterr()
    evaluate_checkpoint(ckpt, progress=False)
    assert said not in capsys.readouterr().err
    add(20, 5)  # the user's new photos
    evaluate_checkpoint(ckpt, progress=False)
    assert said in capsys.readouterr().err
    assert data_main(["export", "--data", spec, "--checkpoint", ckpt, "--split", "val", "--out", str(tmp_path / "v.npz")]) == 0
    assert said in capsys.readouterr().err
    # without --data, the checkpoint's own images (it had written Fashion-MNIST's for this 2-class photo model, unsaid)
    assert data_main(["export", "--checkpoint", ckpt, "--split", "val", "--out", str(tmp_path / "own.npz")]) == 0
    z = np.load(tmp_path / "own.npz")
    assert list(z["classes"]) == ["a", "b"] and len(z["labels"]) == 5, (list(z["classes"]), len(z["labels"]))
    capsys.readouterr()
    assert data_main(["export", "--split", "val", "--out", str(tmp_path / "x.npz")]) == 2
    assert "pass --data SPEC (valid: " in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
    assert export_main(["--checkpoint", ckpt, "--target", "onnx", "--precision", "fp32", "--out", str(tmp_path / "b")]) == 0
    assert said in capsys.readouterr().err
    assert export_main(["--checkpoint", ckpt, "--target", "ort", "--precision", "fp32", "--out", str(tmp_path / "b2")]) == 0
    assert said not in capsys.readouterr().err  # once per process (bench exports one bundle per target: it was said for each)
    for b in ("b", "b2"):  # and in each manifest, where an audit reads it (the console only, before)
        assert said in json.loads((tmp_path / b / "manifest.json").read_text())["parity"]["data"]
    run = ["--model", "dvt_micro_fmnist", "--data", spec, "--epochs", "1", "--threads", "1"]
    with pytest.raises(DataError, match=r"--resume: .* changed since the run started \(5 held-out files now, 4 then\)"):
        train(build_parser().parse_args([*run, "--quiet", "--resume", "--out", str(tmp_path / "r")]))
    train(build_parser().parse_args([*run, "--finetune", ckpt, "--out", str(tmp_path / "ft")]))  # allowed, but said
    assert said.replace("the model was", "the --finetune checkpoint was") in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "ft" / "last.pt")[1].extras["holdout"]["files"] == 5  # its own holdout, recorded


def test_class_folders_without_train_are_told_to_move_into_train(tmp_path):
    """The holdout is listed before the decode: a folder of class folders said "no val/ folder" (val/ is optional)."""
    import cv2
    import numpy as np

    from dvt_edge.data import DataError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        cv2.imwrite(str(tmp_path / c / "0.png"), np.zeros((28, 28), np.uint8))
    with pytest.raises(DataError, match=r"no train/ folder in .*holds class folders .* directly: move them into"):
        train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path}", "--epochs", "1",
                                         "--quiet", "--out", str(tmp_path / "r")]))


def test_a_folder_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    import dvt_edge.data as D

    moving = iter([{"files": 4, "sha256": "a"}, {"files": 5, "sha256": "b"}])
    monkeypatch.setattr(D, "holdout_of", lambda spec: next(moving))
    monkeypatch.setattr("dvt_edge.train._load_splits", lambda *a: (None, None))
    with pytest.raises(D.DataError, match=r"changed while its images were read, and with no val/ folder .*train again once it is settled"):
        train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path}", "--epochs", "1",
                                         "--quiet", "--out", str(tmp_path / "r")]))


def test_colour_photos_without_model_train_the_colour_reference_architecture(tmp_path, capsys):
    """--data imagefolder:photos without --model trained the 28 px grayscale Fashion-MNIST model on colour photos."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3)):
        for c in ("cat", "ship"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / split / c / f"{i}.jpg"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    train(build_parser().parse_args(["--data", f"imagefolder:{tmp_path}", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "r")]))
    model, info = load_checkpoint(tmp_path / "r" / "last.pt")
    assert model.name == "dvt_small_cifar" and info.preprocess.channels == "rgb" and info.classes == ["cat", "ship"]
    assert "note: --model dvt_small_cifar (colour, 32 px" in capsys.readouterr().out


def test_an_npz_without_a_split_is_trained_on_90_percent_and_validated_on_the_rest(tmp_path, capsys):
    """A reader found: an npz without a 'split' entry served as both splits, so the run validated on the images it trained on
    and chose best.pt by them; evaluate of the checkpoint read them too."""
    import numpy as np

    from dvt_edge.data import DataError, load_dataset, recorded_train_args
    from dvt_edge.evaluate import evaluate_checkpoint

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (180, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(180)  # each image told apart by its first pixel
    np.savez(tmp_path / "one.npz", images=images, labels=np.repeat(np.arange(3), 60), classes=np.array(["a", "b", "c"]))
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"npz:{tmp_path / 'one.npz'}", "--epochs", "1",
                                     "--threads", "1", "--quiet", "--out", str(tmp_path / "r")]))
    assert "holds no 'split' entry: 10% of its images (seeded, class-stratified) are held out" in capsys.readouterr().err
    spec = recorded_train_args(load_checkpoint(tmp_path / "r" / "last.pt")[1].extras)["data"]
    assert spec == f"npz:{tmp_path / 'one.npz'}#holdout"
    # the run's own command with --resume goes on with its recorded split (it was refused as "other settings")
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"npz:{tmp_path / 'one.npz'}", "--epochs", "1",
                                     "--threads", "1", "--quiet", "--out", str(tmp_path / "r"), "--resume"]))
    assert recorded_train_args(load_checkpoint(tmp_path / "r" / "last.pt")[1].extras)["data"] == spec
    tr, va = (load_dataset(spec, s) for s in ("train", "val"))
    assert (len(tr), len(va)) == (162, 18) and np.bincount(va.labels).tolist() == [6, 6, 6]
    assert not set(tr.images[:, 0, 0].tolist()) & set(va.images[:, 0, 0].tolist())
    assert evaluate_checkpoint(str(tmp_path / "r" / "last.pt"), progress=False)["n"] == 18
    assert len(load_dataset(f"npz:{tmp_path / 'one.npz'}", "val")) == 180  # a file given for evaluation is read whole
    # ... unless it is the file this model trained on: then its held-out part (the whole file scored 90% trained-on images)
    assert evaluate_checkpoint(str(tmp_path / "r" / "last.pt"), data=f"npz:{tmp_path / 'one.npz'}", progress=False)["n"] == 18
    assert "is the file this model trained on, 90% of it" in capsys.readouterr().err
    # export's --calib-data too: its verification images (and the thresholds they choose) are the held-out 18, none trained on
    from dvt_edge.export import export_bundle

    res = export_bundle(str(tmp_path / "r" / "last.pt"), "onnx", "fp32", out=str(tmp_path / "b"), calib_data=f"npz:{tmp_path / 'one.npz'}",
                        calib_n=32, verify_n=100, progress=False)
    assert res.manifest.parity.n_real == 18 and "one.npz#holdout/val" in res.manifest.parity.data, res.manifest.parity.data
    assert "is the file this model trained on, 90% of it" in capsys.readouterr().err
    # the file changed since: its 10% is other images, said by evaluate and refused by --resume (nothing recorded it)
    assert set(load_checkpoint(tmp_path / "r" / "last.pt")[1].extras["holdout"]) == {"file_sha256"}
    np.savez(tmp_path / "one.npz", images=images[::-1].copy(), labels=np.repeat(np.arange(3), 60)[::-1].copy(),
             classes=np.array(["a", "b", "c"]))
    evaluate_checkpoint(str(tmp_path / "r" / "last.pt"), progress=False)
    assert "has changed since the model was trained on it: its held-out 10% is drawn from the file's images" in capsys.readouterr().err
    evaluate_checkpoint(str(tmp_path / "r" / "last.pt"), data=f"npz:{tmp_path / 'one.npz'}", progress=False)  # the file named
    assert "has changed since the model was trained on it" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"--resume: .*one.npz#holdout changed since the run started \(the file's SHA-256 is"):
        train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"npz:{tmp_path / 'one.npz'}", "--epochs", "1",
                                         "--threads", "1", "--quiet", "--out", str(tmp_path / "r"), "--resume"]))


def test_resuming_an_npz_run_from_before_the_holdout_says_it_validates_in_sample(tmp_path, capsys):
    """A run recorded as npz:PATH before npz files had a held-out 10% goes on reading the file whole (its split is kept), so
    its val top-1 and best.pt are its training images': resumed without a word."""
    import json

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", images=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), labels=np.repeat(np.arange(3), 20),
             classes=np.array(["a", "b", "c"]))
    run = tmp_path / "run"
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"npz:{tmp_path / 'one.npz'}", "--epochs", "2",
                                     "--threads", "1", "--quiet", "--out", str(run)]))
    capsys.readouterr()
    ck = torch.load(run / "last.pt", weights_only=False)  # as an older version wrote it, stopped after epoch 1
    args = json.loads(ck["train"]["args"])
    ck["train"]["args"] = json.dumps({**args, "data": args["data"].removesuffix("#holdout")})
    ck.pop("holdout")
    ck["train"]["epoch"] = 1
    torch.save(ck, run / "last.pt")
    train(build_parser().parse_args(["--out", str(run), "--resume", "--threads", "1", "--quiet"]))
    assert "note: this run validates on the images it trains on" in capsys.readouterr().err
    from dvt_edge.export import export_bundle  # its own file, the only one with its classes: verified there, and said

    export_bundle(str(run / "last.pt"), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    assert "trained on all of it: verification and the default thresholds are in-sample" in capsys.readouterr().err


def test_resume_refuses_data_whose_classes_changed(tmp_path):
    """A class folder renamed between runs moved every label index (cat->2, dog->0, eel->1) and the resumed run trained on
    the permuted labels; a class added crashed with an IndexError."""
    import cv2
    import numpy as np

    for split in ("train", "val"):
        for ci, c in enumerate(("cat", "dog", "eel")):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(6):
                cv2.imwrite(str(tmp_path / "f" / split / c / f"{i}.png"), np.full((28, 28), 30 + 80 * ci + i, np.uint8))
    run = ["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path / 'f'}", "--epochs", "1", "--threads", "1", "--quiet",
           "--out", str(tmp_path / "r")]
    train(build_parser().parse_args(run))
    for split in ("train", "val"):
        (tmp_path / "f" / split / "cat").rename(tmp_path / "f" / split / "fox")
    with pytest.raises(CheckpointError, match=r"trained on classes \['cat', 'dog', 'eel'\], the data now has \['dog', 'eel', 'fox'\]"):
        train(build_parser().parse_args([*run, "--resume"]))


def test_resume_is_exact_with_file_backed_images_and_drop_path(tmp_path, monkeypatch):
    """Each evaluation's DataLoader drew a seed from the global generator that drives drop-path, after the saved RNG state:
    a resumed run of a folder of mixed-size photos with --drop-path differed from an uninterrupted one (weights 3.5e-3 apart)."""
    import cv2
    import numpy as np

    import dvt_edge.train as T

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 4)):
        for ci, c in enumerate(("a", "b")):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(n):
                side = int(rng.integers(20, 40))  # mixed sizes: read from the files at each epoch
                cv2.imwrite(str(tmp_path / "f" / split / c / f"{i}.png"), rng.integers(0, 256, (side, side), dtype=np.uint8) // (1 + ci))
    run = ["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path / 'f'}", "--epochs", "2", "--threads", "1", "--quiet",
           "--drop-path", "0.1", "--batch-size", "16", "--workers", "0"]
    train(build_parser().parse_args([*run, "--out", str(tmp_path / "straight")]))
    end = T._end_epoch

    def stop_after_the_first(run_, state, out, epoch, *a):
        end(run_, state, out, epoch, *a)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_end_epoch", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train(build_parser().parse_args([*run, "--out", str(tmp_path / "broken")]))
    monkeypatch.setattr(T, "_end_epoch", end)
    train(build_parser().parse_args([*run, "--out", str(tmp_path / "broken"), "--resume"]))
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "broken" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups: POSIX")
def test_sigterm_to_the_process_group_stops_a_run_with_decoding_workers_in_one_line(tmp_path):
    """timeout signals the whole group: DataLoader workers killed by it made the main process fail with a RuntimeError
    (a traceback, exit 1, no resume command) when a folder of photos was read by workers."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / "train" / c).mkdir(parents=True)
        for i in range(24):
            cv2.imwrite(str(tmp_path / "d" / "train" / c / f"{i}.png"), rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
    script = f"""
import sys
import torch
from dvt_edge.batches import batches
from dvt_edge.data import load_dataset
from dvt_runtime.console import run_cli

def main():
    ds = load_dataset("imagefolder:{tmp_path / 'd'}", "train")
    for k, _ in enumerate(batches(ds, None, torch.arange(len(ds)), 2, workers=2)):
        if k == 1:  # the workers are running: a step in C code, where Python's handlers wait, as in backward()
            print("ready", flush=True)
            x = torch.ones(1500, 1500)
            for _ in range(400):
                x = x @ x / 1500
    return 0

sys.exit(run_cli(main))
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    assert p.stdout.readline().strip() == "ready"
    os.killpg(p.pid, signal.SIGTERM)  # as timeout does: to every process of the group, from outside it (PyTorch's workers
    out, err = p.communicate(timeout=300)  # exit quietly only when their parent sends it)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert r.returncode == 143 and "interrupted (SIGTERM): stopped" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "RuntimeError" not in r.stderr, r.stderr[-2000:]


def test_the_code_revision_is_the_checkouts_commit_and_says_when_files_differ(tmp_path, monkeypatch):
    """Every checkout of one version carries the same version number: train, export, evaluate and bench record the
    commit (marked when tracked files differ from it), or nothing for an installed package."""
    import shutil

    from dvt_edge import provenance

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "clone"
    (repo / "dvt_edge").mkdir(parents=True)
    (repo / "dvt_edge" / "x.py").write_text("a = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
        subprocess.run([*git, *cmd], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(provenance, "_ROOT", repo)
    try:
        provenance.code_revision.cache_clear(), provenance.code_changes.cache_clear()
        assert provenance.code_revision() == head
        (repo / "dvt_edge" / "x.py").write_text("a = 2\n")
        provenance.code_revision.cache_clear()
        assert provenance.code_revision() == head + "+modified"
        assert "(git " + head[:12] + "+modified" in provenance.environment_line({**provenance.environment(), "revision": head + "+modified"})
        first = provenance.code_changes()  # which modification: another edit gives another digest, the same edit the same
        provenance.code_changes.cache_clear()
        subprocess.run([*git, "config", "diff.external", "/bin/true"], check=True)  # a user's diff tool changes nothing
        assert first == provenance.code_changes() and first is not None
        (repo / "dvt_edge" / "x.py").write_text("a = 3\n")
        provenance.code_revision.cache_clear(), provenance.code_changes.cache_clear()
        assert provenance.code_changes() not in (None, first) and "+modified " + provenance.code_changes()[:8] in provenance.environment_line(provenance.environment())
        (repo / "dvt_edge" / "x.py").write_text("a = 1\n")  # back to the commit, but a file git does not ignore added (it ran:
        (repo / "sitecustomize.py").write_text("import random\n")  # on the path, Python loads it at start): modified
        provenance.code_revision.cache_clear(), provenance.code_changes.cache_clear()
        assert provenance.code_revision() == head + "+modified" and provenance.code_changes() is not None
        (repo / ".#x.py").symlink_to("user@host.1234")  # an editor's lock file: a link to nowhere, in the digest as a link
        provenance.code_changes.cache_clear()
        assert provenance.code_changes() is not None
        (repo / ".#x.py").unlink(), (repo / "sitecustomize.py").unlink()
        (repo / "photos").mkdir()  # a user's images or results in the checkout are not code: not modified
        (repo / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
        provenance.code_revision.cache_clear(), provenance.code_changes.cache_clear()
        assert provenance.code_revision() == head and provenance.code_changes() is None
        monkeypatch.setattr(provenance, "_ROOT", tmp_path / "installed")  # a wheel: no checkout around the package
        provenance.code_revision.cache_clear()
        assert provenance.code_revision() is None
    finally:
        provenance.code_revision.cache_clear(), provenance.code_changes.cache_clear()


@pytest.mark.skipif(os.name == "nt", reason="no flock")
def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two runs into one new --out both 'succeeded' and one's checkpoints silently replaced the other's: the refusal
    came only once a first epoch was saved. The run's lock (dropped by the kernel however it ends) refuses the second;
    a killed save's temporary files are removed under it."""
    from dvt_edge.resume import LOCK_NAME

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)", str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    args = [*QUICK, "--epochs", "1", "--train-limit", "200", "--out", str(out)]
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"another training run is writing to {out} .*let it finish, or train into another --out"):
            train(build_parser().parse_args(args))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    (out / ".mine.tmp").write_text("the user's")
    capsys.readouterr()
    train(build_parser().parse_args(args))
    assert "removed 1 temporary file(s) left in" in capsys.readouterr().err and ".last.pt.k1ll3d.tmp" not in os.listdir(out)
    assert (out / ".mine.tmp").read_text() == "the user's" and (out / "last.pt").is_file()


def test_a_full_disk_is_said_before_the_first_epoch_and_in_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    """On a full disk a run trained a whole epoch, then ended in a 31-line traceback without the resume command."""
    import errno
    import shutil
    from collections import namedtuple

    import dvt_edge.train as train_mod
    from dvt_edge.train import main

    out = tmp_path / "run"
    args = [*QUICK, "--epochs", "2", "--train-limit", "200", "--out", str(out)]
    usage = namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 1 << 20))
    monkeypatch.setattr(train_mod, "_train_epoch", lambda *a: pytest.fail("trained on a disk with no room for its checkpoints"))
    assert main(args) == 2
    assert f"error: {out} has 1.0 MB free; each epoch saves about" in capsys.readouterr().err
    monkeypatch.undo()
    real_save, saves = train_mod.save_checkpoint, []

    def save_once(path, *a, **k):  # the disk fills after the first epoch's checkpoints
        saves.append(path)
        if len(saves) > 2:
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real_save(path, *a, **k)

    monkeypatch.setattr(train_mod, "save_checkpoint", save_once)
    assert real_usage(tmp_path).free > 0 and main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: cannot write {out}" in err and f"resume with: python -m dvt_edge.train --out {out} --resume" in err
    from dvt_runtime.io import atomic_write

    def no_room(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)  # every writer's message says the fix, and names the user's file
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'x.json'}: No space left on device; free some space there, or write "):
        atomic_write(tmp_path / "x.json", b"{}")
    assert os.listdir(tmp_path) == ["run"]  # no temporary file left


def test_a_read_only_out_is_one_line_with_the_fix_before_any_work(tmp_path, monkeypatch, capsys):
    """A read-only --out (checked by hand on a read-only tmpfs) is refused before the data is read, in one line that names
    the folder and the fix, creating nothing; the lock is taken only after this check, so the user sees it, not an OSError."""
    import dvt_edge.train as train_mod
    from dvt_edge.train import main
    from dvt_runtime import io

    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(io, "unwritable", lambda folder: "read-only file system" if Path(folder) == ro else "")
    monkeypatch.setattr(train_mod, "load_dataset", lambda *a, **k: pytest.fail("read the data for an --out it cannot write"))
    for out in (ro / "run", ro):
        assert main([*QUICK, "--epochs", "1", "--train-limit", "200", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --out {out / 'metrics.json'}: cannot write in {ro} (read-only file system); choose another --out\n"
    assert os.listdir(ro) == []


def test_a_run_that_fails_before_saving_leaves_no_folder_behind(tmp_path):
    """The run's lock made --out before the data was read: a mistyped data path left an empty folder with a lock file."""
    from dvt_edge.data import DataError

    out = tmp_path / "new" / "run"
    with pytest.raises(DataError):
        train(build_parser().parse_args([*QUICK, "--epochs", "1", "--data", f"imagefolder:{tmp_path / 'nope'}", "--out", str(out)]))
    assert not out.exists()


def test_class_weight_balanced_weighs_each_class_as_in_a_balanced_set(tmp_path, monkeypatch, capsys):
    """Unbalanced custom data had plain cross-entropy only (a 4-class 5:1 folder's first exit never answered its rare
    class). ``--class-weight balanced`` weighs each class's cross-entropy by n / (classes x its count), is recorded with the
    run's flags, and reaches every step's loss."""
    import numpy as np
    import torch.nn.functional as F

    from dvt_edge import train as T
    from dvt_edge.batches import balanced_class_weights

    w = balanced_class_weights(np.array([0] * 10 + [1] * 2), 3)  # 12 images: 12/30, 12/6, and a class with none
    assert w.tolist() == pytest.approx([0.4, 2.0, 0.0])
    said = []  # logged by name (indices had said nothing of which class was rare)
    assert balanced_class_weights(np.array([0] * 10 + [1] * 2), ["Cat", "dog", "truck"], said.append).tolist() == w.tolist()
    assert said == ["class weights (--class-weight balanced): Cat: 0.4, dog: 2, truck: 0"]
    gen = torch.Generator().manual_seed(0)
    outs, y = [torch.randn(6, 3, generator=gen) for _ in range(2)], torch.tensor([0, 0, 0, 0, 1, 1])
    want = sum(F.cross_entropy(o, y, reduction="none").mul(w[y]).sum() / w[y].sum() for o in outs)
    assert float(T.exit_loss(outs, y, weight=w)) == pytest.approx(float(want), rel=1e-6)
    assert float(T.exit_loss(outs, y)) != pytest.approx(float(want), rel=1e-3)  # the weights change it
    seen = []
    real = T.exit_loss
    monkeypatch.setattr(T, "exit_loss", lambda *a, **k: (seen.append(a[5] if len(a) > 5 else k.get("weight")), real(*a, **k))[1])
    train(build_parser().parse_args([*QUICK, "--train-limit", "200", "--val-limit", "100", "--epochs", "1", "--class-weight",
                                     "balanced", "--out", str(tmp_path)]))
    assert seen and all(s is not None and s.shape == (10,) for s in seen)
    assert json.loads((tmp_path / "metrics.json").read_text())["args"]["class_weight"] == "balanced"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*QUICK, "--class-weight", "auto"])
    assert "invalid choice: 'auto' (choose from 'none', 'balanced')" in capsys.readouterr().err
