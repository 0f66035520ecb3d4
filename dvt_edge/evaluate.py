"""Evaluate a DVT checkpoint: per-exit top-1, cumulative FLOPs, and the FLOPs-budget curve.

    python -m dvt_edge.evaluate --checkpoint runs/ref/best.pt --data fashion-mnist

The budget curve follows the authors' procedure: for each of 59 exit distributions
(q = p/20, p = 1..59; exit e gets a share proportional to q**e) thresholds are set on a
threshold-selection set so that those shares of its samples leave at each exit; the
thresholds are then applied to the evaluation split, giving accuracy vs expected GFLOPs.
The threshold-selection set is drawn from the training split, as in the authors' code (their
``inference.py``, ``--eval_mode 2``, sets thresholds on the logits of its training loader), never
from the evaluation split; unlike theirs, its images are preprocessed as the scored ones are (their loader's
``RandomResizedCrop`` and flips, over 50,000 images, give other confidences, so other thresholds). A checkpoint that
carries the authors' ``dynamic_threshold`` rows also gets them scored as stored (their ``--eval_mode 1``).
Writes ``evaluate.json`` and ``evaluate.png``.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.batches import evaluate_exits
from dvt_edge.checkpoint import CheckpointError, load_checkpoint
from dvt_edge.data import (
    DATASETS,
    DataError,
    data_for_checkpoint,
    default_preprocess,
    npz_read_whole,
    recorded_train_args,
    same_data,
    scoring_set,
)
from dvt_edge.logs import pyplot
from dvt_edge.provenance import THREADS_HELP, environment, set_torch_threads
from dvt_runtime.checks import FEW_IMAGES, numbered
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import join_args, quote_arg, shown, silenced_progress
from dvt_runtime.io import atomic_write_json, check_result_files, os_error_text, save_png, sha256_file
from dvt_runtime.search import ExitOutputs, StageCosts, evaluate_thresholds, pareto_frontier, sweep_thresholds
from dvt_runtime.stats import accuracy_interval

SCHEMA = "dvt-edge/evaluate/1"
THRESHOLD_SEED = 1  # the seeded subset of training images the budget curve's thresholds are chosen on


def _whose(trained: dict, data: str, whole: int) -> str:
    """Whose training images ``data``'s training split is, by the run arguments a checkpoint records."""
    if not trained.get("data"):
        return "the checkpoint records no training data"
    if trained["data"] == "cifar10-jpeg" and data == "cifar10-ref":  # the shipped set's train split is the reference's own images
        return "cifar10-ref's train split is 1,000 of the images the reference trained on (cifar10-jpeg)"
    if not same_data(trained["data"], data):
        return f"the checkpoint records training on {trained['data']}, not {data}"
    limit = trained.get("train_limit")
    return f"the model trained on a random {limit} of the {whole}" if limit and limit < whole else "the model trained on them"


