"""Dynamic Vision Transformer (DVT) model family.

A DVT is a cascade of ViT stages over growing token grids (e.g. 7x7, 10x10, 14x14).
Stage i > 0 reuses stage i-1's features (feature reuse, in every block's MLP) and its
attention logits (relation reuse, added to every block's attention logits). Each stage
is a pure function ``(image, features, relations) -> (logits, features, relations)``
so it can be exported on its own; ``relations`` is one stacked tensor
``(B, depth*heads, n, n)`` with ``n = 1 + grid*grid``.

The layout (module names, shapes) follows the published checkpoints exactly
(``less_less_token.`` / ``less_token.`` / ``normal_token.`` prefixes).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DVTConfig",
    "DVT",
    "DVTStage",
    "ExitInfo",
    "create_model",
    "list_models",
    "register_model",
    "get_config",
    "resize_matrix",
    "STAGE_NAMES",
]

#: Attribute names of the stages of a 3-exit DVT, as in the published checkpoints.
STAGE_NAMES = ("less_less_token", "less_token", "normal_token")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DVTConfig:
    """Every constructor argument of a DVT; a variant only sets dimensions."""

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 256
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 2.0
    qkv_bias: bool = False
    #: ``t2t`` (tokens-to-token performer, T2T-ViT), ``patch`` (conv patch embedding,
    #: DeiT), ``conv`` (a small conv stem then a strided conv; for tiny images) or
    #: ``convbn`` (two or three conv+BatchNorm layers then a strided conv; natural images).
    tokenizer: str = "t2t"
    #: Token grid side of each stage (one entry per exit).
    grids: tuple[int, ...] = (7, 10, 14)
    #: First split of each stage as (kernel, stride, padding): the T2T soft split 0,
    #: the patch-embedding conv, or the conv tokenizer's strided conv.
    splits: tuple[tuple[int, int, int], ...] = ((14, 8, 3), (11, 6, 5), (7, 4, 2))
    token_dim: int = 64  # T2T performer width; conv-stem width for ``conv``
    #: Intermediate grid of the reuse resize, per stage (0 for the first stage).
    reuse_upsample: tuple[int, ...] = (0, 14, 20)
    reuse_dim: int = 48
    reuse_hidden: int = 128
    feature_reuse: bool = True
    relation_reuse: bool = True
    pos_embed: str = "sinusoid"  # fixed table (T2T) or ``learned`` (DeiT)
    #: Resolution each stage's tokenizer sees (the image is area-resized inside the stage's
    #: graph); empty: ``img_size`` for every stage, as in the published models.
    stage_img_sizes: tuple[int, ...] = ()
    #: Transformer blocks of each stage (one entry per exit); empty: ``depth`` for every stage,
    #: as in the published models. A stage's relation reuse maps the previous stage's
    #: depth x heads attention maps to its own.
    stage_depths: tuple[int, ...] = ()
    #: ``convbn`` only: 3x3 conv+BatchNorm blocks in each stage's stem, 2 or 3 (the third,
    #: at stride-2 resolution, is the costliest); empty: 3 for every stage.
    stem_blocks: tuple[int, ...] = ()
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    #: LayerNorm epsilon of the transformer blocks, their feature-reuse MLP and the final norm
    #: (DeiT: 1e-6, as published; T2T-ViT: PyTorch's default 1e-5).
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # bounds a stored config cannot exceed (a checkpoint is untrusted input: sizes allocate)
        for name, hi in (("img_size", 4096), ("in_chans", 64), ("embed_dim", 16384), ("depth", 256), ("num_heads", 256),
                         ("token_dim", 16384), ("reuse_dim", 16384), ("reuse_hidden", 65536)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= hi:
                raise ValueError(f"{name} must be an integer in 1..{hi}, got {v!r}")
        if not all(isinstance(g, int) and 0 < g <= 512 for g in self.grids) or not all(isinstance(u, int) and 0 <= u <= 8192 for u in self.reuse_upsample):
            raise ValueError(f"grids must be in 1..512 and reuse_upsample in 0..8192, got {self.grids}, {self.reuse_upsample}")
        if not (isinstance(self.mlp_ratio, (int, float)) and 0 < self.mlp_ratio <= 64):
            raise ValueError(f"mlp_ratio must be in (0, 64], got {self.mlp_ratio!r}")
        if isinstance(self.norm_eps, bool) or not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise ValueError(f"norm_eps must be a number in (0, 1), got {self.norm_eps!r}")
        n = len(self.grids)
        if n < 1:
            raise ValueError("a DVT needs at least one exit (grids=() given)")
        if len(self.splits) != n or len(self.reuse_upsample) != n:
            raise ValueError(
                f"grids, splits and reuse_upsample need one entry per exit; got "
                f"{len(self.grids)}, {len(self.splits)}, {len(self.reuse_upsample)}"
            )
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; valid: {sorted(TOKENIZERS)}")
        if self.pos_embed not in ("sinusoid", "learned"):
            raise ValueError(f"unknown pos_embed {self.pos_embed!r}; valid: ['learned', 'sinusoid']")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.stage_img_sizes and (len(self.stage_img_sizes) != n or not all(0 < r <= self.img_size for r in self.stage_img_sizes)):
            raise ValueError(f"stage_img_sizes={self.stage_img_sizes} needs one size per exit, each in 1..img_size={self.img_size}")
        if self.stage_depths and (len(self.stage_depths) != n or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 256 for d in self.stage_depths)):
            raise ValueError(f"stage_depths={self.stage_depths} needs one block count per exit, each in 1..256")
        if self.stem_blocks and self.tokenizer != "convbn":
            raise ValueError(f"stem_blocks sets the 'convbn' tokenizer's stems; this config's tokenizer is {self.tokenizer!r}")
        if self.stem_blocks and (len(self.stem_blocks) != n or not all(type(b) is int and b in (2, 3) for b in self.stem_blocks)):
            raise ValueError(f"stem_blocks={self.stem_blocks} needs one entry per exit, each 2 or 3")
        for i in range(n):
            got = tokenizer_grid(self, i)
            if got != self.grids[i]:
                raise ValueError(
                    f"exit {i + 1}: split (kernel, stride, padding)={self.splits[i]} on a {self.stage_img_size(i)}px image "
                    f"gives a {got}x{got} token grid, but grids[{i}]={self.grids[i]}"
                )
        for i in range(1, n):
            if self.reuse_upsample[i] < max(self.grids[i - 1], 1):
                raise ValueError(f"reuse_upsample[{i}]={self.reuse_upsample[i]} is smaller than grid {self.grids[i - 1]}")

    def stage_depth(self, stage: int) -> int:
        """Transformer blocks of stage ``stage``."""
        return self.stage_depths[stage] if self.stage_depths else self.depth

    def stage_img_size(self, stage: int) -> int:
        """Input side of stage ``stage``'s tokenizer."""
        return self.stage_img_sizes[stage] if self.stage_img_sizes else self.img_size

    @property
    def num_exits(self) -> int:
        return len(self.grids)

    def to_dict(self) -> dict:
        """JSON/checkpoint friendly (lists instead of tuples)."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> DVTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DVTConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**_tupleize(d))


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _tupleize(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, list):
            v = tuple(tuple(e) if isinstance(e, list) else e for e in v)
        out[k] = v
    return out


@dataclass(frozen=True)
class ExitInfo:
    """Static facts about one exit (no forward pass needed)."""

    index: int
    grid: int
    tokens: int  # 1 + grid*grid (class token included)
    stage_flops: int  # multiply-accumulates of this stage alone
    flops: int  # cumulative multiply-accumulates to reach this exit

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


# --------------------------------------------------------------------------- reuse resize


def resize_matrix(src: int, mid: int, dst: int) -> torch.Tensor:
    """(dst, src) matrix equal to nearest-upsample src->mid then adaptive-avg-pool mid->dst.

    Both steps are linear and act on each spatial axis separately, so a 2-D resize of a
    map ``X (.., src, src)`` is ``M @ X @ M.T``: two tiny matmuls instead of upsample and
    pooling kernels (which devices often do not accelerate).
    """
    up = torch.zeros(mid, src, dtype=torch.float64)
    # PyTorch 'nearest': source index = floor(dst_index * src / mid)
    for i in range(mid):
        up[i, min(int(math.floor(i * src / mid)), src - 1)] = 1.0
    pool = torch.zeros(dst, mid, dtype=torch.float64)
    for i in range(dst):
        start = (i * mid) // dst
        end = -((-(i + 1) * mid) // dst)  # ceil
        pool[i, start:end] = 1.0 / (end - start)
    return pool @ up  # (dst, src)


def area_matrix(src: int, dst: int) -> torch.Tensor:
    """(dst, src) matrix of an area (box) downscale, as OpenCV's INTER_AREA: each output
    pixel averages the input span it covers, fractional overlaps weighted."""
    assert 0 < dst <= src, (src, dst)
    m = torch.zeros(dst, src, dtype=torch.float64)
    scale = src / dst
    for i in range(dst):
        a, b = i * scale, (i + 1) * scale
        for j in range(int(math.floor(a)), min(int(math.ceil(b)), src)):
            m[i, j] = (min(b, j + 1) - max(a, j)) / scale
    return m


def _resize_last2(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Resize the last two (square) axes of ``x (.., s, s)`` with ``m (g, s)`` -> (.., g, g).

    Computes ``m @ x @ m.T`` as two ``linear`` ops with a constant weight (fully-connected
    layers, which every backend delegates) instead of broadcast matmuls. The second one gets a
    2-D input: fed straight from the transpose, ONNX Runtime fuses the two into one batched
    matmul of thousands of s x g products (11.8% of a Fashion-MNIST exit 3 at batch 12) instead
    of one large product.
    """
    g, s = m.shape
    y = F.linear(x, m)  # (.., s, g) = x @ m.T
    y = y.transpose(-1, -2).reshape(-1, s)  # (P*g, s), P = prod(leading axes)
    return F.linear(y, m).reshape(*x.shape[:-2], g, g).transpose(-1, -2)  # (.., g, g) = m @ y


