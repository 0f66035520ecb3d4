"""Feeding an ``ImageSet`` to a model: whole in-memory splits as tensors, file-backed ones through
DataLoader workers, and the training augmentation (random translation and flip)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch

from dvt_edge.imageset import ImageSet
from dvt_runtime.checks import images_per_call
from dvt_runtime.console import progress as progress_bar
from dvt_runtime.search import ExitOutputs

if TYPE_CHECKING:
    from dvt_edge.models import DVT

__all__ = ["augment", "TorchSet", "batches", "materialize", "epoch_shard", "evaluate_exits", "eval_batch_size", "EVAL_PIXELS"]


def epoch_shard(n: int, epoch: int, seed: int, rank: int, world: int, gen: torch.Generator) -> torch.Tensor:
    """This process's sample order for one epoch.

    One process: a permutation from its own generator (``gen``, which also drives augmentation). Several:
    their generators differ, so the permutation comes from ``seed`` and ``epoch`` alone, the same in every
    process, wrapped to a multiple of ``world`` (as DistributedSampler pads) and dealt out: disjoint shards of
    equal length, so every process runs the same number of steps (unequal ones deadlock the gradient sync).
    """
    if world == 1:
        return torch.randperm(n, generator=gen)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per = -(-n // world)  # ceil
    perm = torch.cat([perm, perm[: per * world - n]])  # (per * world,)
    return perm[rank::world]


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


class TorchSet(torch.utils.data.Dataset):
    def __init__(self, ds: ImageSet):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.ds.input(i)), int(self.ds.labels[i])


def batches(ds: ImageSet, cache: Optional[tuple], idx: torch.Tensor, batch_size: int, workers: int):
    """Yield (x, y) batches in ``idx`` order; in-memory arrays are sliced, files are decoded by workers."""
    if cache is not None:
        X, Y = cache
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            yield X[b], Y[b]
        return
    sampler = torch.utils.data.BatchSampler(idx.tolist(), batch_size, drop_last=False)
    # its own generator: a loader draws a seed from the global one (even with no workers), and evaluation's draw moved the
    # drop-path masks of the epochs after it, so a resumed run differed from an uninterrupted one
    loader = torch.utils.data.DataLoader(TorchSet(ds), batch_sampler=sampler, num_workers=workers, generator=torch.Generator().manual_seed(0),
                                         worker_init_fn=_quiet_sigterm if workers else None)
    yield from loader


def _quiet_sigterm(_worker_id: int) -> None:
    """Decoding workers end quietly on SIGTERM from anyone: ``timeout`` signals the whole process group, and PyTorch's
    workers exit quietly only when their parent sends it; killed by it, they made the main process fail with DataLoader's
    RuntimeError (a traceback, exit 1) instead of stopping as interrupted (one line, exit 143, the resume command). Not
    ignored: the loader's own terminate() must still end a stuck worker."""
    import os
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def materialize(ds: ImageSet, limit_bytes: float = 3e9) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocess an in-memory dataset once (Fashion-MNIST: 188 MB); None for file-backed sets."""
    if not isinstance(ds.images, np.ndarray):
        return None
    if len(ds) * int(np.prod(ds.preprocess.input_shape)) * 4 > limit_bytes:
        return None
    x, y = ds.arrays()
    return torch.from_numpy(x), torch.from_numpy(y)


def rng_state() -> dict:
    """Python's, numpy's and torch's global random states, as a checkpoint stores them (tensors and plain values)."""
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": {"key": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])},
    }


def set_rng_state(s: dict) -> None:
    """Restore what :func:`rng_state` returned (a resumed run continues the same random streams)."""
    torch.set_rng_state(s["torch"])
    random.setstate((s["python_version"], tuple(s["python"]), None))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def gather_rng_states(gen: torch.Generator, world: int) -> tuple[list, list]:
    """Every process's RNG and augmentation-generator (``gen``) states, in rank order (saved for an exact resume)."""
    rngs, gens = [rng_state()], [gen.get_state()]
    if world > 1:
        import torch.distributed as dist

        all_rngs, all_gens = [None] * world, [None] * world
        dist.all_gather_object(all_rngs, rngs[0])
        dist.all_gather_object(all_gens, gens[0])
        rngs, gens = all_rngs, all_gens
    return rngs, gens


