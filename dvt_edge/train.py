"""Multi-exit DVT training: sum of every exit's cross-entropy, AdamW, warmup + cosine.

    python -m dvt_edge.train --model dvt_tiny_fmnist_ms --data fashion-mnist --epochs 20 --out runs/ref
    torchrun --nproc_per_node 2 -m dvt_edge.train ...      # DDP (gloo on CPU, nccl on GPU)

Writes ``OUT/last.pt`` (with optimizer/scheduler/RNG state, for ``--resume``),
``OUT/best.pt`` (best last-exit validation accuracy), ``OUT/metrics.json`` and
``OUT/metrics.png`` (per-exit accuracy over epochs). Checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dvt_edge.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from dvt_edge.data import DATASETS, DataError, ImageSet, default_preprocess, load_dataset
from dvt_edge.models import DVT, create_model, list_models, model_defaults, model_from_args
from dvt_runtime.io import atomic_write_json
from dvt_runtime.preprocess import Preprocess

AMP_CHOICES = ("fp32", "bf16")

__all__ = ["train", "evaluate_exits", "main", "build_parser"]


# ----------------------------------------------------------------------------- helpers


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _rng_state() -> dict:
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": {"key": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])},
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((s["python_version"], tuple(s["python"]), None))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


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


def augment(x: torch.Tensor, pad: int, bg: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random translation (pad + crop, background-filled) and horizontal flip: (B, C, H, W)."""
    B, C, H, W = x.shape
    padded = bg.view(1, C, 1, 1).expand(B, C, H + 2 * pad, W + 2 * pad).clone()
    padded[:, :, pad : pad + H, pad : pad + W] = x
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + H, dx[i] : dx[i] + W] for i in range(B)])
    if flip:
        f = torch.rand(B, generator=gen) < 0.5
        out[f] = out[f].flip(-1)
    return out


class _TorchSet(torch.utils.data.Dataset):
    def __init__(self, ds: ImageSet):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.ds.input(i)), int(self.ds.labels[i])


def _batches(ds: ImageSet, cache: Optional[tuple], idx: torch.Tensor, batch_size: int, workers: int):
    """Yield (x, y) batches in ``idx`` order; in-memory arrays are sliced, files are decoded by workers."""
    if cache is not None:
        X, Y = cache
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            yield X[b], Y[b]
        return
    sampler = torch.utils.data.BatchSampler(idx.tolist(), batch_size, drop_last=False)
    loader = torch.utils.data.DataLoader(_TorchSet(ds), batch_sampler=sampler, num_workers=workers)
    yield from loader


