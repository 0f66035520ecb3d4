"""``train --resume``: which checkpoint a run continues from, with the flags it was started with."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from dvt_edge import data as _data
from dvt_edge.checkpoint import CheckpointError, read_checkpoint
from dvt_runtime.console import quote_arg
from dvt_runtime.io import atomic_write_json, check_result_files, hold_lock

__all__ = ["LOCK_NAME", "RESUME_MAY_CHANGE", "STARTED_OVER", "check_room", "resume_hint", "resume_run", "resumed_differently", "run_lock",
           "started_over"]

#: written in OUT when a --force run starts over earlier checkpoints, removed once its first epoch is saved
STARTED_OVER = "started-over.json"
#: locked in OUT by the process that writes a run's checkpoints, for the whole run
LOCK_NAME = ".dvt-train.lock"
#: what a run writes in OUT (atomically: an interrupted write leaves ``.NAME.*.tmp``)
METRICS_SCHEMA = "dvt-edge/train-metrics/1"  # OUT/metrics.json
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "metrics.png", STARTED_OVER)

#: flags a resumed run may change (how it runs; --threads and --amp change float rounding: recorded per epoch and warned,
#: see resumed_differently)
RESUME_MAY_CHANGE = {"out", "resume", "force", "quiet", "workers", "threads", "trust_checkpoint", "finetune", "amp"}


def resume_run(args: argparse.Namespace, out: Path, defaults: dict[str, Any], given: Optional[set[str]] = None) -> Optional[dict]:
    """The checkpoint to resume from (``--resume``), after the resume / overwrite checks, before anything is touched.

    ``defaults``: the parser's defaults; ``given``: the flags the command line set (None: all of them). A resumed run
    takes the run's own value of every flag not given (``--out RUN --resume`` continues it as started); a given one that
    differs is refused."""
    last, best_path = out / "last.pt", out / "best.pt"
    if args.resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: {last} not found (nothing to resume); drop --resume to start a new run")
        if (out / STARTED_OVER).is_file():  # the checkpoints are the earlier run's: resuming would go on with it as if it were the new one
            raise CheckpointError(f"--resume: a run started over {out} with --force stopped before its first epoch ended, so {last} is "
                                  f"still the earlier run's; start the new run again with --force, or, to go on with the earlier run, "
                                  f"delete {out / STARTED_OVER} and resume")
        resume_state = read_checkpoint(last)
        stored = resume_state.get("model", {})
        args.model = args.model or stored.get("name")
        if stored.get("name") != args.model:
            raise CheckpointError(
                f"--resume: {last} is a checkpoint of model {stored.get('name')!r}, not {args.model!r}; "
                f"pass --model {stored.get('name')} or another --out"
            )
        run_args = json.loads(resume_state.get("train", {}).get("args", "{}"))
        args.data = _data.resumed_spec(args.data, run_args.get("data"))  # the run's own data when --data is not given again
        _check_resumed_source(run_args.get("finetune"), args.finetune, last, given)
        _check_resume_args(run_args, args, last, defaults, given)
        if args.finetune and run_args.get("finetune"):  # given again (the same file, checked): recorded as the run recorded it
            args.finetune = run_args["finetune"]
        if resume_state.get("train", {}).get("epoch", 0) >= args.epochs and os.environ.get("RANK", "0") == "0":
            print(f"note: {out} finished its {args.epochs} epoch(s): nothing left to train (train on from it with --finetune "
                  f"{last} --out NEW_RUN)", file=sys.stderr, flush=True)
        return resume_state
    if args.finetune and Path(args.finetune).resolve() in (last.resolve(), best_path.resolve()):
        # the run would overwrite its own starting point (and its lineage would name itself)
        raise CheckpointError(f"--finetune {args.finetune} is a checkpoint this run writes in --out {out}: copy it elsewhere "
                              f"first, or fine-tune into another --out")
    if args.finetune:  # recorded absolute: a card published from another folder had resolved it to another file
        args.finetune = str(Path(args.finetune).resolve())
    if (last.exists() or best_path.exists()) and not args.force:
        raise CheckpointError(f"{out} already holds checkpoints; pass --resume to continue that run or --force to start over")
    check_result_files(out / "metrics.json", _is_metrics, [out / "metrics.png"])  # a user's own files of those names stay
    return None


def _is_metrics(path: Path) -> bool:
    """Whether ``path`` is a training run's metrics.json (an earlier run's, which a new one may replace)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and isinstance(d.get("history"), list) and "model" in d


