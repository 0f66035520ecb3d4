"""Publish a finished training run as a reference checkpoint with a model card.

    python -m dvt_edge.model_card --run runs/ref --out dvt_edge/assets/dvt_tiny_fmnist_ms.pt --force   # --force: it exists

Takes the run's **final** epoch (``RUN/last.pt``; no model selection on the evaluation split), writes a weights-only
checkpoint atomically (no optimizer state: small enough to commit), evaluates it with
:func:`dvt_edge.evaluate.evaluate_checkpoint`, and writes ``MODEL_CARD_<name>.md`` beside it: the exact training command,
seed, wall time, per-exit top-1 and FLOPs, the FLOPs-budget curve's Pareto points and the per-epoch history. Every number
in the card comes from the run's files or from this evaluation.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from dvt_edge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dvt_edge.data import DataError, absolute_spec, npz_in_sample, trained_on_val
from dvt_edge.provenance import THREADS_HELP, environment_line, set_torch_threads
from dvt_edge.references import card_path
from dvt_edge.resume import STARTED_OVER
from dvt_runtime import io as dio
from dvt_runtime.cli import Parser, command_name
from dvt_runtime.console import join_args, quote_arg
from dvt_runtime.io import atomic_write, atomic_write_json, check_out_path, claimed, hold_lock, os_error_text, sha256_file, short_name

#: train.py flags that do not change the result (left out of the reproduced command)
_NOT_IN_COMMAND = {"out", "resume", "force", "quiet", "workers", "trust_checkpoint"}


def train_command(args: dict, out: str) -> str:
    """The ``python -m dvt_edge.train`` command that reproduces a run (non-default flags only)."""
    from dvt_edge.train import build_parser

    defaults = vars(build_parser().parse_args(["--out", "x"]))
    parts = ["python -m dvt_edge.train"]
    shown = ["model", "data", "epochs", "seed"]  # always shown, even when default
    if _is_224(args.get("model")) and "batch_size" in args:  # a 224 px model's default batch is not --batch-size's default
        shown.append("batch_size")
    if args.get("finetune") and "lr" in args:  # a fine-tune's default rate is not --lr's default
        shown.append("lr")
    for key in shown:
        parts.append(f"--{key.replace('_', '-')} {quote_arg(str(args[key]))}")
    for key, value in args.items():
        if key in _NOT_IN_COMMAND or key in shown or value == defaults.get(key, object()):
            continue
        flag = f"--{key.replace('_', '-')}"
        parts.append(flag if value is True else f"{flag} {quote_arg(str(value))}")
    parts.append(f"--out {quote_arg(str(out))}")
    return " ".join(parts)


def _is_224(model: object) -> bool:
    from dvt_edge.models import get_config, list_models

    return isinstance(model, str) and model in list_models() and get_config(model).img_size >= 224


def lineage(args: dict, direct: bool = True, _seen: frozenset = frozenset(), sha256: Optional[str] = None) -> list[dict]:
    """The training steps before this run, oldest first: for ``--finetune SOURCE``, SOURCE's own
    lineage plus one entry for SOURCE (its SHA-256, and its training arguments and per-exit
    accuracy when it is one of our checkpoints). Read when publishing, while SOURCE exists; an
    earlier source that is gone, or a file that is not one of ours, is recorded by name only."""
    src = args.get("finetune")
    if not src:
        return []
    stub = {"checkpoint": str(src), "sha256": None, "args": None, "accuracies": None}
    if Path(src).resolve() in _seen:  # a run fine-tuned from its own checkpoint (overwritten since): the chain stops here
        return [{**stub, "note": "names a checkpoint already in this lineage (a run fine-tuned from its own file)"}]
    if not Path(src).is_file():
        if not direct:
            return [{**stub, "note": "gone when this run was published"}]
        raise CheckpointError(f"the run was fine-tuned from {src}, which is gone: its lineage cannot be recorded; "
                              "restore the file (or publish before deleting it)")
    now = sha256_file(src)  # read once: a 224 px source is hundreds of MB
    if sha256 and now != sha256 and (own := _published_by(src, args, sha256)) is not None:
        return own  # the run published over its source before: that file records the lineage, read from the source then
    if sha256 and now != sha256:  # ``sha256``: the source's when the run started (recorded since)
        raise CheckpointError(f"the run was fine-tuned from {src}, which has changed since (SHA-256 {sha256[:12]}... then, "
                              f"{now[:12]}... now): its lineage would describe another file; restore the file the run started from")
    try:
        # never unpickled here: the run's --trust-checkpoint was the trainer's choice, not the publisher's
        _, info = load_checkpoint(src, trusted=False)
    except CheckpointError:  # accepted by --finetune (enough tensors fit), not loadable (or not safely) as a whole model
        return [{**stub, "sha256": now}]
    if "train_summary" in info.extras:  # a published file
        src_args = json.loads(info.extras["train_summary"])["args"]
    elif info.extras.get("train"):  # a run's last.pt
        src_args = json.loads(info.extras["train"]["args"])
    else:  # not trained by dvt_edge.train
        src_args = None
    before = json.loads(info.extras["lineage"]) if "lineage" in info.extras else (lineage(src_args, direct=False, _seen=_seen | {Path(src).resolve()}) if src_args else [])
    return [*before, {"checkpoint": str(src), "sha256": now, "args": src_args, "accuracies": info.accuracies}]


def _published_by(path: Union[str, Path], args: dict, sha256: str) -> Optional[list[dict]]:
    """The lineage recorded in ``path`` when it is a publication of the run with these ``args`` that started from a
    source whose SHA-256 was ``sha256`` (a run republished over its own source); None otherwise."""
    try:
        _, info = load_checkpoint(path, trusted=False)
        summary = json.loads(info.extras["train_summary"])
        steps = json.loads(info.extras["lineage"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
    mine = isinstance(summary, dict) and summary.get("args") == args and isinstance(steps, list) and steps
    return steps if mine and isinstance(steps[-1], dict) and steps[-1].get("sha256") == sha256 else None


def step_commands(steps: list[dict], args: dict, run_dir: str) -> list[str]:
    """One ``python -m dvt_edge.train`` command per step, each fine-tuning from the previous step's
    ``last.pt`` (a step without recorded arguments is named by its file and SHA-256)."""
    outs = [f"{run_dir}-step{i + 1}" for i in range(len(steps))] + [run_dir]
    cmds = []
    for i, st in enumerate([*steps, {"args": args}]):
        a = dict(st["args"]) if st.get("args") else None
        if a is None:
            cmds.append(f"(start from {st['checkpoint']}, SHA-256 {st['sha256'] or 'unknown: ' + st.get('note', 'not recorded')})")
            continue
        if i and a.get("finetune") and steps[i - 1].get("args"):
            a["finetune"] = f"{outs[i - 1]}/last.pt"
        cmds.append(train_command(a, outs[i]))
    return cmds


def _code(text: str) -> str:
    """``text`` as a Markdown code span that holds it whole: a path with a backtick ended a single-backtick span there."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    pad = " " if longest else ""  # a longer fence, and a space each side, which CommonMark strips
    return f"{'`' * (longest + 1)}{pad}{text}{pad}{'`' * (longest + 1)}"