def evaluate_checkpoint(
    checkpoint: str,
    data: Optional[str] = None,
    split: str = "val",
    model_name: Optional[str] = None,
    limit: Optional[int] = None,
    threshold_n: int = 5000,
    n_budgets: int = 59,
    trusted: bool = False,
    progress: bool = True,
    bundles: Sequence[str] = (),
) -> dict:
    if isinstance(threshold_n, bool) or not isinstance(threshold_n, int) or threshold_n < 1:
        raise ValueError(f"threshold_n (--threshold-n) must be a whole number >= 1 (training images to choose thresholds on), got {threshold_n!r}")
    model, info = load_checkpoint(checkpoint, model=model_name, trusted=trusted)
    data, data_note = data_for_checkpoint(data, model.name, info.extras, model.cfg, split)
    pre = info.preprocess or default_preprocess(model.cfg.in_chans, model.cfg.img_size)
    ds = scoring_set(data, split, pre, model.cfg.num_classes, info.classes, "score", limit=limit, checkpoint=checkpoint,
                     stand_in=data_note)
    opened: list = []  # per --bundles, in order: an open bundle, or a "not scored" row; said before the work
    for bd in bundles:
        try:
            opened.append(open_bundle(bd, checkpoint, ds.classes))
        except CannotRunHere as e:  # e.g. Core ML off macOS beside an ONNX bundle: the others are still scored
            opened.append({"bundle": str(bd), "status": str(e)})
    not_here = [o["status"] for o in opened if isinstance(o, dict)]
    if not_here and len(not_here) == len(opened):
        raise ValueError("; ".join(not_here))
    for why in not_here:
        print(f"warning: {why}: not scored", file=sys.stderr)
    acc, test_out = evaluate_exits(model, ds, progress=progress, desc=f"evaluate {split} ({len(ds)} images)")
    flops = [e.gflops for e in model.exits]
    costs = StageCosts.from_cumulative(flops, unit="GFLOPs")

    # thresholds chosen on training images, as the authors' procedure does (their training loader's logits,
    # images the model trained on; the note says so)
    try:
        sel = scoring_set(data, "train", pre, model.cfg.num_classes, info.classes, "choose thresholds for", limit=threshold_n,
                          seed=THRESHOLD_SEED)
        _, sel_out = evaluate_exits(model, sel, progress=progress, desc=f"threshold images ({len(sel)} of train)")
        sel_note = f"{len(sel)} training images (seeded; {_whose(recorded_train_args(info.extras), data, sel.whole)})"
        if _one_set(data, ds.split):  # the curve is scored on the images its thresholds were chosen on: said, not hidden
            why = "the train split is the one scored" if ds.split == "train" else f"{data} holds one set for both splits"
            sel_note = f"{len(sel)} of the scored images themselves (seeded; {why}): an optimistic curve"
    except DataError as e:  # no usable training split: say why, in the report itself
        sel_out, sel_note = test_out, f"the evaluation split itself (training split unavailable: {str(e)[:200]})"
    curve = [evaluate_thresholds(test_out, None, t, costs) for t in sweep_thresholds(sel_out, n_budgets)]
    stored, stored_note = _stored_curve(info.thresholds, model.num_exits, test_out, costs)  # the file's own rows, as the authors score
    arrays = ds.arrays(progress=progress) if bundles else None  # preprocess once for every bundle
    artifacts = [b if isinstance(b, dict) else artifact_accuracy(b, *arrays, acc) for b in opened]
    frontier = pareto_frontier(curve)
    return {
        "schema": SCHEMA, "schema_version": 1,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "limit": limit,  # a seeded (seed 0), class-stratified subset of the split; None: all of it
        "model": model.name,
        "data": data,
        "data_note": data_note,  # "" unless another set stood in for the checkpoint's own
        "split": ds.split,
        "n": len(ds), "unreadable_images": len(ds.skipped), "unreadable_files": list(ds.skipped[:100]),  # scored; left out (first 100)
        "threshold_selection": sel_note,
        "threshold_n": threshold_n,  # as asked (the command); threshold_images: how many there were
        "threshold_images": len(sel_out.labels),
        "threshold_seed": THRESHOLD_SEED, "environment": environment(_torch_threads()),  # threshold images' subset seed (limit's: 0); code, torch, CPU
        "exits": [
            {"exit": e.index + 1, "grid": f"{e.grid}x{e.grid}", "tokens": e.tokens, "gflops": e.gflops, "top1": a,
             "top1_ci95": list(accuracy_interval(a, len(ds)))}  # Wilson 95%: where the exit's own accuracy lies
            for e, a in zip(model.exits, acc)
        ],
        "budget_curve": [c.to_dict() for c in curve],
        "checkpoint_thresholds_curve": [c.to_dict() for c in stored],  # its dynamic_threshold rows as stored ([] without)
        "checkpoint_thresholds_note": stored_note,  # rows left out, and why ("" when none)
        "pareto": [c.to_dict() for c in frontier],
        "checkpoint_accuracies": info.accuracies, "per_class": per_class(test_out.predictions, ds.labels, list(ds.classes), model.cfg.num_classes),
        "artifacts": artifacts,
    }


def _torch_threads() -> int:
    """The intra-op threads the scores were computed with (``--threads``, or torch's default): recorded with them."""
    import torch

    return torch.get_num_threads()


MAX_CONFUSION = 100  # classes up to which the last exit's confusion matrix is kept (ImageNet's would be a million cells)


def per_class(pred: np.ndarray, labels: np.ndarray, classes: list[str], num_classes: Optional[int] = None) -> dict:
    """Per-class figures of every exit (``pred``: (E, N) predicted classes): each class's recall and how often it is
    predicted, and the last exit's confusion matrix (rows: true class, columns: predicted). On unbalanced data overall
    top-1 hid an early exit that never answered the rare class. ``num_classes``: the model's (default: as many as names)."""
    (n_exits, n), c = pred.shape, num_classes or len(classes)
    support = np.bincount(labels, minlength=c)
    recall = [[float(100 * np.mean(pred[e][labels == k] == k)) if support[k] else None for k in range(c)] for e in range(n_exits)]
    conf = np.zeros((c, c), np.int64)
    np.add.at(conf, (labels, pred[-1]), 1)
    return {"classes": classes, "support": support.tolist(), "recall": recall,
            "predicted_pct": [(100 * np.bincount(pred[e], minlength=c) / max(n, 1)).tolist() for e in range(n_exits)],
            "confusion_last_exit": conf.tolist() if c <= MAX_CONFUSION else None}