#: images x pixels per evaluation batch: 500 images at 32 px, 10 at 224 px (T2T-ViT-12 held 5.1 GB for a batch of
#: 150 images at 224 px in PyTorch, measured: about 30 MB an image, most of it its T2T module's 3136-token attention)
EVAL_PIXELS = 500 * 32 * 32


def eval_batch_size(img_size: int) -> int:
    """Images per evaluation batch by default: ``EVAL_PIXELS`` over the input's pixels, 1 to 500."""
    return images_per_call(img_size ** 2, EVAL_PIXELS, 500)


class NonFiniteOutputs(FloatingPointError, ValueError):
    """A model answered NaN or infinity: training stops (FloatingPointError), and the CLIs say it in one line (ValueError)."""


@torch.no_grad()
def evaluate_exits(model: DVT, ds: ImageSet, batch_size: Optional[int] = None, cache=None, workers: int = 0, progress: bool = False,
                   desc: str = "evaluate") -> tuple[list[float], ExitOutputs]:
    """Per-exit top-1 accuracy (%) and every exit's max softmax and predicted class on each image (an ``ExitOutputs``),
    on the model's device; ``batch_size`` defaults to ``EVAL_PIXELS`` over the model's input pixels (at most 500). Only
    those are kept: the whole softmax of 50,000 images x 1,000 classes x 3 exits was 600 MB, twice over while joined."""
    model.eval()
    batch_size = batch_size or eval_batch_size(model.cfg.img_size)
    device = next(model.parameters()).device
    cache = cache if cache is not None else materialize(ds)
    idx = torch.arange(len(ds))
    conf, pred, finite = [], [], []
    it = batches(ds, cache, idx, batch_size, workers)
    for x, _ in progress_bar(it, total=math.ceil(len(ds) / batch_size), desc=desc, unit="batch", enabled=progress):
        logits = [o.float() for o in model(x.to(device))]
        probs = torch.stack([o.softmax(-1) for o in logits])  # (exits, B, classes)
        # argmax of NaN rows is class 0: a diverged model would score class 0's share; a -inf logit has a finite softmax (0)
        # but is a broken model all the same (export refuses it)
        finite.append((torch.stack([o.isfinite().all(-1) for o in logits]) & probs.isfinite().all(-1)).cpu())  # (exits, B)
        c, k = probs.max(-1)  # (exits, B) each
        conf.append(c.cpu())
        pred.append(k.cpu())
    ok = torch.cat(finite, dim=1).numpy()  # (exits, N)
    if not ok.all():
        bad = [f"exit {e + 1} on {int((~ok[e]).sum())} of {ok.shape[1]}" for e in range(len(ok)) if not ok[e].all()]
        raise NonFiniteOutputs(f"the model's outputs are not finite ({'; '.join(bad)} images): its weights are broken (a diverged "
                               "training run: lower --lr and start over, or resume from a checkpoint saved before it diverged; or a "
                               "corrupted file)")
    out = ExitOutputs.from_predictions(torch.cat(conf, dim=1).double().numpy(), torch.cat(pred, dim=1).numpy(), ds.labels)
    return [float(c.mean() * 100) for c in out.correct], out


def bf16_warning(amp: str, device: torch.device) -> Optional[str]:
    """A warning when bf16 autocast is asked for on a CPU without native bf16 (AVX512-BF16/AMX):
    oneDNN then emulates it (measured on an AVX2-only EPYC: a conv step 16x slower than fp32)."""
    if amp != "bf16" or device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (f"warning: --amp bf16 on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16/AMX) "
            "is emulated and runs many times slower than fp32 (measured 16x on an AVX2 EPYC); use --amp fp32 here")


CLASS_WEIGHTS = ("none", "balanced")  # train --class-weight


def balanced_class_weights(labels: np.ndarray, classes: Union[int, Sequence[str]], log: Optional[Callable[..., None]] = None) -> torch.Tensor:
    """Cross-entropy weights n / (classes x count) per class (scikit-learn's "balanced"): every class weighs in the loss as
    in a balanced set. A class without training images gets 0 (it has no term to weigh). ``classes``: their number, or
    their names (logged by name: indices had said nothing of which class was rare)."""
    num_classes = classes if isinstance(classes, int) else len(classes)
    named = list(range(num_classes)) if isinstance(classes, int) else list(classes)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)  # (classes,)
    w = np.divide(counts.sum(), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    if log is not None:
        log("class weights (--class-weight balanced): " + ", ".join(f"{c}: {x:.3g}" for c, x in zip(named, w)))
    return torch.tensor(w, dtype=torch.float32)