def _damaged_figures(history: list[dict], t: dict) -> str:
    """The first recorded figure the card would print that is not a finite number in its range, in words, or ""."""
    ok = lambda v, hi=math.inf: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= hi
    for h in history:
        for name, v, hi in (("train_loss", h.get("train_loss"), math.inf), ("epoch_seconds", h.get("epoch_seconds", 0.0), math.inf),
                            *(("val_acc", a, 100.0) for a in h.get("val_acc", []))):
            if not ok(v, hi):
                return f"epoch {h.get('epoch')}: {name} {v!r}"
    return "" if t.get("run_seconds") is None or ok(t["run_seconds"]) else f"run_seconds {t['run_seconds']!r}"


def _epoch_spans(history: list[dict], key: Callable[[dict], Any]) -> list[list]:
    """Runs of consecutive epochs with one ``key`` value: [value, first epoch, last epoch] each."""
    spans: list[list] = []
    for h in history:
        k = key(h)
        if spans and spans[-1][0] == k:
            spans[-1][2] = h["epoch"]
        else:
            spans.append([k, h["epoch"], h["epoch"]])
    return spans


def _compute(args: dict, history: list[dict]) -> str:
    """The card's compute precision and intra-op threads: the run's, or per span of epochs when a resume changed them
    (epochs recorded before threads were kept per epoch say none)."""
    every = all(h.get("threads") is not None for h in history)  # threads unrecorded in some epochs: no change can be said
    spans = _epoch_spans(history, lambda h: (h.get("amp", args.get("amp", "fp32")), h.get("threads") if every else None))

    def said(key: tuple) -> str:
        amp, threads = key
        return amp + (" autocast (weights and optimizer fp32)" if amp != "fp32" else "") + (
            f" on {threads} thread{'s' if threads != 1 else ''}" if threads else "")

    if len(spans) <= 1:
        return said(spans[0][0] if spans else (args.get("amp", "fp32"), None))
    return ", ".join(f"{said(k)} in epochs {i}-{j}" if i != j else f"{said(k)} in epoch {i}" for k, i, j in spans) + (
        " (changed on resume: a rerun with one setting throughout will not give bit-identical weights)")


