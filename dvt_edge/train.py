"""Multi-exit DVT training: sum of every exit's cross-entropy, AdamW, warmup + cosine.

    python -m dvt_edge.train --model dvt_tiny_fmnist_ms --data fashion-mnist --epochs 20 --out runs/ref
    torchrun --nproc_per_node 2 -m dvt_edge.train ...      # DDP (gloo on CPU, nccl on GPU)

Writes ``OUT/last.pt`` (with optimizer/scheduler/RNG state, for ``--resume``),
``OUT/best.pt`` (best last-exit validation accuracy), ``OUT/metrics.json`` and
``OUT/metrics.png`` (per-exit accuracy over epochs). Checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dvt_edge import batches as _batches
from dvt_edge import checkpoint as _checkpoint
from dvt_edge import data as _data
from dvt_edge.batches import augment, batches, epoch_shard, eval_batch_size, evaluate_exits, gather_rng_states, materialize, set_rng_state
from dvt_edge.checkpoint import CheckpointError, _state_dict_of, checkpoint_model_name, read_checkpoint, save_checkpoint
from dvt_edge.data import DATASETS, DataError, ImageSet, default_preprocess, default_train_data, load_dataset
from dvt_edge.logs import pyplot
from dvt_edge.models import DVT, create_model, list_models, model_defaults, model_from_args
from dvt_edge.provenance import THREADS_HELP, code_changes, code_revision, environment
from dvt_edge.resume import METRICS_SCHEMA, agreed, check_room, resume_hint, resume_run, resumed_differently, run_lock, started_over
from dvt_edge.transfer import carry_head_rows, transfer_weights
from dvt_runtime.cli import DocFormatter, GivenParser, command_name
from dvt_runtime.console import progress as progress_bar
from dvt_runtime.console import run_cli, silenced_progress
from dvt_runtime.io import atomic_write_json, os_error_text, save_png, sha256_file
from dvt_runtime.preprocess import Preprocess

AMP_CHOICES = ("fp32", "bf16")
DEFAULT_MODEL = "dvt_tiny_fmnist_ms"  # --model without --finetune or --resume, for grayscale data (and no --data)
COLOR_MODEL = "dvt_small_cifar"  # --model for colour --data
COLOR_REFERENCE = Path(__file__).parent / "assets" / "dvt_small_cifar.pt"  # where the package is: any working directory

__all__ = ["train", "evaluate_exits", "main", "build_parser"]


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float = 0.01):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _plot_metrics(history: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for e in range(len(history[0]["val_acc"])):
        ax.plot(epochs, [h["val_acc"][e] for h in history], marker="o", label=f"exit {e + 1}")
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="per-exit validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


BATCH_224 = 32  # --batch-size of a 224 px model when none is given (the default 128 is the 28-32 px models')
FINETUNE_LR = 5e-4  # --lr of a --finetune run when none is given (the default 1e-3 is a run from scratch's)


def build_parser() -> argparse.ArgumentParser:
    ap = GivenParser(prog=command_name("python -m dvt_edge.train"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--model", default=None, help="registered model (default: --finetune's or --resume's architecture, else "
                    f"{COLOR_MODEL} for colour --data, {DEFAULT_MODEL} for grayscale): {', '.join(list_models())}")
    ap.add_argument("--data", default=None, help="dataset spec (default: the model's training set, cifar10-jpeg for dvt_small_cifar, "
                                                 f"fashion-mnist for the *_fmnist models): {', '.join(DATASETS)}")
    ap.add_argument("--epochs", type=int, default=20, help="default 20")
    ap.add_argument("--out", required=True, help="run directory (checkpoints, metrics)")
    ap.add_argument("--batch-size", type=int, default=128, help=f"per process (default 128; {BATCH_224} for a 224 px model)")
    ap.add_argument("--lr", type=float, default=1e-3, help=f"peak learning rate of the cosine schedule (default 1e-3; {FINETUNE_LR:g} with --finetune)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    ap.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, in epochs (default 1)")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="default 0")
    ap.add_argument("--class-weight", choices=_batches.CLASS_WEIGHTS, default="none", help="balanced: each class's cross-entropy weighs n / "
                    "(classes x its training images), for unbalanced data; the weights are logged (default none)")
    ap.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the model's)")
    ap.add_argument("--no-augment", action="store_true", help="disable random translation + flip")
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips (e.g. digits, text)")
    ap.add_argument("--pad", type=int, default=None, help="random translation in pixels (default: max(2, img_size // 14))")
    ap.add_argument("--seed", type=int, default=0, help="default 0")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP + " (per process)")
    ap.add_argument("--amp", choices=AMP_CHOICES, default="fp32",
                    help="compute precision of the forward/backward pass (weights and optimizer stay fp32); "
                         "bf16 autocast trains about 1.4x faster on CPUs with AMX/AVX512-BF16")
    ap.add_argument("--workers", type=int, default=2, help="data-loading workers for file-backed datasets")
    ap.add_argument("--train-limit", type=int, default=None, help="train on a seeded, class-stratified random N of the training images (quick runs)")
    ap.add_argument("--val-limit", type=int, default=None, help="evaluate on a seeded, class-stratified random N of the validation images")
    ap.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pt exactly, with its own flags "
                                                          "(those not given again; one given with another value is refused)")
    ap.add_argument("--force", action="store_true", help="start over even if OUT already holds checkpoints")
    ap.add_argument("--finetune", default=None, help="initialise from a checkpoint (published or ours); its heads keep the rows of the classes named alike")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="self-distillation weight: each earlier exit also learns the last exit's softened answer (KL at --distill-temp); 0 = off")
    ap.add_argument("--distill-temp", type=float, default=2.0, help="softmax temperature of --distill")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling of --finetune (only for files you trust)")
    ap.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")
    return ap


def _finetune_init(model: DVT, path: str, trusted: bool, classes: Optional[list[str]] = None, data: str = "") -> str:
    """Copy weights from a checkpoint (across grid and depth changes: :mod:`dvt_edge.transfer`). The classifier heads come
    along whole when the checkpoint's class names are the training data's (same names, same order; kept when it names
    none and the shapes fit), else their rows of the classes named alike; the rest that does not fit keeps its init."""
    ckpt = read_checkpoint(path, trusted=trusted)
    src = _state_dict_of(ckpt, Path(path))  # the same weight keys load_checkpoint accepts (model_state_dict, state_dict, model)
    src_classes = ckpt.get("classes")
    same_classes = src_classes is None or classes is None or list(src_classes) == list(classes)
    t = transfer_weights(model, src, skip=lambda k: not same_classes and ".head." in k)
    if t.loaded < t.total // 2:
        try:  # a wrong --model: name the checkpoint's own
            hint = f"the checkpoint is {checkpoint_model_name(path, trusted)!r}: drop --model (it is the checkpoint's) or pass that name"
        except (CheckpointError, ValueError, KeyError):
            hint = "is it the same architecture?"
        raise CheckpointError(f"--finetune {path}: only {t.loaded} of {t.total} tensors fit model {model.name!r}; {hint}")
    why = ""
    if not same_classes:  # the rows of classes named alike still carry over (a class renamed or added keeps the others)
        kept = carry_head_rows(model, src, list(src_classes), list(classes))
        why = " (heads re-initialised: the checkpoint's classes differ from the data's" + (
            f"; the rows of the {len(kept)} class(es) named alike carried over: {', '.join(kept)})" if kept else ")")
    moved = _data.holdout_changed(data, ckpt, "the --finetune checkpoint") if data else ""
    return f"fine-tuning from {path}: {t.summary()}{why}" + (f"\n{moved}" if moved else "")


def check_args(args: argparse.Namespace) -> None:
    """Nonsense arguments are refused before anything is read or written."""
    if getattr(args, "amp", "fp32") not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {args.amp!r}")
    for name, lo in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("train_limit", 1), ("val_limit", 1), ("threads", 0), ("pad", 0)):
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")
    for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "distill"):
        v = getattr(args, name, 0.0)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a finite non-negative number, got {v}")
    if not 0 <= getattr(args, "seed", 0) < 2**32:  # numpy's own message did not name the flag
        raise ValueError(f"--seed must be within 0..{2**32 - 1}, got {args.seed}")
    if args.lr < 1e-8:  # finite (checked above); AdamW at lr 0 (or 1e-320) runs every epoch and changes nothing (useful only to re-save a starting point)
        warnings.warn(f"--lr {args.lr:.3g}: no weight will change{' measurably' if args.lr else ''}; this run only evaluates and re-saves its starting point "
                      "(1e-3 is the default learning rate, 2e-3 the CIFAR recipe's, 5e-4 a fine-tune's)", stacklevel=2)
    temp = getattr(args, "distill_temp", 2.0)
    if not (math.isfinite(temp) and 0.01 <= temp <= 100):  # 1e-300 divided the logits into infinity: "loss became nan; lower --lr"
        raise ValueError(f"--distill-temp must be within 0.01..100 (it divides the logits; 1 to 4 is usual, 2 the default), got {temp}")
    if args.warmup_epochs > 100 * args.epochs:  # 1e308 overflowed the step count (a traceback)
        raise ValueError(f"--warmup-epochs {args.warmup_epochs:g} is over 100 times --epochs {args.epochs}: the learning rate would stay "
                         "near 0 for the whole run; pass at most 100 x --epochs (usually no more than --epochs)")
    if args.label_smoothing >= 1 or (args.drop_path is not None and not 0 <= args.drop_path < 1):
        raise ValueError("--label-smoothing and --drop-path must be in [0, 1)")


@dataclass
class _Run:
    """One training run's fixed parts: processes, data, model, optimizer and the augmentation's settings."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    log: Callable[..., None]
    train_ds: ImageSet
    val_ds: ImageSet
    model: DVT
    ddp_model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    steps_per_epoch: int
    cache: Optional[tuple] = None
    val_cache: Optional[tuple] = None
    bg: Optional[torch.Tensor] = None
    pad: int = 0
    holdout: Optional[dict] = None  # an image folder without val/: which files its holdout held (recorded in checkpoints)
    finetune_sha256: Optional[str] = None  # the --finetune source as it was when the run started (recorded in checkpoints)
    class_weights: Optional[torch.Tensor] = None  # (classes,) with --class-weight balanced

    @property
    def main_proc(self) -> bool:
        return self.rank == 0