def _materialize(ds: ImageSet, limit_bytes: float = 3e9) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocess an in-memory dataset once (Fashion-MNIST: 188 MB); None for file-backed sets."""
    if not isinstance(ds.images, np.ndarray):
        return None
    if len(ds) * int(np.prod(ds.preprocess.input_shape)) * 4 > limit_bytes:
        return None
    x, y = ds.arrays()
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate_exits(model: DVT, ds: ImageSet, batch_size: int = 500, cache=None, workers: int = 0, progress: bool = False) -> tuple[list[float], np.ndarray]:
    """Per-exit top-1 accuracy (%) and the softmax outputs (exits, N, classes)."""
    model.eval()
    cache = cache if cache is not None else _materialize(ds)
    idx = torch.arange(len(ds))
    probs = []
    it = _batches(ds, cache, idx, batch_size, workers)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=math.ceil(len(ds) / batch_size), desc="evaluate", unit="batch", leave=False)
    for x, _ in it:
        probs.append(torch.stack([o.softmax(-1) for o in model(x)]))
    p = torch.cat(probs, dim=1).numpy()  # (exits, N, classes)
    labels = ds.labels
    acc = [float((p[e].argmax(-1) == labels).mean() * 100) for e in range(p.shape[0])]
    return acc, p


def _plot_metrics(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    n_exits = len(history[0]["val_acc"])
    for e in range(n_exits):
        ax.plot(epochs, [h["val_acc"][e] for h in history], marker="o", label=f"exit {e + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("per-exit validation accuracy")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from dvt_runtime.io import atomic_write

    atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------- train


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dvt_edge.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dvt_tiny_fmnist_ms", help=f"registered model: {', '.join(list_models())}")
    ap.add_argument("--data", default="fashion-mnist", help=f"dataset spec: {', '.join(DATASETS)}")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", required=True, help="run directory (checkpoints, metrics)")
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the model's)")
    ap.add_argument("--no-augment", action="store_true", help="disable random translation + flip")
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips (e.g. digits, text)")
    ap.add_argument("--pad", type=int, default=None, help="random translation in pixels (default: max(2, img_size // 14))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    ap.add_argument("--amp", choices=AMP_CHOICES, default="fp32",
                    help="compute precision of the forward/backward pass (weights and optimizer stay fp32); "
                         "bf16 autocast trains about 1.4x faster on CPUs with AMX/AVX512-BF16")
    ap.add_argument("--workers", type=int, default=2, help="data-loading workers for file-backed datasets")
    ap.add_argument("--train-limit", type=int, default=None, help="train on a seeded, class-stratified random N of the training images (quick runs)")
    ap.add_argument("--val-limit", type=int, default=None, help="evaluate on a seeded, class-stratified random N of the validation images")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    ap.add_argument("--force", action="store_true", help="start over even if OUT already holds checkpoints")
    ap.add_argument("--finetune", default=None, help="initialise from a checkpoint (published or ours); heads re-initialised when classes differ")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling of --finetune (only for files you trust)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _finetune_init(model: DVT, path: str, trusted: bool) -> str:
    """Copy weights from a checkpoint; heads (and anything shaped differently) keep their fresh init."""
    ckpt = read_checkpoint(path, trusted=trusted)
    src = ckpt.get("model_state_dict", ckpt)
    if all(k.startswith("module.") for k in src):
        src = {k[7:]: v for k, v in src.items()}
    own = model.state_dict()
    heads = [k for k in own if ".head." in k]
    loadable = {k: v for k, v in src.items() if k in own and tuple(v.shape) == tuple(own[k].shape) and k not in heads}
    skipped = sorted(k for k in own if k not in loadable)
    if len(loadable) < len(own) // 2:
        raise CheckpointError(f"--finetune {path}: only {len(loadable)} of {len(own)} tensors fit model {model.name!r}; is it the same architecture?")
    model.load_state_dict({**own, **loadable})
    return f"fine-tuning from {path}: {len(loadable)} tensors loaded, re-initialised {len(skipped)} (e.g. {skipped[:4]})"


def check_args(args: argparse.Namespace) -> None:
    """Nonsense arguments are refused before anything is read or written."""
    if getattr(args, "amp", "fp32") not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {args.amp!r}")
    for name, lo in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("train_limit", 1), ("val_limit", 1), ("threads", 1), ("pad", 0)):
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")
    for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing"):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a finite non-negative number, got {v}")
    if args.label_smoothing >= 1 or (args.drop_path is not None and not 0 <= args.drop_path < 1):
        raise ValueError("--label-smoothing and --drop-path must be in [0, 1)")


def train(args: argparse.Namespace) -> dict:
    check_args(args)
    rank, world, local_rank = _dist_info()
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() and world > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    main_proc = rank == 0
    log = (lambda *a: print(*a, flush=True)) if main_proc else (lambda *a: None)
    out = Path(args.out)
    last, best_path = out / "last.pt", out / "best.pt"

    # -- resume / overwrite checks before touching anything
    resume_state = None
    if args.resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: {last} not found (nothing to resume); drop --resume to start a new run")
        resume_state = read_checkpoint(last)
        stored = resume_state.get("model", {})
        if stored.get("name") != args.model:
            raise CheckpointError(
                f"--resume: {last} is a checkpoint of model {stored.get('name')!r}, not {args.model!r}; "
                f"pass --model {stored.get('name')} or another --out"
            )
    elif (last.exists() or best_path.exists()) and not args.force:
        raise CheckpointError(f"{out} already holds checkpoints; pass --resume to continue that run or --force to start over")

    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed)  # same init on every rank

    # -- data
    train_ds = load_dataset(args.data, "train")
    val_ds = load_dataset(args.data, "val", preprocess=train_ds.preprocess)
    if val_ds.classes != train_ds.classes:
        raise DataError(f"train and val class lists differ: {train_ds.classes} vs {val_ds.classes}")
    # -- model
    overrides = {"num_classes": train_ds.num_classes}
    if args.drop_path is not None:
        overrides["drop_path_rate"] = args.drop_path
    if resume_state is not None:
        model = model_from_args(resume_state["model"])
    else:
        model = create_model(args.model, **overrides)
    c = model.cfg
    pre = Preprocess(**model_defaults(model.name)["preprocess"]) if model.name in list_models() else train_ds.preprocess
    if (c.in_chans, c.img_size) != (pre.num_channels, pre.size):
        pre = default_preprocess(c.in_chans, c.img_size)
    if pre != train_ds.preprocess:
        log(f"note: {args.data} images are preprocessed as {model.name} expects: {pre.to_dict()}")
    train_ds.preprocess = val_ds.preprocess = pre
    if args.finetune and resume_state is None:
        log(_finetune_init(model, args.finetune, args.trust_checkpoint))
    train_ds = train_ds.limit(args.train_limit, seed=args.seed)
    val_ds = val_ds.limit(args.val_limit, seed=args.seed)
    model.to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / world) / args.batch_size)
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)))
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    start_epoch, history, best_acc, prior_seconds = 0, [], -1.0, 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model_state_dict"])
        t = resume_state["train"]
        opt.load_state_dict(t["optimizer"])
        sched.load_state_dict(t["scheduler"])
        gen.set_state(t["generator"][rank] if rank < len(t["generator"]) else t["generator"][0])
        _set_rng_state(t["rng"][rank] if rank < len(t["rng"]) else t["rng"][0])
        start_epoch, history, best_acc = t["epoch"], json.loads(t["history"]), t["best_acc"]
        prior_seconds = float(t.get("run_seconds", 0.0))
        if t.get("epochs") != args.epochs:
            log(f"note: run was planned for {t.get('epochs')} epochs; the schedule continues as planned, stopping at {args.epochs}")
        log(f"resuming {args.model} from {last} at epoch {start_epoch}")

    cache = _materialize(train_ds)
    val_cache = _materialize(val_ds)
    if cache is not None:
        cache = (cache[0].to(device), cache[1].to(device))
    bg = torch.tensor([(0.0 - m) / s for m, s in zip(train_ds.preprocess.mean, train_ds.preprocess.std)], device=device)
    pad = max(2, c.img_size // 14) if args.pad is None else args.pad
    log(f"training {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, exits at "
        f"{[f'{e.grid}x{e.grid}' for e in model.exits]}, GFLOPs {[round(e.gflops, 4) for e in model.exits]}) "
        f"on {len(train_ds)} images of {args.data}, {world} process(es), device {device}")

    amp = getattr(args, "amp", "fp32")
    t_run = time.time()
    for epoch in range(start_epoch, args.epochs):
        ddp_model.train()
        perm = torch.randperm(len(train_ds), generator=gen)
        idx = perm[rank::world]  # disjoint shard per process
        t0, loss_sum, n_seen = time.time(), 0.0, 0
        batches = _batches(train_ds, cache, idx, args.batch_size, args.workers)
        if main_proc and not args.quiet:
            from tqdm import tqdm

            batches = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
                           mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=False)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if not args.no_augment:
                x = augment(x, pad, bg, gen, flip=not args.no_flip)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                outs = ddp_model(x)
            loss = sum(F.cross_entropy(o.float(), y, label_smoothing=args.label_smoothing) for o in outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_val = float(loss.detach())
            loss_sum += loss_val * len(y)
            n_seen += len(y)
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"loss became {loss_val} at epoch {epoch + 1}; lower --lr")
        train_time = time.time() - t0
        # -- per-exit validation, checkpoints (rank 0)
        rngs = [_rng_state()]
        gens = [gen.get_state()]
        if world > 1:
            all_rngs, all_gens = [None] * world, [None] * world
            dist.all_gather_object(all_rngs, rngs[0])
            dist.all_gather_object(all_gens, gens[0])
            rngs, gens = all_rngs, all_gens
        if main_proc:
            acc, _ = evaluate_exits(model, val_ds, cache=val_cache)
            entry = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "val_acc": acc,
                     "lr": sched.get_last_lr()[0], "epoch_seconds": round(train_time, 1)}
            history.append(entry)
            improved = acc[-1] > best_acc
            best_acc = max(best_acc, acc[-1])
            meta = dict(classes=train_ds.classes, preprocess=train_ds.preprocess, accuracies=acc)
            run_seconds = round(prior_seconds + time.time() - t_run, 1)  # wall time, evaluation included, over resumes
            t = {"epoch": epoch + 1, "epochs": args.epochs, "run_seconds": run_seconds, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "generator": gens, "rng": rngs, "history": json.dumps(history), "best_acc": best_acc, "args": json.dumps(vars(args))}
            save_checkpoint(last, model, **meta, train=t)
            if improved:
                save_checkpoint(best_path, model, **meta, train_summary=json.dumps({"epoch": epoch + 1, "args": vars(args)}))
            atomic_write_json(out / "metrics.json", {"model": args.model, "data": args.data, "history": history,
                                                     "exits": [e.__dict__ for e in model.exits], "world_size": world,
                                                     "run_seconds": run_seconds, "args": vars(args)})
            _plot_metrics(history, out / "metrics.png")
            log(f"epoch {epoch + 1}/{args.epochs}  loss {entry['train_loss']:.4f}  val top-1 per exit "
                f"{[round(a, 2) for a in acc]}  ({train_time:.0f}s)")
        if world > 1:
            dist.barrier()
    summary = {"history": history, "best_acc": best_acc, "seconds": time.time() - t_run}
    if world > 1:
        dist.destroy_process_group()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