# --------------------------------------------------------------------------- building blocks


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()  # exact (erf) GELU, as published; Core ML ignores tanh GELU
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention that also returns its pre-softmax logits (relations)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, reused: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        H, D = self.num_heads, self.head_dim
        qkv = self.qkv(x)  # (B, N, 3C): q | k | v, each heads x head_dim
        # slices and 3-D bmm rather than select + 4-D matmul: the same numbers, and no copies
        # (select_copy, expand_copy) left outside ExecuTorch's XNNPACK delegate
        q, k, v = (qkv[:, :, i * C : (i + 1) * C].reshape(B, N, H, D).transpose(1, 2).reshape(B * H, N, D) for i in range(3))
        attn = (torch.bmm(q, k.transpose(1, 2)) * self.scale).reshape(B, H, N, N)
        if reused is not None:
            attn = attn + reused
        out = torch.bmm(attn.softmax(dim=-1).reshape(B * H, N, N), v)  # (B*heads, N, head_dim)
        out = out.reshape(B, H, N, D).transpose(1, 2).reshape(B, N, C)
        return self.drop(self.proj(out)), attn


class Block(nn.Module):
    """Transformer block; with feature reuse its MLP also sees 48 reused channels."""

    def __init__(self, cfg: DVTConfig, feature_reuse: bool, drop_path: float = 0.0):
        super().__init__()
        dim, reuse = cfg.embed_dim, cfg.reuse_dim if feature_reuse else 0
        self.feature_reuse = feature_reuse
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim + reuse, eps=cfg.norm_eps)
        self.mlp = Mlp(dim + reuse, int(dim * cfg.mlp_ratio), dim, cfg.drop_rate)
        if feature_reuse:
            # (sic) the published key name
            self.feature_resuse_mlp = nn.Sequential(nn.LayerNorm(dim, eps=cfg.norm_eps), Mlp(dim, cfg.reuse_hidden, cfg.reuse_dim))

    def reused_features(self, prev: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """F from the previous stage's features ``prev (B, 1+s*s, C_prev)`` -> (B, 1+g*g, 48)."""
        B = prev.shape[0]
        s = m.shape[1]  # m: (g, s)
        f = self.feature_resuse_mlp(prev)[:, 1:, :]  # (B, s*s, 48), class token dropped
        f = f.transpose(1, 2).reshape(B, -1, s, s)  # (B, 48, s, s)
        f = _resize_last2(f, m).flatten(2).transpose(1, 2)  # (B, g*g, 48)
        return F.pad(f, (0, 0, 1, 0))  # (B, 1+g*g, 48): a zero row for the class token

    def forward(
        self, x: torch.Tensor, reused_feat: Optional[torch.Tensor], reused_rel: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a, rel = self.attn(self.norm1(x), reused_rel)
        x = x + self.drop_path(a)
        z = torch.cat([x, reused_feat], dim=2) if self.feature_reuse else x
        x = x + self.drop_path(self.mlp(self.norm2(z)))
        return x, rel


# --------------------------------------------------------------------------- tokenizers


class TokenPerformer(nn.Module):
    """T2T-ViT's single-head performer (linear attention with random features)."""

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.emb = emb
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb))
        # the published y / (d + 1e-8)'s epsilon as a (1, 1, 1) tensor: the ONNX exporter's optimizer drops an
        # Add of a scalar constant within 1e-8 of zero (then 0/0 = NaN when prm_exp underflows), not of a tensor
        self.register_buffer("eps", torch.full((1, 1, 1), 1e-8), persistent=False)
        self.m = int(emb * kernel_ratio)
        w = torch.empty(self.m, emb)
        if w.device.type != "meta":
            w = nn.init.orthogonal_(w) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def prm_exp(self, x: torch.Tensor) -> torch.Tensor:
        # phi(x) = exp(x . w^T - |x|^2 / 2) / sqrt(m): (B, T, emb) -> (B, T, m)
        xd = (x * x).sum(dim=-1, keepdim=True) / 2
        return torch.exp(F.linear(x, self.w) - xd) / math.sqrt(self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # slices, linear and 3-D bmm rather than split and broadcast matmuls: the same numbers,
        # and no copies (split_with_sizes_copy, expand_copy) outside ExecuTorch's XNNPACK delegate
        kqv = self.kqv(self.norm1(x))
        k, q, v = (kqv[:, :, i * self.emb : (i + 1) * self.emb] for i in range(3))
        kp, qp = self.prm_exp(k), self.prm_exp(q)  # (B, T, m)
        d = torch.bmm(qp, kp.sum(dim=1).unsqueeze(-1))  # (B, T, 1)
        kptv = torch.bmm(v.transpose(1, 2), kp)  # (B, emb, m)
        # y / (d + 1e-8) exactly as published (the earlier (y * 1e8) / (d * 1e8 + 1), which kept the
        # epsilon from the optimizer, overflowed float16 (Core ML fp16/int8) to inf / inf = NaN)
        y = torch.bmm(qp, kptv.transpose(1, 2)) / (d + self.eps)  # (B, T, emb)
        y = v + self.proj(y)
        return y + self.mlp(self.norm2(y))


def _tokens_to_map(x: torch.Tensor) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w) for a square grid."""
    B, n, C = x.shape
    h = math.isqrt(n)
    assert h * h == n, f"token count {n} is not a square grid"
    return x.transpose(1, 2).reshape(B, C, h, h)


class SoftSplit(nn.Module):
    """``nn.Unfold(k, s, p)`` written as a grouped convolution with one-hot kernels.

    (B, C, H, W) -> (B, C*k*k, L), output channel ``c*k*k + i*k + j`` = input channel ``c`` at
    kernel offset (i, j), as Unfold orders them. Each output is one input value times 1 plus
    zeros, so the numbers are Unfold's, but the op is a convolution, which every backend runs
    in its fast path (ExecuTorch's XNNPACK leaves Unfold's gather/index ops outside the
    delegate). The kernels are a non-persistent buffer: checkpoints are unchanged.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.channels, self.kernel_size, self.stride, self.padding = channels, kernel_size, stride, padding
        kk = kernel_size * kernel_size
        w = torch.zeros(channels, kk, kk)
        w[:, torch.arange(kk), torch.arange(kk)] = 1.0  # kernel m (= i*k + j) picks offset (i, j)
        self.register_buffer("weight", w.reshape(channels * kk, 1, kernel_size, kernel_size), persistent=False)
        self.as_unfold = False  # FLOP counting: a copy, no multiply-accumulates (as the paper counts Unfold)
        self.blocked = False  # the same numbers by slices and concatenations (see ``_blocked``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_unfold:
            return F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        if self.blocked:
            return self._blocked(x)
        y = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.channels)  # (B, C*k*k, h, w)
        return y.flatten(2)  # (B, C*k*k, h*w)

    def _blocked(self, x: torch.Tensor) -> torch.Tensor:
        """Unfold as data movement only: cut the padded image into stride x stride blocks, take each
        window's ceil(k/s)^2 blocks by slices, join them and crop to k x k. No multiply-accumulates,
        where the one-hot convolution does k*k per value: faster on XNNPACK for large kernels
        (T2T's 14x14 stride 8 split), slower for small ones and on ONNX Runtime (measured)."""
        k, s, p = self.kernel_size, self.stride, self.padding
        B, C, H, W = x.shape
        h, w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        nb = -(-k // s)  # blocks per window side
        hp, wp = (h - 1 + nb) * s, (w - 1 + nb) * s  # padded size covering every window's blocks
        xp = F.pad(x, (p, p + max(0, wp - W - 2 * p), p, p + max(0, hp - H - 2 * p)))
        if xp.shape[2] != hp or xp.shape[3] != wp:  # pixels no window reaches (no no-op slice: an alias op)
            xp = xp[:, :, :hp, :wp]
        xb = xp.reshape(B * C, h - 1 + nb, s, w - 1 + nb, s)  # (B*C, block row, s, block col, s)
        rows = [torch.cat([xb[:, a : a + h, :, b : b + w, :] for b in range(nb)], dim=4) for a in range(nb)]
        win = torch.cat(rows, dim=2)[:, :, :k, :, :k]  # (B*C, h, k, w, k): window (y, x) at offset (i, j)
        return win.permute(0, 2, 4, 1, 3).reshape(B, C * k * k, h * w)  # Unfold's order: c*k*k + i*k + j, y*w + x


class T2TTokenizer(nn.Module):
    """Tokens-to-token module (performer version): image -> (B, g*g, embed)."""

    def __init__(self, cfg: DVTConfig, stage: int):
        super().__init__()
        k, s, p = cfg.splits[stage]
        self.soft_split0 = SoftSplit(cfg.in_chans, k, s, p)
        self.soft_split1 = SoftSplit(cfg.token_dim, 3, 2, 1)
        self.soft_split2 = SoftSplit(cfg.token_dim, 3, 2, 1)
        self.attention1 = TokenPerformer(cfg.in_chans * k * k, cfg.token_dim)
        self.attention2 = TokenPerformer(cfg.token_dim * 9, cfg.token_dim)
        self.project = nn.Linear(cfg.token_dim * 9, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x).transpose(1, 2))  # (B, h0*w0, 64)
        x = self.attention2(self.soft_split1(_tokens_to_map(x)).transpose(1, 2))  # (B, h1*w1, 64)
        return self.project(self.soft_split2(_tokens_to_map(x)).transpose(1, 2))  # (B, g*g, embed)