def _class_order(pc: dict, most: int) -> tuple[list[int], str]:
    """The classes the images hold, or the ``most`` with the lowest last-exit recall when there are more; and a heading."""
    rec, sup, names = pc["recall"], pc["support"], pc["classes"]
    held = [k for k in range(len(names)) if sup[k]]
    if len(names) <= most:
        return held, "per class"
    return sorted(held, key=lambda k: rec[-1][k])[:most], f"the {min(most, len(held))} classes of {len(names)} with the lowest last-exit recall"


def _never_notes(pc: dict) -> list[str]:
    """A note for every exit that never predicts a class the images hold."""
    out = []
    for e, share in enumerate(pc["predicted_pct"]):
        never = [shown(pc["classes"][k]) for k in range(len(share)) if pc["support"][k] and share[k] == 0]
        if never:
            out.append(f"note: exit {e + 1} never predicts {', '.join(never[:5])}{' ...' if len(never) > 5 else ''} (on these images): "
                       "a cascade stopping there never answers it; see per_class in the JSON (for unbalanced training data: train "
                       "with --class-weight balanced)")
    return out


def per_class_lines(pc: dict, most: int = 20) -> list[str]:
    """The per-class table for the terminal, and the never-predicted notes."""
    order, head = _class_order(pc, most)
    names = [shown(c) for c in pc["classes"]]  # a data file's names: escape sequences printed, not run
    width = min(24, max((len(names[k]) for k in order), default=5))
    lines = ["", f"{head} (recall % at each exit alone; n images):"]
    lines += [f"  {str(names[k])[:width]:<{width}}  n {pc['support'][k]:>5}  " + " / ".join(f"{r[k]:6.2f}" for r in pc["recall"]) for k in order]
    return lines + _never_notes(pc)


def per_class_markdown(report: dict, most: int = 20) -> list[str]:
    """The per-class table for a model card (its class names, images per class and each exit's recall), and the notes."""
    pc = report.get("per_class")
    if not pc:
        return []
    order, head = _class_order(pc, most)
    exits = len(pc["recall"])
    lines = ["", f"{head[0].upper()}{head[1:]} (recall % of each exit alone on the {report['split']} split; n images):", "",
             "| class | n | " + " | ".join(f"exit {e + 1}" for e in range(exits)) + " |", "|---|---|" + "---|" * exits]
    lines += [f"| {str(pc['classes'][k]).replace('|', '/')} | {pc['support'][k]} | " + " | ".join(f"{r[k]:.2f}" for r in pc["recall"]) + " |"
              for k in order]
    notes = _never_notes(pc)
    return lines + (["", *(n.replace("note: ", "Note: ").replace("; see per_class in the JSON", ".") for n in notes)] if notes else [])


def _stored_curve(rows, n_exits: int, out: ExitOutputs, costs: StageCosts) -> tuple[list, str]:
    """A checkpoint's ``dynamic_threshold`` rows (budgets x exits; 1e8 or inf never stops, -1e8 or -inf always does)
    scored on ``out``, as the authors' ``--eval_mode 1`` does, and a note of the rows left out and why ("" when none)."""
    if rows is None:
        return [], ""
    if rows.ndim != 2 or rows.shape[1] != n_exits:
        return [], f"its dynamic_threshold, of shape {tuple(rows.shape)}, is not (budgets, {n_exits} exits): not scored"
    rows = rows.double().numpy()
    keep = [r for r in rows if not np.isnan(r[:-1]).any()]
    curve = [evaluate_thresholds(out, None, [float(v) for v in r[:-1]], costs) for r in keep]
    return curve, (f"{len(rows) - len(keep)} of its {len(rows)} dynamic_threshold rows hold NaN: left out" if len(keep) < len(rows) else "")


class CannotRunHere(ValueError):
    """A bundle whose backend does not run on this host (Core ML off macOS, a backend not installed)."""