def started_over(out: Path, args: argparse.Namespace, main: bool = True, done: bool = False) -> None:
    """Mark ``out`` while a ``--force`` run that starts over earlier checkpoints has saved none of its own (``done``: unmark;
    ``main``: this is the process that writes the checkpoints)."""
    mark = out / STARTED_OVER
    if not main:
        return
    if done:
        mark.unlink(missing_ok=True)
    elif args.force and not args.resume and ((out / "last.pt").exists() or (out / "best.pt").exists()):
        atomic_write_json(mark, {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args)})


def _check_resumed_source(theirs: Optional[str], ours: Optional[str], last: Path, given: Optional[set[str]]) -> None:
    """A resumed run keeps the source it started from: ``--finetune`` given again must name that file (a run from scratch
    resumed with ``--finetune X`` was published as fine-tuned from X, an initialisation that never ran)."""
    if not ours or (given is not None and "finetune" not in given):
        return
    if not theirs:
        raise CheckpointError(f"--resume: {last} was trained from scratch, not from --finetune {ours}: resume without --finetune, "
                              f"or start a new run from {ours} with --finetune and another --out")
    if Path(theirs).resolve() != Path(ours).resolve():
        raise CheckpointError(f"--resume: {last} was fine-tuned from {theirs}, not {ours}: resume without --finetune (the run keeps "
                              f"its source), or start a new run from {ours} with another --out")


def _check_resume_args(stored: dict, args: argparse.Namespace, last: Path, defaults: dict[str, Any], given: Optional[set[str]]) -> None:
    """``--resume`` continues the run as it was started: a flag that shapes it (schedule, data, seed, loss) takes the
    run's value when not given, and may not be given another, or the resumed run would silently differ from the one the
    checkpoint records."""
    now = vars(args)
    diff = {k: (stored.get(k, defaults.get(k)), v) for k, v in now.items()
            if k not in RESUME_MAY_CHANGE and stored.get(k, defaults.get(k)) != v
            and not (k == "data" and _data.same_data(stored.get(k), v))}  # a run recorded before paths were made absolute
    taken = {k: a for k, (a, _) in diff.items() if given is not None and k not in given}
    for k, a in taken.items():  # not on the command line: the run's own
        setattr(args, k, a)
    for k in ("finetune", "trust_checkpoint"):  # where the run came from: kept in what it records (its lineage, its card)
        if given is not None and k not in given and stored.get(k):
            setattr(args, k, stored[k])
    if taken:
        print("note: --resume goes on with the run's own " + ", ".join(f"--{k.replace('_', '-')}" + ("" if a is True else f" {a!r}")
                                                                       for k, a in sorted(taken.items())), file=sys.stderr)
    if diff := {k: v for k, v in diff.items() if k not in taken}:
        raise CheckpointError(
            f"--resume: {last} was started with other settings: "
            + ", ".join(f"--{k.replace('_', '-')} {a!r} (now {b!r})" for k, (a, b) in sorted(diff.items()))
            + "; resume with the run's own flags (or leave them out), or start a new run from it with --finetune " + str(last))


_ENV_SAID = (("revision", "code revision"), ("changes", "code changes"), ("dvt_edge", "dvt-edge"), ("torch", "torch"), ("python", "Python"), ("cpu", "CPU"),
             ("accelerator", "GPU"))