@dataclass
class _RunState:
    """What carries over from epoch to epoch (and across ``--resume``)."""

    start_epoch: int = 0
    history: list = field(default_factory=list)
    best_acc: float = -1.0
    prior_seconds: float = 0.0


def train(args: argparse.Namespace) -> dict:
    """Train (or resume, or fine-tune) as ``build_parser``'s arguments say; the history, best accuracy and seconds.
    With ``--quiet`` no progress bar at all (decoding, preprocessing, epochs, evaluation)."""
    with silenced_progress(getattr(args, "quiet", False)), contextlib.ExitStack() as stack:
        return _train(args, stack)


def _train(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    given = getattr(args, "given_flags", None)  # the flags the command line set (GivenParser): --resume keeps the run's others
    check_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file; pass a folder for the run (checkpoints and metrics go there)")
    rank, world, device = _init_processes(args)
    code_revision(), code_changes()  # the checkout as the run starts: a pull during its first epoch does not change its record
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    resume_state = resume_run(args, out, vars(build_parser().parse_args(["--out", "x"])), given)  # without --data, --model: its own
    agreed(lambda: stack.enter_context(run_lock(out)), rank, world)  # one run at a time writes OUT's checkpoints (writable: above)
    if args.warmup_epochs >= args.epochs:  # a one-epoch fine-tune ended at the peak rate (checked on a resumed run's own values)
        warnings.warn(f"--warmup-epochs {args.warmup_epochs:g} covers all {args.epochs} epoch(s): the learning rate only rises to "
                      "--lr and never decays; pass --warmup-epochs below --epochs", stacklevel=3)
    if args.model is None and (args.finetune or not args.data):  # a fine-tune without --model: the checkpoint's architecture
        args.model = checkpoint_model_name(args.finetune, args.trust_checkpoint) if args.finetune else DEFAULT_MODEL
        if args.finetune:
            log(f"note: --model {args.model}, the architecture of --finetune {args.finetune}")
    elif args.finetune and resume_state is None and args.model not in list_models():  # a typo, said before the data's decode
        _checkpoint.check_finetune_model(args.model, checkpoint_model_name(args.finetune, args.trust_checkpoint))
    # a resumed run keeps the data it recorded (an old run's relative path made absolute; never newly split)
    args.data = (_data.absolute_spec if resume_state is not None else _data.training_spec)(args.data or default_train_data(args.model))
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)  # DDP gives every rank rank 0's weights; each rank draws its own drop-path masks
    holdout = _data.holdout_of(args.data)  # listed before the (long) decode, compared after it
    _data.check_resumed_holdout(args.data, holdout, resume_state)
    train_ds, val_ds = _load_splits(args.data, args.train_limit, args.val_limit, args.seed)
    _data.check_training_holdout(args.data, holdout)
    if args.model is None:  # --data without --model: the reference architecture for the data's colour
        args.model = COLOR_MODEL if train_ds.preprocess.num_channels == 3 else DEFAULT_MODEL
        colour = args.model == COLOR_MODEL
        log(f"note: --model {args.model} ({'colour, 32 px' if colour else 'grayscale, 28 px'}: {args.data} is {'colour' if colour else 'grayscale'}); "
            "pass --model NAME to choose (python -m dvt_edge.zoo lists them)" + (f", or --finetune {COLOR_REFERENCE} (the CIFAR-10 reference)" if colour else ""))
    model = _build_model(args, resume_state, train_ds, val_ds, log)
    agreed(lambda: check_room(out, sum(p.numel() for p in model.parameters())), rank, world)  # before an epoch's work
    if given is not None and "batch_size" not in given and resume_state is None and model.cfg.img_size >= 224:
        args.batch_size = BATCH_224  # the small models' 128 needs about 19 GB at 224 px (measured below)
        log(f"note: --batch-size {BATCH_224} for a {model.cfg.img_size} px model (fine-tuning dvt_t2t_vit_12 on a CPU peaked at 2.4 GB "
            "at batch 8 and 5.7 GB at 32; the small models' 128 would need about 19 GB); pass --batch-size to choose")
    if given is not None and "lr" not in given and resume_state is None and args.finetune:
        args.lr = FINETUNE_LR  # trained weights: a from-scratch peak rate would undo much of what they learned
        log(f"note: --lr {FINETUNE_LR:g} for a fine-tune (a run from scratch peaks at 1e-3); pass --lr to choose")
    run = _setup_run(args, rank, world, device, log, model, train_ds, val_ds, holdout)
    state = _RunState() if resume_state is None else _restore(run, resume_state, out / "last.pt")
    run.finetune_sha256 = resume_state.get("finetune_sha256") if resume_state else args.finetune and sha256_file(args.finetune)
    _prepare_batches(run)
    started_over(out, args, main=run.main_proc)  # a --force run over older checkpoints says so until its own are saved
    t_run = time.time()
    for epoch in range(state.start_epoch, args.epochs):
        train_loss, train_time = _train_epoch(run, epoch)
        rngs, gens = gather_rng_states(run.gen, run.world)
        if run.main_proc:
            _end_epoch(run, state, out, epoch, train_loss, train_time, rngs, gens, t_run)
        if world > 1:
            dist.barrier()
    summary = {"history": state.history, "best_acc": state.best_acc, "seconds": time.time() - t_run}
    if world > 1:
        dist.destroy_process_group()
    return summary