def open_bundle(bundle_dir: str, checkpoint: Optional[str] = None, classes: Optional[list[str]] = None):
    """An exported bundle to score beside its checkpoint, opened before any work: with ``checkpoint``, it must have
    been exported from that very file (else the deltas compare two models); with ``classes``, it must name them."""
    from dvt_runtime.backends import BackendUnavailable
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.io import sha256_file

    try:
        b = Bundle.open(bundle_dir, threads=1, device_name="")
    except BackendUnavailable as e:  # e.g. a Core ML bundle off macOS
        raise CannotRunHere(f"bundle {bundle_dir} cannot run here: {e}") from None
    src = b.manifest.source or {}
    if checkpoint is not None and src.get("sha256") != sha256_file(checkpoint):
        raise ValueError(f"bundle {bundle_dir} was exported from {src.get('checkpoint')!r}, not from {checkpoint} (SHA-256 differs): "
                         f"its accuracy cannot be compared with this checkpoint's; export it with python -m dvt_edge.export "
                         f"--checkpoint {quote_arg(str(checkpoint))}")
    if classes is not None and b.classes and not numbered(classes) and not numbered(b.classes) and list(b.classes) != list(classes):
        raise ValueError(f"bundle {bundle_dir} names other classes ({b.classes[:3]}...) than the evaluation data ({classes[:3]}...)")
    return b


def artifact_accuracy(b, x: np.ndarray, y: np.ndarray, torch_acc: list[float]) -> dict:
    """Per-exit top-1 of an exported bundle's own artifacts (chained exits, an :func:`open_bundle`) on preprocessed images."""
    logits = b.run_exits(x)
    acc = [float((lg.argmax(-1) == y).mean() * 100) for lg in logits]
    m = b.manifest
    return {"bundle": str(b.path), "target": m.target, "precision": m.precision,
            "schemes": [e.quantization.get("scheme") for e in m.exits], "top1": acc,
            "delta_vs_pytorch_fp32": [a - t for a, t in zip(acc, torch_acc)]}


def small_sample_note(n: int) -> str:
    """A note for accuracies scored on fewer than ``FEW_IMAGES`` images (evaluate's report, the model card), else ''."""
    return (f"note: only {n} images: each is {100 / max(n, 1):.2g} points of accuracy, so these figures are rough (score at least "
            f"{FEW_IMAGES})") if n < FEW_IMAGES else ""


def format_report(r: dict) -> str:
    few = small_sample_note(r["n"])
    skipped = f" ({r['unreadable_images']} unreadable left out: unreadable_files in evaluate.json)" if r.get("unreadable_images") else ""
    lines = [f"{r['model']} on {r['data']} [{r['split']}], {r['n']} images{skipped}", *([f"note: {r['data_note']}"] if r.get("data_note") else []),
             *([few] if few else []), "", f"{'exit':>4}  {'tokens':>7}  {'cum. GFLOPs':>12}  {'top-1 %':>8}  95% interval"]
    for e in r["exits"]:
        ci = "  {:.2f}-{:.2f}".format(*e["top1_ci95"]) if e.get("top1_ci95") else ""
        lines.append(f"{e['exit']:>4}  {e['grid']:>7}  {e['gflops']:>12.4f}  {e['top1']:>8.2f}{ci}")
    lines += ["", f"FLOPs-budget curve ({len(r['budget_curve'])} budgets, thresholds from {r['threshold_selection']}); Pareto points:",
              f"{'exp. GFLOPs':>12}  {'top-1 %':>8}  exits taken (%)"]
    for p in r["pareto"]:
        frac = " / ".join(f"{100 * f:.0f}" for f in p["exit_fractions"])
        lines.append(f"{p['mean_cost']:>12.4f}  {p['accuracy']:>8.2f}  {frac}")
    if r.get("per_class"):
        lines += per_class_lines(r["per_class"])
    if stored := r.get("checkpoint_thresholds_curve"):  # the authors' own thresholds, as the file carries them
        best = max(stored, key=lambda p: p["accuracy"])
        lines += ["", f"the checkpoint's dynamic_threshold rows ({len(stored)}), scored here: {min(p['mean_cost'] for p in stored):.4f} to "
                      f"{max(p['mean_cost'] for p in stored):.4f} exp. GFLOPs; best {best['accuracy']:.2f}% at {best['mean_cost']:.4f}"]
    if r.get("checkpoint_thresholds_note"):
        lines.append(f"note: {r['checkpoint_thresholds_note']}")
    if r.get("artifacts"):
        lines += ["", f"exported artifacts on the same {r['n']} images (top-1 %, delta vs PyTorch fp32 in points):"]
        for a in r["artifacts"]:
            if "top1" not in a:  # not scored (its backend does not run here)
                lines.append(f"  not scored: {a['status']}")
                continue
            cells = "  ".join(f"exit {i + 1} {t:.2f} ({d:+.2f})" for i, (t, d) in enumerate(zip(a["top1"], a["delta_vs_pytorch_fp32"])))
            lines.append(f"  {a['target']:<10} {a['precision']:<5} {cells}   [{Path(a['bundle']).name}]")
    return "\n".join(lines)