class PatchTokenizer(nn.Module):
    """DeiT patch embedding: one strided conv."""

    def __init__(self, cfg: DVTConfig, stage: int):
        super().__init__()
        k, s, p = cfg.splits[stage]
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, g*g, embed)


class ConvTokenizer(nn.Module):
    """Small conv stem (3x3 conv, then 3x3 stride-2 conv) then a strided conv to the grid."""

    def __init__(self, cfg: DVTConfig, stage: int):
        super().__init__()
        k, s, p = cfg.splits[stage]
        c = cfg.token_dim
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, c // 2, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(c // 2, c, 3, 2, 1),
            nn.GELU(),
        )
        self.proj = nn.Conv2d(c, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, g*g, embed)


class ConvBNTokenizer(nn.Module):
    """A stronger conv stem for natural images: three 3x3 convs with BatchNorm (the second stride 2;
    ``stem_blocks`` may drop the third), then the strided conv to the token grid. BatchNorm folds
    into the convs at inference."""

    def __init__(self, cfg: DVTConfig, stage: int):
        super().__init__()
        k, s, p = cfg.splits[stage]
        c = cfg.token_dim

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]

        third = block(c, c, 1) if not cfg.stem_blocks or cfg.stem_blocks[stage] == 3 else []
        self.stem = nn.Sequential(*block(cfg.in_chans, c // 2, 1), *block(c // 2, c, 2), *third)
        self.proj = nn.Conv2d(c, cfg.embed_dim, kernel_size=k, stride=s, padding=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, g*g, embed)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def tokenizer_grid(cfg: DVTConfig, stage: int) -> int:
    """Side of the token grid the stage's tokenizer produces from its input image."""
    k, s, p = cfg.splits[stage]
    n = cfg.stage_img_size(stage)
    if cfg.tokenizer == "t2t":
        return _conv_out(_conv_out(_conv_out(n, k, s, p), 3, 2, 1), 3, 2, 1)
    if cfg.tokenizer in ("conv", "convbn"):
        return _conv_out(_conv_out(n, 3, 2, 1), k, s, p)
    return _conv_out(n, k, s, p)


TOKENIZERS: dict[str, Callable[[DVTConfig, int], nn.Module]] = {
    "t2t": T2TTokenizer,
    "patch": PatchTokenizer,
    "conv": ConvTokenizer,
    "convbn": ConvBNTokenizer,
}
_TOKENIZER_ATTR = {"t2t": "tokens_to_token", "patch": "patch_embed", "conv": "patch_embed", "convbn": "patch_embed"}


def sinusoid_table(n_position: int, d: int) -> torch.Tensor:
    """(1, n_position, d): sin at even channels, cos at odd, angle = pos / 10000^(2*(j//2)/d)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


# --------------------------------------------------------------------------- a stage


class DVTStage(nn.Module):
    """One exit: ``(image, features, relations) -> (logits, features, relations)``.

    ``features``: previous stage's last-block output (B, 1+s*s, embed);
    ``relations``: previous stage's stacked attention logits (B, depth*heads, 1+s*s, 1+s*s).
    Both are None for the first stage.
    """

    def __init__(self, cfg: DVTConfig, index: int):
        super().__init__()
        self.cfg, self.index = cfg, index
        self.grid = cfg.grids[index]
        self.num_tokens = 1 + self.grid * self.grid
        self.reuse = index > 0
        setattr(self, _TOKENIZER_ATTR[cfg.tokenizer], TOKENIZERS[cfg.tokenizer](cfg, index))
        self.tokenizer_attr = _TOKENIZER_ATTR[cfg.tokenizer]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        pe = sinusoid_table(self.num_tokens, cfg.embed_dim) if cfg.pos_embed == "sinusoid" else torch.zeros(1, self.num_tokens, cfg.embed_dim)
        self.pos_embed = nn.Parameter(pe, requires_grad=cfg.pos_embed == "learned")
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.depth = depth = cfg.stage_depth(index)
        dpr = [cfg.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        feat = self.reuse and cfg.feature_reuse
        self.blocks = nn.ModuleList([Block(cfg, feat, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        maps = depth * cfg.num_heads
        if self.reuse and cfg.relation_reuse:  # previous stage's depth x heads maps -> this stage's
            self.relation_reuse_conv = nn.Sequential(
                nn.Conv2d(cfg.stage_depth(index - 1) * cfg.num_heads, maps * 3, 1), nn.GELU(), nn.Conv2d(maps * 3, maps, 1)
            )
        self.input_size = cfg.stage_img_size(index)
        if self.input_size != cfg.img_size:  # image -> this stage's resolution, in the graph
            self.register_buffer("input_resize", area_matrix(cfg.img_size, self.input_size).float(), persistent=False)
        if self.reuse:
            prev = cfg.grids[index - 1]
            m = resize_matrix(prev, cfg.reuse_upsample[index], self.grid).float()
            self.register_buffer("reuse_resize", m, persistent=False)  # (g, s)
        self._init_weights()

    # -- init (timm-style trunc-normal linears, as T2T-ViT)
    def _init_weights(self) -> None:
        if self.cls_token.device.type == "meta":
            return
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed.requires_grad:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def tokenizer(self) -> nn.Module:
        return getattr(self, self.tokenizer_attr)

    @property
    def prev_tokens(self) -> int:
        g = self.cfg.grids[self.index - 1]
        return 1 + g * g

    def input_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Named input shapes of this stage (what an exported graph takes)."""
        c = self.cfg
        shapes = {"image": (batch, c.in_chans, c.img_size, c.img_size)}
        if self.reuse:
            n = self.prev_tokens
            shapes["features"] = (batch, n, c.embed_dim)
            shapes["relations"] = (batch, c.stage_depth(self.index - 1) * c.num_heads, n, n)
        return shapes

    def output_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        c, n = self.cfg, self.num_tokens
        return {
            "logits": (batch, c.num_classes),
            "features": (batch, n, c.embed_dim),
            "relations": (batch, self.depth * c.num_heads, n, n),
        }

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.index)
        return tuple(torch.randn(s, generator=g) for s in self.input_shapes(batch).values())

    # -- forward, in parts
    def check_inputs(self, x: torch.Tensor, features: Optional[torch.Tensor], relations: Optional[torch.Tensor]) -> None:
        c = self.cfg
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(
                f"exit {self.index + 1} expects images of shape (B, {c.in_chans}, {c.img_size}, {c.img_size}) "
                f"(NCHW, {c.in_chans} channel(s)); got {tuple(x.shape)}"
            )
        if self.reuse:
            want = self.input_shapes(x.shape[0])
            for name, t in (("features", features), ("relations", relations)):
                if t is None:
                    raise ValueError(f"exit {self.index + 1} reuses the previous exit's {name}; pass them (shape {want[name]})")
                if tuple(t.shape) != want[name]:
                    raise ValueError(f"exit {self.index + 1}: {name} must have shape {want[name]}; got {tuple(t.shape)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> tokens with class token and position embedding: (B, 1+g*g, embed)."""
        if self.input_size != self.cfg.img_size:
            x = _resize_last2(x, self.input_resize)  # (B, C, r, r), area downscale
        t = self.tokenizer(x)
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, t], dim=1) + self.pos_embed)

    def reuse_relations(self, relations: torch.Tensor) -> list[torch.Tensor]:
        """Previous relations (B, D*H, 1+s*s, 1+s*s) -> depth tensors (B, H, 1+g*g, 1+g*g)."""
        m = self.reuse_resize
        s, g = m.shape[1], m.shape[0]
        r = self.relation_reuse_conv(relations)  # (B, D*H, n, n)
        B, maps, n, _ = r.shape
        # key axis: (B, D*H, n, 1+s*s) -> (B, D*H, n, 1+g*g)
        keys = _resize_last2(r[..., 1:].reshape(B, maps, n, s, s), m).reshape(B, maps, n, g * g)
        r = torch.cat([r[..., :1], keys], dim=-1)
        # query axis: same on the transposed map, class-token query row kept aside
        rt = r.transpose(-1, -2)  # (B, D*H, 1+g*g, n)
        queries = _resize_last2(rt[..., 1:].reshape(B, maps, -1, s, s), m).reshape(B, maps, -1, g * g)
        r = torch.cat([rt[..., :1], queries], dim=-1).transpose(-1, -2)  # (B, D*H, 1+g*g, 1+g*g)
        return list(torch.split(r, self.cfg.num_heads, dim=1))

    def forward(
        self, x: torch.Tensor, features: Optional[torch.Tensor] = None, relations: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_inputs(x, features, relations)
        c = self.cfg
        rel_in: Sequence[Optional[torch.Tensor]] = [None] * self.depth
        if self.reuse and c.relation_reuse:
            rel_in = self.reuse_relations(relations)
        tokens = self.embed(x)
        rels = []
        for blk, r in zip(self.blocks, rel_in):
            f = blk.reused_features(features, self.reuse_resize) if blk.feature_reuse else None
            tokens, rel = blk(tokens, f, r)
            rels.append(rel)
        logits = self.head(self.norm(tokens)[:, 0])
        return logits, tokens, torch.cat(rels, dim=1)


# --------------------------------------------------------------------------- the cascade


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # a model's name names folders and files: bundles/<name>-<target>-...


def check_model_name(name: object) -> str:
    """``name`` if it is a plain model name (letters, digits, ``_ . + -``; no path separator; not hidden), else ValueError:
    a checkpoint's stored name becomes part of output paths, and ``../x`` or ``/tmp/x`` would write outside ``--out``."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} is not a plain name: use letters, digits and '_', '.', '+', '-' (at most 128, not "
                         "starting with '.' or '-'); it names output folders, so a path in it would write elsewhere")
    return name


class DVT(nn.Module):
    """A cascade of DVT stages. ``model(x)`` returns every exit's logits, in exit order."""

    def __init__(self, cfg: DVTConfig, name: str = "dvt"):
        super().__init__()
        self.cfg, self.name = cfg, check_model_name(name)
        self.stage_names = STAGE_NAMES if cfg.num_exits == 3 else tuple(f"stage{i}" for i in range(cfg.num_exits))
        for i, n in enumerate(self.stage_names):
            self.add_module(n, DVTStage(cfg, i))
        self._exits: Optional[list[ExitInfo]] = None

    @property
    def stages(self) -> tuple[DVTStage, ...]:
        return tuple(getattr(self, n) for n in self.stage_names)

    @property
    def num_exits(self) -> int:
        return self.cfg.num_exits

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits, feats, rels = [], None, None
        for stage in self.stages:
            out, feats, rels = stage(x, feats, rels)
            logits.append(out)
        return logits

    @property
    def exits(self) -> list[ExitInfo]:
        """Per-exit metadata: grid, tokens, FLOPs (MACs, cumulative), computed once on 'meta'."""
        if self._exits is None:
            self._exits = count_exit_flops(self.cfg)
        return self._exits

    def constructor_args(self) -> dict:
        return {"name": self.name, "config": self.cfg.to_dict()}


_FLOPS_CACHE: dict[DVTConfig, list[ExitInfo]] = {}


def count_exit_flops(cfg: DVTConfig) -> list[ExitInfo]:
    """Count each stage's multiply-accumulates from its real graph with torch's flop counter.

    Runs on the 'meta' device (no memory, no compute). Counts matmuls and convolutions
    (torch counts 2 FLOPs per MAC; we report MACs, the paper's "FLOPs").
    """
    from torch.utils.flop_counter import FlopCounterMode

    if cfg in _FLOPS_CACHE:
        return _FLOPS_CACHE[cfg]
    cfg_eval = dataclasses.replace(cfg, drop_rate=0.0, drop_path_rate=0.0)
    with torch.device("meta"):
        model = DVT(cfg_eval).eval()
    for m in model.modules():
        if isinstance(m, SoftSplit):
            m.as_unfold = True
    exits, total = [], 0
    feats = rels = None
    with torch.no_grad():
        for i, stage in enumerate(model.stages):
            inputs = [t.to("meta") for t in stage.example_inputs(1)]
            counter = FlopCounterMode(display=False)
            with counter:
                _, feats, rels = stage(*inputs)
            macs = counter.get_total_flops() // 2
            total += macs
            exits.append(ExitInfo(i, stage.grid, stage.num_tokens, macs, total))
    _FLOPS_CACHE[cfg] = exits
    return exits


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, DVTConfig] = {}
_DESCRIPTIONS: dict[str, str] = {}
#: Per variant (as timm's ``_cfg``): the preprocessing it is trained with (a
#: ``dvt_runtime.Preprocess`` as a dict) and its default dataset spec.
_DEFAULTS: dict[str, dict] = {}