def _environment_lines(history: list[dict]) -> list[str]:
    """The card's environment: the code revision, torch, Python and CPU each epoch recorded, per span of epochs."""
    spans = _epoch_spans(history, lambda h: h.get("environment"))
    if not spans or all(not isinstance(env, dict) for env, _, _ in spans):
        return ["- Environment: not recorded (the run predates per-epoch records); a bit-identical rerun needs the same code, "
                "torch build, CPU and threads."]
    said = [(environment_line(env) if isinstance(env, dict) else "not recorded") for env, _, _ in spans]
    if len(spans) == 1:
        return [f"- Environment: {said[0]}. A bit-identical rerun needs the same (float kernels differ across CPUs, thread "
                "counts and library builds)."]
    changed = all(isinstance(env, dict) for env, _, _ in spans)  # else a resume of a run from before these records
    return [f"- Environment ({'changed on resume' if changed else 'recorded from a resume on'}; a bit-identical rerun needs "
            "each):"] + [
        f"  - epochs {i}-{j}: {s}" if i != j else f"  - epoch {i}: {s}" for s, (_, i, j) in zip(said, spans)]


def exit_gains(top1: Sequence[float]) -> list[float]:
    """Points gained from each exit to the next, between the figures as shown (two decimals): the card's 33.33 -> 66.67
    had said +33.33 where the terminal, from the rounded figures, said 33.34."""
    shown = [round(float(v), 2) for v in top1]
    return [round(b - a, 2) for a, b in zip(shown, shown[1:])]


def publish_command(run: str, out: str, card: Optional[str], data: Optional[str], threshold_n: int,
                    eval_data: Optional[str], notes: Sequence[str] = ()) -> str:
    """The ``python -m dvt_edge.model_card`` command that writes this file and card (every argument, quoted)."""
    parts = ["python -m dvt_edge.model_card", "--run", run, "--out", out]
    for flag, v in (("--card", card), ("--data", data), ("--eval-data", eval_data)):
        if v:
            parts += [flag, v]
    parts += ["--threshold-n", str(threshold_n)]
    return " ".join(quote_arg(p) if i else p for i, p in enumerate(parts)) + (
        f" (and the {len(notes)} --note line(s) under Notes)" if notes else "")