def _init_processes(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group under torchrun, sets --threads."""
    rank, world, local_rank = _dist_info()
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() and world > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    return rank, world, device


def _load_splits(data: str, train_limit: Optional[int] = None, val_limit: Optional[int] = None,
                 seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Both splits, each a seeded, class-stratified random subset when limited (an image folder decodes only those)."""
    train_ds = load_dataset(data, "train", limit=train_limit, seed=seed)
    val_ds = load_dataset(data, "val", preprocess=train_ds.preprocess, limit=val_limit, seed=seed)
    if train_ds.num_classes < 2:  # every answer right, confidence 1 at every exit: nothing to learn
        raise DataError(f"{data} has {train_ds.num_classes} class(es) ({train_ds.classes}); a classifier needs at least 2")
    if val_ds.classes != train_ds.classes:
        raise DataError(f"train and val class lists differ: {train_ds.classes} vs {val_ds.classes}")
    for flag, n in (("--train-limit", train_limit), ("--val-limit", val_limit)):
        if n is not None and n < train_ds.num_classes:  # a seeded subset of fewer images than classes leaves classes out
            warnings.warn(f"{flag} {n} is fewer than the {train_ds.num_classes} classes: {train_ds.num_classes - n} class(es) have no "
                          f"image in that split; pass at least {train_ds.num_classes}", stacklevel=3)
    return train_ds, val_ds


def _build_model(args: argparse.Namespace, resume_state: Optional[dict], train_ds: ImageSet, val_ds: ImageSet, log) -> DVT:
    """The model (fresh, resumed or fine-tuned); both splits get the preprocessing it expects."""
    overrides = {"num_classes": train_ds.num_classes, **({"drop_path_rate": args.drop_path} if args.drop_path is not None else {})}
    unregistered = resume_state is None and args.finetune and args.model not in list_models()  # a variant a script registered
    model, source_pre = (_checkpoint.model_like_checkpoint(args.finetune, args.trust_checkpoint, **overrides) if unregistered else (
        model_from_args(resume_state["model"]) if resume_state is not None else create_model(args.model, **overrides), None))
    recorded = resume_state.get("preprocess") if resume_state is not None else None
    if isinstance(recorded, dict):  # a resumed run keeps the preprocessing it started with (a variant a script had registered
        pre = Preprocess.from_dict(recorded)  # is not registered in the resuming process: epochs 2-6 took the data's own, unsaid)
    else:
        pre = Preprocess(**model_defaults(model.name)["preprocess"]) if model.name in list_models() else (source_pre or train_ds.preprocess)
        if (model.cfg.in_chans, model.cfg.img_size) != (pre.num_channels, pre.size):
            pre = default_preprocess(model.cfg.in_chans, model.cfg.img_size)
    _data.check_stored_preprocess(train_ds, pre, model.name, args.data)
    if pre != train_ds.preprocess:
        log(f"note: {args.data} images are preprocessed as {model.name} expects: {pre.to_dict()}")
    train_ds.preprocess = val_ds.preprocess = pre
    if args.finetune and resume_state is None:
        log(_finetune_init(model, args.finetune, args.trust_checkpoint, train_ds.classes, args.data))
    return model


def _setup_run(args, rank: int, world: int, device: torch.device, log, model: DVT, train_ds: ImageSet, val_ds: ImageSet,
               holdout: Optional[dict] = None) -> _Run:
    """Place the model; optimizer, schedule, augmentation generator (``holdout``: the folder's, recorded in checkpoints)."""
    for flag, n, ds in (("--train-limit", args.train_limit, train_ds), ("--val-limit", args.val_limit, val_ds)):
        if n is not None and n > ds.whole and rank == 0:
            log(f"note: {flag} {n} is more than the {ds.whole} images of {args.data}'s {ds.split} split: all of them are used")
    model.to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / world) / args.batch_size)
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)))
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    if (warning := _batches.bf16_warning(getattr(args, "amp", "fp32"), device)) and rank == 0:
        log(warning)
    return _Run(args, rank, world, device, log, train_ds, val_ds, model, ddp_model, opt, sched, gen, steps_per_epoch, holdout=holdout)