#: Preprocessing presets by name.
PREPROCESS_PRESETS: dict[str, dict] = {
    "fashion-mnist": dict(size=28, resize=28, channels="gray", mean=(0.2860,), std=(0.3530,), interpolation="area"),
    "cifar10": dict(size=32, resize=32, channels="rgb", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), interpolation="area"),
    # ImageNet evaluation of T2T-ViT / DeiT: resize to 224/0.875, center crop, bicubic as Pillow does it (it smooths when it shrinks)
    "imagenet": dict(size=224, resize=256, channels="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="pil-bicubic"),
}


def register_model(name: str, cfg: DVTConfig, description: str = "", preprocess: Optional[str] = None, dataset: str = "") -> DVTConfig:
    """Add a variant to the registry. ``preprocess`` names a preset of :data:`PREPROCESS_PRESETS` with the variant's
    channels, taken at its size (statistics, resize method and crop ratio kept: ``imagenet`` at 384 px resizes to 439
    and crops 384). Left out: the preset of its exact channels and size (``cifar10`` for 32 px RGB, ``fashion-mnist``
    for 28 px gray), else ImageNet's statistics (RGB) or Fashion-MNIST's (gray) at its size. It had been ImageNet's
    224 px preset for any model, which training replaced unsaid."""
    check_model_name(name)
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if preprocess is not None and preprocess not in PREPROCESS_PRESETS:
        raise ValueError(f"unknown preprocess preset {preprocess!r}; valid: {sorted(PREPROCESS_PRESETS)}")
    channels = {1: "gray", 3: "rgb"}.get(cfg.in_chans)
    if channels is None:
        raise ValueError(f"{name!r} takes {cfg.in_chans} input channels: images are preprocessed to 1 (gray) or 3 (rgb); "
                         "register a variant with in_chans 1 or 3")
    if preprocess is not None and PREPROCESS_PRESETS[preprocess]["channels"] != channels:
        fits = sorted(k for k, v in PREPROCESS_PRESETS.items() if v["channels"] == channels)
        raise ValueError(f"preprocess preset {preprocess!r} is {PREPROCESS_PRESETS[preprocess]['channels']}; {name!r} takes "
                         f"{channels} images ({cfg.in_chans} channel(s)): pass one of {fits}, or leave preprocess out")
    if preprocess is None:
        preprocess = next((k for k, v in PREPROCESS_PRESETS.items() if (v["size"], v["channels"]) == (cfg.img_size, channels)), None)
    if preprocess is None:  # no preset of its size: the statistics a fresh model of this shape trains with
        from dvt_edge.imageset import default_preprocess

        pre = default_preprocess(cfg.in_chans, cfg.img_size).to_dict()
    else:  # the preset at the variant's size, its crop ratio kept
        v = PREPROCESS_PRESETS[preprocess]
        pre = dict(v, size=cfg.img_size, resize=int(round(cfg.img_size * v["resize"] / v["size"])))
    _REGISTRY[name] = cfg
    _DESCRIPTIONS[name] = description
    _DEFAULTS[name] = {"preprocess": pre, "dataset": dataset}
    return cfg