def publish_run(run: str, out: str, card: Optional[str] = None, data: Optional[str] = None,
                threshold_n: int = 5000, progress: bool = True, eval_data: Optional[str] = None,
                notes: Sequence[str] = (), force: bool = False) -> dict:
    """Final checkpoint of ``run`` -> weights-only ``out`` + evaluation + model card. Returns the evaluation.
    An existing ``out`` is replaced only with ``force``.

    Nothing at ``out`` (or its card) changes unless the evaluation succeeds: the checkpoint is written to a
    temporary file beside it, evaluated there, and only then moved into place with its card."""
    from dvt_edge.evaluate import evaluate_checkpoint, plot_report

    run_dir, out_path = Path(run), Path(out)
    if isinstance(threshold_n, bool) or not isinstance(threshold_n, int) or threshold_n < 1:
        raise ValueError(f"threshold_n (--threshold-n) must be a whole number >= 1 (training images to choose thresholds on), got {threshold_n!r}")
    if out_path.resolve() in ((run_dir / "last.pt").resolve(), (run_dir / "best.pt").resolve()):
        raise ValueError(f"--out {out_path} is one of the run's own checkpoints (inside the run directory {run_dir}, with the "
                         "training state --resume needs); publish to another path, e.g. assets/NAME.pt")
    card_file = Path(card) if card else card_path(out_path)
    for what, p, example, fix in (("--out", out_path, "model.pt", "choose another path"),  # found now, not after the evaluation
                                  ("the model card", card_file, "MODEL_CARD.md", "pass --card PATH, or another --out")):
        check_out_path(p, what, example=example, fix=fix)  # first: exists() of a name over the limit raises OSError
    if out_path.exists() and not force:  # a published reference (and its card) is the user's: replaced only when asked
        raise ValueError(f"--out {out_path} exists; pass --force to replace it and its model card")
    if card_file.exists() and not force:  # another file's card, or the user's notes
        raise ValueError(f"the model card {card_file} exists; pass --force to replace it, or --card another path")
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last} not found: --run must be a training run directory (python -m dvt_edge.train --out RUN)")
    model, info = load_checkpoint(last)
    t = info.extras.get("train")
    if not t:
        raise CheckpointError(f"{last} holds no training state; pass the run directory written by python -m dvt_edge.train")
    if (run_dir / STARTED_OVER).is_file():  # --resume refuses it too: the checkpoints are those of a run the user started over
        raise CheckpointError(f"{run} was started over with --force and stopped before its first epoch ended: {last} is still the "
                              f"earlier run's. Start the new run again (its own flags and --force), or, to publish the earlier one, "
                              f"delete {run_dir / STARTED_OVER}")
    if t["epoch"] < t["epochs"]:
        raise CheckpointError(f"{run} stopped at epoch {t['epoch']} of {t['epochs']}; finish it with "
                              f"python -m dvt_edge.train --out {quote_arg(str(run))} --resume")
    args = json.loads(t["args"])
    history = json.loads(t["history"])
    if bad := _damaged_figures(history, t):  # a run stops before saving a NaN epoch: these were edited or damaged
        raise CheckpointError(f"{last}: its recorded training figures are not finite or out of range ({bad}); the card would print them: "
                              "publish an intact run")
    extra = {"eval_data": absolute_spec(eval_data)} if eval_data else {}  # a path absolute: from elsewhere it was another folder
    for flag, spec in (("--eval-data", eval_data), ("--data", data)):  # the card's figures would be in-sample
        if spec and (said := trained_on_val(spec, args.get("data")) or npz_in_sample(spec, args.get("data"))):
            raise CheckpointError(f"{flag} {spec}: {said}; give a set the run held out")
    steps = lineage(args, sha256=info.extras.get("finetune_sha256"))  # before anything is written: ``out`` may be the source itself
    if steps:
        extra["lineage"] = json.dumps(steps)
    if isinstance(info.extras.get("holdout"), dict):  # a held-out split drawn from a folder or an npz file: a changed one is still said
        extra["holdout"] = info.extras["holdout"]
    _remove_dead_publications(out_path, card_file)
    tmp = out_path.with_name(f".{short_name(out_path.stem, 40 + len(out_path.suffix))}.publishing-{os.getpid()}{out_path.suffix}")
    try:
        save_checkpoint(tmp, model, classes=info.classes, preprocess=info.preprocess, accuracies=info.accuracies,
                        data=args["data"], train_summary=json.dumps({"epoch": t["epoch"], "args": args}), **extra)
        with hold_lock(tmp):  # a clean-up in another PID namespace (a container) leaves it alone
            report = evaluate_checkpoint(str(tmp), data=data or args["data"], threshold_n=threshold_n, progress=progress)
            report["checkpoint"] = str(out_path)
            eval_dir = run_dir / "card_eval"
            eval_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(eval_dir / "evaluate.json", report)
            plot_report(report, eval_dir / "evaluate.png")
            cmd = publish_command(run, out, card, data, threshold_n, eval_data, notes)
            text = render_card(out_path, model, info, args, t, history, report, run_dir, steps, cmd, file=tmp)
            if notes:
                text += "\n## Notes\n\n" + "".join(f"- {n}\n" for n in notes)
            # only now, the card rendered from the very bytes: a failure above leaves the previous file and card as they were;
            # the card first, so that a checkpoint never stands without its own card
            card_file.parent.mkdir(parents=True, exist_ok=True)
            _install_pair(card_file, text.encode(), tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)  # our own temporary file, never the user's
    report["card"] = str(card_file)
    return report