def plot_report(r: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    c = sorted(r["budget_curve"], key=lambda p: p["mean_cost"])
    ax.plot([p["mean_cost"] for p in c], [p["accuracy"] for p in c], "-", color="tab:blue", alpha=0.8,
            label="dynamic (thresholds chosen on training images)")
    if stored := sorted(r.get("checkpoint_thresholds_curve") or [], key=lambda p: p["mean_cost"]):
        ax.plot([p["mean_cost"] for p in stored], [p["accuracy"] for p in stored], "--", color="tab:green", alpha=0.8,
                label="dynamic (the checkpoint's dynamic_threshold rows)")
    ax.plot([e["gflops"] for e in r["exits"]], [e["top1"] for e in r["exits"]], "s", color="tab:red", label="each exit alone")
    for e in r["exits"]:
        ax.annotate(f"exit {e['exit']} ({e['grid']})", (e["gflops"], e["top1"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("expected GFLOPs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{r['model']}: accuracy vs FLOPs budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", framealpha=0.85)
    fig.tight_layout()
    save_png(fig, path)


#: checkpoint file names every training run writes: not a name for its evaluation on their own
RUN_FILE_NAMES = ("best", "last", "checkpoint", "model", "model_best")


def _one_set(data: str, split: str) -> bool:
    """Whether ``data``'s training split is the scored ``split`` itself: the train split scored, or an npz whose file
    names no split (read whole as either)."""
    return split == "train" or npz_read_whole(data)


def default_out(checkpoint: str) -> Path:
    """``runs/evaluate/<name>``: the file's name, with its run folder's in front for a run's best.pt or last.pt (every run's
    best.pt was evaluated into runs/evaluate/best, the last one replacing the others)."""
    p = Path(checkpoint)
    name = p.name
    for suffix in (".tar", ".pth", ".pt", ".ckpt", ".bin"):  # model.v1.pt and model.v2.pt stay apart; model_best.pth.tar -> model_best
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    name = name.lstrip(".") or "checkpoint"  # never a hidden folder (a file named .pt)
    return Path("runs") / "evaluate" / (f"{p.resolve().parent.name}-{name}" if name.lower() in RUN_FILE_NAMES else name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = Parser(prog=command_name("python -m dvt_edge.evaluate"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--checkpoint", required=True, help="the checkpoint to evaluate (ours, or a published DVT .pth.tar)")
    ap.add_argument("--model", default=None, help="registered model name (published checkpoints: inferred when omitted)")
    ap.add_argument("--data", default=None, help=f"dataset spec: {', '.join(DATASETS)} (default: the checkpoint's evaluation set)")
    ap.add_argument("--split", default="val", help="evaluation split (default val: Fashion-MNIST's test split, the held-out images of an image folder)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N images")
    ap.add_argument("--threshold-n", type=int, default=5000, help="training images for threshold selection (seeded; the model trained on them; default 5000)")
    ap.add_argument("--bundles", nargs="*", default=[], help="exported bundles to evaluate on the same images (per-exit top-1 vs PyTorch)")
    ap.add_argument("--out", default=None, help="output directory (default: runs/evaluate/<checkpoint name> under the current "
                                                 "folder, not beside the checkpoint; <run folder>-best for a run's best.pt)")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling (only for files you trust)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (as TQDM_DISABLE=1)")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if out.exists() and not out.is_dir():  # checked before the work, not after it
        print(f"error: --out {out} is a file; pass a folder", file=sys.stderr)
        return 2
    try:
        set_torch_threads(args.threads)
        check_result_files(out / "evaluate.json", SCHEMA.rsplit("/", 1)[0] + "/", [out / "evaluate.png"], fix="pass another --out folder")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with silenced_progress(args.no_progress):
            r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.model, args.limit, args.threshold_n,
                                    trusted=args.trust_checkpoint, bundles=args.bundles)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    r["command"] = f"python -m dvt_edge.evaluate {join_args(sys.argv[1:] if argv is None else argv)}"
    try:
        atomic_write_json(out / "evaluate.json", r)
        plot_report(r, out / "evaluate.png")
    except OSError as e:  # e.g. the disk filled meanwhile
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    print(format_report(r))
    print(f"\nwrote {out / 'evaluate.json'} and {out / 'evaluate.png'}")
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