def _restore(run: _Run, resume_state: dict, last: Path) -> _RunState:
    """Weights, optimizer, schedule, generators and history of the run in ``resume_state``."""
    if (theirs := resume_state.get("classes")) is not None and list(theirs) != list(run.train_ds.classes):  # every label would move
        raise CheckpointError(f"--resume: {last} was trained on classes {list(theirs)[:10]}, the data now has "
                              f"{list(run.train_ds.classes)[:10]} (a class folder renamed, added or removed): resume on the run's own "
                              f"classes, or start a new run from it with --finetune {last}")
    run.model.load_state_dict(resume_state["model_state_dict"])
    t = resume_state["train"]
    if len(t["rng"]) != run.world:  # steps per epoch, and so the LR curve, depend on it
        raise CheckpointError(f"--resume: {last} was run with {len(t['rng'])} process(es), this run has {run.world}; "
                              "resume with the same number")
    run.opt.load_state_dict(t["optimizer"])
    run.sched.load_state_dict(t["scheduler"])
    rank = run.rank
    run.gen.set_state(t["generator"][rank] if rank < len(t["generator"]) else t["generator"][0])
    set_rng_state(t["rng"][rank] if rank < len(t["rng"]) else t["rng"][0])
    state = _RunState(t["epoch"], json.loads(t["history"]), t["best_acc"], float(t.get("run_seconds", 0.0)))
    run.log(f"resuming {run.args.model} from {last} after epoch {state.start_epoch} of {run.args.epochs}")
    if state.start_epoch < run.args.epochs and run.main_proc and (
            said := resumed_differently(state.history, run.args.amp, torch.get_num_threads(), environment(device=run.device))):
        warnings.warn(said, stacklevel=2)
    return state