def _install_pair(card_file: Path, card: bytes, tmp: Path, out_path: Path) -> None:
    """The card, then the checkpoint, each renamed into place; a failure or Ctrl-C before the checkpoint's rename took
    place puts the previous card back (a new card had stood beside the previous checkpoint, naming another file's
    SHA-256). Ctrl-C raised just after that rename keeps the new pair."""
    staged = atomic_write(card_file.with_name(f".{short_name(card_file.name, 40)}.publishing-{os.getpid()}"), card)
    previous = card_file.with_name(f".{short_name(card_file.name, 40)}.previous-{os.getpid()}")
    ours = os.stat(tmp)
    try:
        had = card_file.is_file()
        if had:  # the previous card's bytes, kept until the checkpoint is in place
            previous.unlink(missing_ok=True)
            try:
                os.link(card_file, previous)
            except OSError:  # a file system without hard links
                shutil.copy2(card_file, previous)
        dio.replace(staged, card_file)
        try:
            dio.replace(tmp, out_path)
        except BaseException:
            if not _same_file(out_path, ours):  # the checkpoint did not move: the previous pair, as it was
                if had:
                    dio.replace(previous, card_file)
                else:
                    card_file.unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
        previous.unlink(missing_ok=True)


def _same_file(path: Path, st: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def _remove_dead_publications(out_path: Path, card_file: Path) -> None:
    """Staging files that a killed ``model_card`` left beside ``out_path`` and its card (a checkpoint-sized one hidden):
    those of a process that does not run here and whose lock no live process holds."""
    from dvt_edge.export.install import _pid_alive

    pattern = [(out_path, f".{short_name(out_path.stem, 40 + len(out_path.suffix))}.publishing-", out_path.suffix)] + [
        (card_file, f".{short_name(card_file.name, 40)}.{kind}-", "") for kind in ("publishing", "previous")]
    for base, prefix, suffix in pattern:
        for p in base.parent.glob(f"{prefix}*{suffix}") if base.parent.is_dir() else []:
            pid = p.name[len(prefix): len(p.name) - len(suffix)]
            with claimed(p) as free:
                if pid.isdigit() and not _pid_alive(int(pid)) and free and p.is_file() and not p.is_symlink():
                    p.unlink()
                    print(f"note: removed {p.name}, left by an interrupted publication", file=sys.stderr)


def pareto_rows(report: dict) -> list[str]:
    """The card's rows of the FLOPs-budget curve's Pareto points, from an evaluate report."""
    return [f"| {p['mean_cost'] * 1e3:.2f} | {p['accuracy']:.2f} | {' / '.join(f'{100 * f:.0f}' for f in p['exit_fractions'])} |"
            for p in report["pareto"]]


def _objective(args: dict) -> str:
    return "the sum of every exit's cross-entropy" + (f", plus {args['distill']:g} x each earlier exit's KL divergence from the last "
                                                      f"exit's answer at temperature {args.get('distill_temp', 2.0):g} (self-distillation)"
                                                      if args.get("distill") else "")


def _command_lines(args: dict, run_dir: Path, steps: list[dict]) -> list[str]:
    if not steps:
        return ["- Command:", "", f"      {train_command(args, str(run_dir))}", ""]
    lines = [f"- Trained in {len(steps) + 1} steps, each fine-tuning the previous one's final epoch (`--finetune`):", ""]
    for i, (cmd, st) in enumerate(zip(step_commands(steps, args, str(run_dir)), [*steps, None])):
        acc = ""
        if st and st.get("accuracies"):
            acc = (f" (its final epoch: top-1 per exit {[round(a, 2) for a in st['accuracies']]} on the training run's validation split)"
                   if st.get("args") else f" (the file records top-1 per exit {[round(a, 2) for a in st['accuracies']]}, "
                   "measured by whoever trained it, on their data)")
        lines += [f"  {i + 1}. Step {i + 1}{acc}:", "", f"      {cmd}", ""]
    return lines


def _unregistered_line(model) -> list[str]:
    """For a variant dvt-edge does not register itself (a launcher script did): the registration the training command
    below needs in its own process (run as printed, it stops at an unknown model; evaluate, export and ``--finetune``
    rebuild the variant from the file)."""
    from dvt_edge.models import BUILTIN_MODELS, DVTConfig

    if model.name in BUILTIN_MODELS:
        return []
    base = DVTConfig().to_dict()
    diff = {k: v for k, v in model.cfg.to_dict().items() if v != base[k]}  # its differences from DVTConfig's defaults (Python literals)
    return [f"- `{model.name}` is not one of dvt-edge's own variants: the training command below needs it registered in the same "
            f"process, as the script that trained it did: `from dvt_edge.models import DVTConfig, register_model; "
            f"register_model({model.name!r}, DVTConfig.from_dict({diff!r}))`, then `dvt_edge.train.main([...])` with the command's "
            "arguments (evaluate, export and `--finetune` rebuild it from this file)."]


def _evaluate_command(path: Path, report: dict) -> str:
    return join_args(["python", "-m", "dvt_edge.evaluate", "--checkpoint", str(path), "--data", report["data"], "--threshold-n",
                       str(report.get("threshold_n", 5000))])


def render_card(path: Path, model, info, args: dict, t: dict, history: list[dict], report: dict, run_dir: Path,
                steps: Optional[list[dict]] = None, command: Optional[str] = None, file: Optional[Path] = None) -> str:
    """The model card of the checkpoint published at ``path`` (its bytes read from ``file``, default ``path``)."""
    from dvt_edge.evaluate import per_class_markdown, small_sample_note

    file, c, n_params = Path(file or path), model.cfg, sum(p.numel() for p in model.parameters())
    grids = " / ".join(f"{g}x{g}" for g in c.grids)
    top1 = [e["top1"] for e in report["exits"]]
    gains = exit_gains(top1)
    epoch_s = sum(h.get("epoch_seconds", 0.0) for h in history)
    wall = (f"{t['run_seconds'] / 60:.1f} min for the whole run (training and per-epoch evaluation); {epoch_s / 60:.1f} min of it in "
            "training epochs" if t.get("run_seconds") else
            f"{epoch_s / 60:.1f} min in training epochs (sum of the per-epoch times below; per-epoch evaluation not included)")
    resumed = " The run was resumed at least once (`--resume` restores optimizer, scheduler, data order and RNG)." if args.get("resume") else ""
    pre, few = info.preprocess, small_sample_note(report["n"])
    lines = [
        f"# Model card: {_code(path.name)}",
        "",
        f"Written by {_code(command or join_args(['python', '-m', 'dvt_edge.model_card', '--run', str(run_dir), '--out', str(path)]))} from the run's final epoch",
        "(no model selection on the evaluation split). Every figure below was measured by that command",
        "or recorded by the training run.",
        "", "## Model",
        f"- Registry name `{model.name}`: {c.num_exits} exits over {grids} token grids, embed {c.embed_dim}, depth "
        f"{' / '.join(map(str, c.stage_depths)) if c.stage_depths else c.depth}, "
        f"{c.num_heads} heads, MLP ratio {c.mlp_ratio:g}, `{c.tokenizer}` tokenizer per stage "
        f"(splits (kernel, stride, padding) {list(c.splits)}), {c.pos_embed} position embeddings, "
        f"feature reuse and relation reuse between stages (reuse resize via {list(c.reuse_upsample[1:])})"
        + (f"; {' / '.join(map(str, c.stem_blocks))} conv blocks in the stems" if c.stem_blocks else "")
        + (f"; stage inputs area-resized to {' / '.join(f'{r}px' for r in c.stage_img_sizes)} inside each stage's graph" if c.stage_img_sizes else "")
        + ".",
        f"- {n_params / 1e6:.2f} M parameters; file {file.stat().st_size / 1e6:.2f} MB (fp32 weights, no optimizer state); "
        f"SHA-256 `{sha256_file(file)}`.",
        *_unregistered_line(model),
    ]
    if pre is not None:
        lines.append(f"- Preprocessing (stored in the checkpoint and every exported manifest): {pre.channels}, {pre.size}x{pre.size}, "
                     f"mean {list(pre.mean)}, std {list(pre.std)}, {pre.interpolation} resize, {pre.layout}.")
    lines += [
        "", "## Training",
        f"- Data: {_code(str(args['data']))} training split; objective: {_objective(args)}.",
        f"- AdamW (lr {args['lr']:g}, weight decay {args['weight_decay']:g}), {args['warmup_epochs']:g} warmup epoch(s) then cosine, "
        f"batch {args['batch_size']} per process, stochastic depth {args['drop_path'] if args['drop_path'] is not None else c.drop_path_rate:g}, "
        f"label smoothing {args['label_smoothing']:g}, augmentation {'off' if args['no_augment'] else 'random translation' + ('' if args['no_flip'] else ' + horizontal flip')}; "
        f"seed {args['seed']}; {t['epochs']} epochs; compute {_compute(args, history)}.",
        *_command_lines(args, run_dir, steps or []), *_environment_lines(history),
        f"- Wall time{' of the last step' if steps else ''}: {wall}.{resumed}",
        "",
        f"## Results ({_code(_evaluate_command(path, report))})",
        f"{report['data']} {report['split']} split, {report['n']} images, PyTorch fp32:",
        *([f"{few[0].upper()}{few[1:]}."] if few else []),
        "",
        "| exit | tokens | cumulative MFLOPs (MACs) | top-1 % | gain over previous exit |",
        "|---|---|---|---|---|",
    ]
    for i, e in enumerate(report["exits"]):
        gain = f"+{gains[i - 1]:.2f}" if i and gains[i - 1] >= 0 else (f"{gains[i - 1]:.2f}" if i else "")
        lines.append(f"| {e['exit']} | {e['grid']} | {e['gflops'] * 1e3:.2f} | {e['top1']:.2f} | {gain} |")
    lines += [
        "", "FLOPs are counted by torch's flop counter on each stage's graph (`python -m dvt_edge.zoo`).",
        "",
        f"FLOPs-budget curve (the authors' exit-distribution procedure, thresholds from {report['threshold_selection']}), Pareto points:",
        "",
        "| expected MFLOPs | top-1 % | exits taken (%) |",
        "|---|---|---|",
    ]
    lines += pareto_rows(report) + per_class_markdown(report)
    lines += [
        "",
        "## Per-epoch validation accuracy (recorded by the run at each epoch)",
        "",
        "| epoch | train loss | " + " | ".join(f"exit {i + 1}" for i in range(c.num_exits)) + " | seconds |",
        "|---|---|" + "---|" * c.num_exits + "---|",
    ]
    for h in history:
        accs = " | ".join(f"{a:.2f}" for a in h["val_acc"])
        lines.append(f"| {h['epoch']} | {h['train_loss']:.3f} | {accs} | {h.get('epoch_seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = Parser(prog=command_name("python -m dvt_edge.model_card"), description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="finished training run directory (holds last.pt)")
    ap.add_argument("--out", required=True, help="checkpoint to write (weights only)")
    ap.add_argument("--force", action="store_true", help="replace --out (and its card) if it exists")
    ap.add_argument("--card", default=None, help="model card path (default: MODEL_CARD_<name>.md beside --out)")
    ap.add_argument("--data", default=None, help="evaluation dataset spec (default: the run's)")
    ap.add_argument("--threshold-n", type=int, default=5000, help="training images for the budget curve's thresholds (default 5000)")
    ap.add_argument("--eval-data", default=None, help="data spec recorded as the checkpoint's portable evaluation set (e.g. cifar10-ref)")
    ap.add_argument("--note", action="append", default=[], help="a line for the card's Notes (repeatable), e.g. what else ran meanwhile")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP + " (the card's evaluation)")
    args = ap.parse_args(argv)
    try:
        set_torch_threads(args.threads)
        r = publish_run(args.run, args.out, args.card, args.data, args.threshold_n, eval_data=args.eval_data, notes=args.note,
                        force=args.force, progress=not args.no_progress)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    top1 = [round(e["top1"], 2) for e in r["exits"]]
    print(f"wrote {args.out} and {r['card']}; per-exit top-1 {top1}, gains {exit_gains(top1)}")
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