def model_defaults(name: str) -> dict:
    """``{"preprocess": dict, "dataset": spec}`` a registered variant is trained with."""
    d = _DEFAULTS[_check_name(name)]
    return {"preprocess": dict(d["preprocess"]), "dataset": d["dataset"]}


def imagenet_layout(name: str) -> bool:
    """Whether a registered variant takes ImageNet's preprocessing statistics (the published checkpoints', at any size)."""
    imagenet = PREPROCESS_PRESETS["imagenet"]
    return name in _DEFAULTS and all(tuple(_DEFAULTS[name]["preprocess"][k]) == imagenet[k] for k in ("mean", "std"))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS[_check_name(name)]


def _check_name(name: str) -> str:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}.{hint}")
    return name


def get_config(name: str, num_classes: Optional[int] = None, **overrides) -> DVTConfig:
    cfg = _REGISTRY[_check_name(name)]
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    valid = {f.name for f in dataclasses.fields(DVTConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown override(s) {bad} for {name}; valid: {sorted(valid)}")
    return dataclasses.replace(cfg, **_tupleize(overrides))


def create_model(name: str, num_classes: Optional[int] = None, **overrides) -> DVT:
    """Build a registered DVT variant; ``overrides`` replace any :class:`DVTConfig` field."""
    return DVT(get_config(name, num_classes, **overrides), name=name)


def model_from_args(args: dict) -> DVT:
    """Rebuild a model from :meth:`DVT.constructor_args` (what our checkpoints store)."""
    return DVT(DVTConfig.from_dict(args["config"]), name=args.get("name", "dvt"))


# Published layouts (ImageNet, 224x224, 3 exits at 7x7 / 10x10 / 14x14).
register_model(
    "dvt_t2t_vit_12",
    DVTConfig(embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "DVT on T2T-ViT-12 (published checkpoint layout), 224x224 RGB, 1000 classes",
)
register_model(
    "dvt_t2t_vit_14",
    DVTConfig(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "DVT on T2T-ViT-14 (published checkpoint layout), 224x224 RGB, 1000 classes",
)
register_model(
    "dvt_deit_small",
    DVTConfig(
        embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True, tokenizer="patch",
        splits=((32, 32, 0), (23, 23, 3), (16, 16, 0)), pos_embed="learned", norm_eps=1e-6,
    ),
    "DVT on DeiT-small (published checkpoint layout), 224x224 RGB, 1000 classes",
)
# Small variants for 28x28 grayscale input (Fashion-MNIST): same stages, same reuse; each
# variant is the base plus its differences (as timm's dict(model_args, **kwargs)).
_FMNIST = dict(img_size=28, in_chans=1, num_classes=10, mlp_ratio=2.0, tokenizer="conv", grids=(3, 5, 7),
               reuse_upsample=(0, 6, 10), pos_embed="learned")
_FMNIST_TINY = dict(_FMNIST, embed_dim=64, depth=4, num_heads=4, token_dim=32, reuse_dim=16, reuse_hidden=32)
register_model(
    "dvt_tiny_fmnist",
    DVTConfig(**dict(_FMNIST_TINY, splits=((6, 4, 0), (4, 3, 1), (2, 2, 0)))),
    "small DVT for 28x28 grayscale, every stage sees the full 28px image (ablation: its exits barely separate)",
    preprocess="fashion-mnist", dataset="fashion-mnist",
)
register_model(
    "dvt_tiny_fmnist_ms",
    DVTConfig(**dict(_FMNIST_TINY, stage_img_sizes=(12, 18, 28), splits=((2, 2, 0), (3, 2, 1), (2, 2, 0)))),
    "second reference: small DVT for 28x28 grayscale, stages see 12px / 18px / 28px -> 3x3 / 5x5 / 7x7 tokens",
    preprocess="fashion-mnist", dataset="fashion-mnist",
)
register_model(
    "dvt_micro_fmnist",
    DVTConfig(**dict(_FMNIST, embed_dim=32, depth=2, num_heads=2, token_dim=8, splits=((6, 4, 0), (4, 3, 1), (2, 2, 0)),
                     reuse_dim=8, reuse_hidden=16)),
    "micro DVT for tests (28x28 grayscale), exits at 3x3 / 5x5 / 7x7 tokens",
    preprocess="fashion-mnist", dataset="fashion-mnist",
)
register_model(
    "dvt_t2t_micro",
    DVTConfig(
        img_size=64, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, tokenizer="t2t",
        token_dim=16, grids=(2, 3, 4), splits=((8, 8, 0), (9, 5, 0), (7, 4, 2)), reuse_upsample=(0, 4, 6),
        reuse_dim=8, reuse_hidden=16,
    ),
    "micro T2T DVT for tests (64x64 RGB): the published T2T stage structure (performer tokenizer, Unfold) at toy size",
)
# Natural images: 32x32 RGB (CIFAR-10). Conv stem, stages see 16 / 24 / 32 px -> 4x4 / 6x6 / 8x8 tokens.
register_model(
    "dvt_small_cifar",
    DVTConfig(
        img_size=32, in_chans=3, num_classes=10, embed_dim=96, depth=3, num_heads=2, mlp_ratio=2.0,
        tokenizer="convbn", token_dim=64, grids=(4, 6, 8), stage_img_sizes=(16, 24, 32),
        splits=((2, 2, 0), (2, 2, 0), (2, 2, 0)), reuse_upsample=(0, 12, 16),
        reuse_dim=24, reuse_hidden=48, pos_embed="learned",
    ),
    "the reference: DVT for 32x32 RGB natural images (CIFAR-10), stages see 16px / 24px / 32px -> 4x4 / 6x6 / 8x8 tokens",
    preprocess="cifar10", dataset="cifar10-ref",
)
#: the variants dvt-edge registers itself (one a launcher script registers is in the registry only in that process)
BUILTIN_MODELS = frozenset(_REGISTRY)