def _prepare_batches(run: _Run) -> None:
    """Preprocess in-memory splits once; the augmentation's background and translation."""
    run.cache = materialize(run.train_ds)
    run.val_cache = materialize(run.val_ds)
    if run.cache is not None:
        run.cache = (run.cache[0].to(run.device), run.cache[1].to(run.device))
    pre = run.train_ds.preprocess
    run.bg = torch.tensor([(0.0 - m) / s for m, s in zip(pre.mean, pre.std)], device=run.device)
    run.pad = max(2, run.model.cfg.img_size // 14) if run.args.pad is None else run.args.pad
    if getattr(run.args, "class_weight", "none") == "balanced":  # a run recorded before the flag had none
        run.class_weights = _batches.balanced_class_weights(run.train_ds.labels, run.train_ds.classes, run.log).to(run.device)
    model, args = run.model, run.args
    run.log(f"training {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, exits at "
            f"{[f'{e.grid}x{e.grid}' for e in model.exits]}, GFLOPs {[round(e.gflops, 4) for e in model.exits]}) "
            f"on {len(run.train_ds)} images of {args.data}, {run.world} process(es), device {run.device}")


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """One pass over this process's shard of the training split: (mean loss, seconds)."""
    args, device = run.args, run.device
    amp = getattr(args, "amp", "fp32")
    run.ddp_model.train()
    idx = epoch_shard(len(run.train_ds), epoch, args.seed, run.rank, run.world, run.gen)
    t0, loss_sum, n_seen = time.time(), 0.0, 0
    it = batches(run.train_ds, run.cache, idx, args.batch_size, args.workers)
    for x, y in progress_bar(it, run.steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}", "batch", enabled=run.main_proc):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if not args.no_augment:
            x = augment(x, run.pad, run.bg, run.gen, flip=not args.no_flip)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            outs = run.ddp_model(x)
        loss = exit_loss([o.float() for o in outs], y, args.label_smoothing, args.distill, args.distill_temp, run.class_weights)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        loss_val = float(loss.detach())
        loss_sum += loss_val * len(y)
        n_seen += len(y)
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss became {loss_val} at epoch {epoch + 1}; lower --lr")
    return loss_sum / max(n_seen, 1), time.time() - t0


def exit_loss(outs: Sequence[torch.Tensor], y: torch.Tensor, label_smoothing: float = 0.0,
              distill: float = 0.0, temp: float = 2.0, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum of every exit's cross-entropy, plus ``distill`` x each earlier exit's KL divergence from
    the last exit's (detached) answer at temperature ``temp``, scaled by ``temp**2`` (self-distillation:
    earlier exits learn which images the last exit finds easy, so their confidence means more). ``weight``: per class."""
    loss = sum(F.cross_entropy(o, y, weight=weight, label_smoothing=label_smoothing) for o in outs)
    if distill > 0 and len(outs) > 1:
        teacher = F.log_softmax(outs[-1].detach() / temp, dim=-1)  # (B, classes)
        kd = sum(F.kl_div(F.log_softmax(o / temp, dim=-1), teacher, log_target=True, reduction="batchmean") for o in outs[:-1])
        loss = loss + distill * temp**2 * kd
    return loss


def _end_epoch(run: _Run, state: _RunState, out: Path, epoch: int, train_loss: float, train_time: float,
               rngs: list, gens: list, t_run: float) -> None:
    """Per-exit validation, checkpoints (last.pt, best.pt when improved), metrics.json/png (rank 0)."""
    args, model = run.args, run.model
    # batches of training size fit where training does (a GPU's 512 at 224 px), and at least the CPU default
    acc, _ = evaluate_exits(model, run.val_ds, max(args.batch_size, eval_batch_size(model.cfg.img_size)), cache=run.val_cache)
    entry = {"epoch": epoch + 1, "train_loss": train_loss, "val_acc": acc,
             "lr": run.sched.get_last_lr()[0], "epoch_seconds": round(train_time, 1), "amp": args.amp,
             "threads": torch.get_num_threads(), "environment": environment(device=run.device)}  # what float results depend on, per epoch (resumes vary)
    state.history.append(entry)
    improved = acc[-1] > state.best_acc
    state.best_acc = max(state.best_acc, acc[-1])
    meta = dict(classes=run.train_ds.classes, preprocess=run.train_ds.preprocess, accuracies=acc, holdout=run.holdout,
                **({"finetune_sha256": run.finetune_sha256} if run.finetune_sha256 else {}))
    run_seconds = round(state.prior_seconds + time.time() - t_run, 1)  # wall time, evaluation included, over resumes
    t = {"epoch": epoch + 1, "epochs": args.epochs, "run_seconds": run_seconds, "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
         "generator": gens, "rng": rngs, "history": json.dumps(state.history), "best_acc": state.best_acc, "args": json.dumps(vars(args))}
    if improved:  # before last.pt: a run stopped between the two resumes with its best epoch saved, not an older one
        save_checkpoint(out / "best.pt", model, **meta, train_summary=json.dumps({"epoch": epoch + 1, "args": vars(args)}))
    save_checkpoint(out / "last.pt", model, **meta, train=t)
    started_over(out, args, done=True)
    atomic_write_json(out / "metrics.json", {"schema": METRICS_SCHEMA, "schema_version": 1, "model": args.model, "data": args.data, "history": state.history,
                                             "exits": [e.__dict__ for e in model.exits], "world_size": run.world,
                                             "run_seconds": run_seconds, "args": vars(args)})
    _plot_metrics(state.history, out / "metrics.png")
    run.log(f"epoch {epoch + 1}/{args.epochs}  loss {train_loss:.4f}  val top-1 per exit "
            f"{[round(a, 2) for a in acc]}  ({train_time:.0f}s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        train(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the last finished epoch is in OUT/last.pt, if this run wrote one
        if hint := resume_hint(args.out, started):
            print(hint, file=sys.stderr)
        raise
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a lost mount: the epochs saved before it stay
        print(f"error: {os_error_text(e)}" + (f"\n{hint}" if (hint := resume_hint(args.out, started)) else ""), file=sys.stderr)
        return 2
    except FloatingPointError as e:  # diverged: the checkpoints in --out hold the last finished epoch
        print(f"error: {e} (nothing was written for that epoch)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
