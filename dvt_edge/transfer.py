"""Carry weights from one DVT layout to another (``train --finetune``).

Besides tensors of the same shape, four layout changes keep what the source learned:

- a stage's token grid changed: its learned position embedding is resampled bicubically over the
  grid (the class token's row kept), as timm does for ViTs at a new resolution;
- a stage grew blocks: the new blocks start as the identity (their attention output projection and
  MLP output layer are zero, so the residual stream passes through unchanged);
- the relation-reuse conv grew because a stage grew (more depth x heads maps in or out): the source's
  weights fill the overlapping slice, new input channels start at zero and new output channels at
  their fresh init;
- a stage's token conv got a larger kernel (a finer grid from the same stem map, e.g. a 2x2 stride-2
  split becoming 5x5 stride 1): the source kernel sits in the centre of the new one, zeros around it,
  so every new token starts as a source token taken at a denser position.

Together the second and third are function-preserving: a deeper model starts with the source's answers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dvt_runtime.checks import class_key

_BLOCK = re.compile(r"^(?P<stage>.+)\.blocks\.(?P<i>\d+)\.")
_ZEROED_IN_NEW_BLOCKS = ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")


@dataclass
class Transfer:
    """What :func:`transfer_weights` did, by state-dict key."""

    copied: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    identity_blocks: list[str] = field(default_factory=list)  # "<stage>.blocks.<i>"
    fresh: list[str] = field(default_factory=list)
    total: int = 0  # tensors in the model

    @property
    def loaded(self) -> int:
        """Tensors that came from the source (as they were, resampled or grown)."""
        return len(self.copied) + len(self.resampled) + len(self.grown)

    def summary(self) -> str:
        parts = [f"{len(self.copied)} tensors loaded"]
        if self.resampled:
            parts.append(f"position embeddings resampled to the new grid: {self.resampled}")
        if self.grown:
            parts.append(f"grown (source in the overlapping slice, or a kernel's centre): {self.grown}")
        if self.identity_blocks:
            parts.append(f"new blocks starting as the identity: {self.identity_blocks}")
        parts.append(f"re-initialised {len(self.fresh)} (e.g. {self.fresh[:4]})")
        return ", ".join(parts)


def resample_pos_embed(pe: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(1, 1 + g*g, C) -> (1, num_tokens, C) with num_tokens = 1 + h*h: bicubic over the grid."""
    g, h = math.isqrt(pe.shape[1] - 1), math.isqrt(num_tokens - 1)
    assert g * g == pe.shape[1] - 1 and h * h == num_tokens - 1, (pe.shape, num_tokens)
    grid = pe[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()  # (1, C, g, g)
    grid = F.interpolate(grid, size=(h, h), mode="bicubic", align_corners=False)
    return torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * h, -1).to(pe.dtype)], dim=1)


def _grows(src: torch.Tensor, own: torch.Tensor) -> bool:
    return src.ndim == own.ndim and all(a <= b for a, b in zip(src.shape, own.shape))


def _kernel_grows(src: torch.Tensor, own: torch.Tensor) -> bool:
    """Same conv channels (out, in), a kernel at least as large (equal shapes are copied before this is asked)."""
    return src.ndim == 4 and src.shape[:2] == own.shape[:2] and _grows(src, own)


def _centred_kernel(src: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(O, I, k, k) -> (O, I, K, K): ``src`` at offset (K - k) // 2 in each spatial dim, zeros elsewhere."""
    (h, v), (H, V) = src.shape[2:], own.shape[2:]
    a, b = (H - h) // 2, (V - v) // 2
    w = torch.zeros_like(own)
    w[:, :, a : a + h, b : b + v] = src
    return w


def transfer_weights(model: nn.Module, src: dict[str, torch.Tensor], skip=lambda key: False) -> Transfer:
    """Load ``src`` into ``model`` as far as the layouts allow (see the module docstring); keys for
    which ``skip(key)`` holds keep their fresh init. Returns what was done with each key."""
    own = model.state_dict()
    learned_pe = {n for n, p in model.named_parameters() if n.endswith("pos_embed") and p.requires_grad}
    src_blocks = {(m["stage"], int(m["i"])) for k in src if (m := _BLOCK.match(k))}
    src_stages = {st for st, _ in src_blocks}
    new, zeroed, t = {}, [], Transfer(total=len(own))
    for k, v in own.items():
        s = src.get(k)
        if skip(k) or s is None:
            continue
        if tuple(s.shape) == tuple(v.shape):
            new[k] = s
            t.copied.append(k)
        elif k in learned_pe and s.ndim == 3 and s.shape[2] == v.shape[2] and _is_square(s.shape[1] - 1) and _is_square(v.shape[1] - 1):
            new[k] = resample_pos_embed(s, v.shape[1])
            t.resampled.append(k)
        elif ".relation_reuse_conv." in k and _grows(s, v):
            w = v.clone()
            if w.ndim > 1:
                w[:, s.shape[1]:] = 0  # new input maps: no effect on the old outputs
            w[tuple(slice(0, n) for n in s.shape)] = s
            new[k] = w
            t.grown.append(k)
        elif k.endswith("proj.weight") and _kernel_grows(s, v):
            new[k] = _centred_kernel(s, v)
            t.grown.append(k)
    for k, v in own.items():  # blocks the source's stage did not have: identity at first
        m = _BLOCK.match(k)
        if k in new or skip(k) or not m or m["stage"] not in src_stages or (m["stage"], int(m["i"])) in src_blocks:
            continue
        if k.endswith(_ZEROED_IN_NEW_BLOCKS):
            new[k] = torch.zeros_like(v)
            zeroed.append(k)
            if (b := f"{m['stage']}.blocks.{m['i']}") not in t.identity_blocks:
                t.identity_blocks.append(b)
    t.fresh = sorted([k for k in own if k not in new] + zeroed)
    model.load_state_dict({**own, **new})
    return t


def carry_head_rows(model: nn.Module, src: dict[str, torch.Tensor], src_classes: list[str], classes: list[str]) -> list[str]:
    """Each classifier head's row (weight and bias) of every class named alike in ``src_classes`` and ``classes`` copied
    into ``model`` at that class's index (the other rows keep their fresh init); the names carried ("Cat <- cat" where
    they are written otherwise). Alike: :func:`dvt_runtime.checks.class_key` (a folder ``Cat``, or ``ship `` with
    a trailing space, carried nothing), and only where that matches one class on each side."""
    from dvt_runtime.checks import numbered

    if numbered(src_classes) or numbered(classes):  # "0".."K-1" stand for classes nobody named: no two are known alike
        return []
    theirs: dict[str, list[int]] = {}
    for j, c in enumerate(src_classes):
        theirs.setdefault(class_key(c), []).append(j)
    ours = [class_key(c) for c in classes]
    pairs = [(i, theirs[k][0]) for i, k in enumerate(ours) if k and len(theirs.get(k, [])) == 1 and ours.count(k) == 1]  # "": no letters
    own = model.state_dict()  # tensors sharing the parameters' storage
    heads = [k for k in own if ".head." in k and k in src and src[k].shape[1:] == own[k].shape[1:]
             and src[k].shape[0] == len(src_classes) and own[k].shape[0] == len(classes)]
    if not pairs or not heads:
        return []
    with torch.no_grad():
        for k in heads:  # weight (classes, D), bias (classes,)
            own[k][[i for i, _ in pairs]] = src[k][[j for _, j in pairs]].to(own[k].dtype)
    return [classes[i] if classes[i] == src_classes[j] else f"{classes[i]} <- {src_classes[j]}" for i, j in pairs]


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n