def resumed_differently(history: list[dict], amp: str, threads: int, env: dict) -> Optional[str]:
    """A warning when a resumed run computes differently from its last recorded epoch (``--amp``, the intra-op threads, the
    code or the machine: each changes how float sums round); None when nothing recorded differs."""
    if not history:
        return None
    last = history[-1]
    changes = [f"--amp {last['amp']} -> {amp}"] if last.get("amp", amp) != amp else []
    if last.get("threads") is not None and last["threads"] != threads:
        changes.append(f"--threads {last['threads']} -> {threads}")
    before = last.get("environment")
    if isinstance(before, dict):
        changes += [f"{name} {before.get(k)} -> {env.get(k)}" for k, name in _ENV_SAID if before.get(k) != env.get(k)]
    if not changes:
        return None
    return (f"--resume: this run's epoch {last['epoch']} ran otherwise ({'; '.join(changes)}): training goes on, but its weights may "
            "not be bit-identical to an uninterrupted run's (float sums round differently); each epoch's setting is recorded "
            "(metrics.json) and the model card lists them")


@contextlib.contextmanager
def run_lock(out: Path, main: bool = True) -> Iterator[None]:
    """Hold OUT's training lock while the run goes on (``main``: the process that writes its checkpoints): a second run
    into OUT, which would overwrite this one's checkpoints or have them overwritten, is refused. The kernel drops the lock
    when the process ends, however it ends. Under it, temporary files of a save that was killed are removed."""
    if not main:
        yield
        return
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with hold_lock(out / LOCK_NAME, create=True) as held:
            if not held:
                raise CheckpointError(f"another training run is writing to {out} (it holds {out / LOCK_NAME}): let it finish, or "
                                      "train into another --out")
            _remove_partial_saves(out)
            yield
    finally:
        with contextlib.suppress(OSError):
            if made and os.listdir(out) == [LOCK_NAME]:  # a run that saved nothing leaves no folder behind
                (out / LOCK_NAME).unlink()
                out.rmdir()


def _remove_partial_saves(out: Path) -> None:
    """The temporary files of a save that was killed (``atomic_write``'s ``.NAME.*.tmp``), under the run's lock."""
    left = [p for name in RUN_FILES for p in out.glob(f".{name}.*.tmp") if p.is_file() and not p.is_symlink()]
    for p in left:
        p.unlink()
    if left:
        print(f"note: removed {len(left)} temporary file(s) left in {out} by an interrupted save: {', '.join(p.name for p in left)}",
              file=sys.stderr)


def agreed(check: Callable[[], Any], rank: int, world: int) -> None:
    """``check`` on rank 0 only (the process that writes OUT); under DDP its refusal is raised on every rank, which would
    otherwise wait in the next collective call until torchrun killed them, burying the message."""
    said = None
    if rank == 0:
        try:
            check()
        except CheckpointError as e:
            if world == 1:
                raise
            said = str(e)
    if world > 1:
        import torch.distributed as dist

        box = [said]
        dist.broadcast_object_list(box, src=0)
        said = box[0]
    if said is not None:
        raise CheckpointError(said)


def check_room(out: Path, n_params: int) -> None:
    """Refuse before the first epoch when OUT's disk cannot take an epoch's checkpoints: ``last.pt`` (weights and AdamW's
    two moments) and ``best.pt``, each written beside the file it replaces."""
    import shutil

    need = 4 * n_params * (3 + 1) + (8 << 20)  # float32 weights x (weights + 2 moments) + best.pt; metrics and plots
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return
    if free < need:
        raise CheckpointError(f"{out} has {free / 2**20:.1f} MB free; each epoch saves about {need / 2**20:.0f} MB of checkpoints "
                              "there: free some space, or train into another --out")


def resume_hint(out: str, started: float) -> Optional[str]:
    """The command that resumes a run stopped after this process saved an epoch (None when it saved none)."""
    last = Path(out) / "last.pt"
    if not last.is_file() or last.stat().st_mtime < started or os.environ.get("RANK", "0") != "0":
        return None
    launcher = "torchrun --nproc_per_node N -m dvt_edge.train" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "python -m dvt_edge.train"
    return f"resume with: {launcher} --out {quote_arg(str(out))} --resume"
