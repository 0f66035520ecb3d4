"""A literal, functional re-implementation of the published DVT stage, for equality tests.

Written from the architecture spec with the operations it names (einsum performer,
nearest upsample + adaptive average pooling, per-(batch, map) relation resizing), and
reading weights by their published key names. Slow and simple on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = [1e-5]  # LayerNorm eps of the model being computed: T2T-ViT's 1e-5, DeiT's 1e-6 (set by stage_forward)

#: DeiT-S DVT's patch embedding per stage (kernel = stride, padding), from the published code: 224 px -> 7x7, 10x10, 14x14
DEIT_PATCH = {0: (32, 0), 1: (23, 3), 2: (16, 0)}


def _ln(p, pre, x):
    return F.layer_norm(x, (x.shape[-1],), p[pre + "weight"], p[pre + "bias"], _EPS[0])


def _lin(p, pre, x):
    return F.linear(x, p[pre + "weight"], p.get(pre + "bias"))


def resize_reference(x: torch.Tensor, mid: int, out: int) -> torch.Tensor:
    """The definition: nearest upsample to mid x mid, then adaptive average pool to out x out."""
    return F.adaptive_avg_pool2d(F.interpolate(x, size=(mid, mid), mode="nearest"), (out, out))


def performer(p, pre, x):
    x = _ln(p, pre + "norm1.", x)
    kqv = _lin(p, pre + "kqv.", x)
    emb = kqv.shape[-1] // 3
    k, q, v = kqv[..., :emb], kqv[..., emb : 2 * emb], kqv[..., 2 * emb :]
    w = p[pre + "w"]
    m = w.shape[0]

    def prm_exp(t):
        xd = (t * t).sum(dim=-1, keepdim=True).repeat(1, 1, m) / 2
        return torch.exp(torch.einsum("bti,mi->btm", t, w) - xd) / math.sqrt(m)

    kp, qp = prm_exp(k), prm_exp(q)
    d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
    kptv = torch.einsum("bin,bim->bnm", v, kp)
    y = torch.einsum("bti,bni->btn", qp, kptv) / (d.repeat(1, 1, emb) + 1e-8)
    y = v + _lin(p, pre + "proj.", y)
    h = _ln(p, pre + "norm2.", y)
    return y + _lin(p, pre + "mlp.2.", F.gelu(_lin(p, pre + "mlp.0.", h)))


def t2t(p, pre, x, split0):
    k, s, pad = split0
    t = F.unfold(x, k, stride=s, padding=pad).transpose(1, 2)
    t = performer(p, pre + "attention1.", t)
    B, n, C = t.shape
    h = int(math.isqrt(n))
    t = F.unfold(t.transpose(1, 2).reshape(B, C, h, h), 3, stride=2, padding=1).transpose(1, 2)
    t = performer(p, pre + "attention2.", t)
    B, n, C = t.shape
    h = int(math.isqrt(n))
    t = F.unfold(t.transpose(1, 2).reshape(B, C, h, h), 3, stride=2, padding=1).transpose(1, 2)
    return _lin(p, pre + "project.", t)


def relation_reuse(p, pre, rel, heads, depth, s, mid, g):
    """rel: (B, depth*heads, 1+s*s, 1+s*s) -> list of depth (B, heads, 1+g*g, 1+g*g)."""
    r = F.conv2d(rel, p[pre + "relation_reuse_conv.0.weight"], p[pre + "relation_reuse_conv.0.bias"])
    r = F.conv2d(F.gelu(r), p[pre + "relation_reuse_conv.2.weight"], p[pre + "relation_reuse_conv.2.bias"])
    B, maps, n, _ = r.shape
    r = r.reshape(B * maps, n, n)
    # key axis: the n query rows are channels of an s x s key map
    cls_k, keys = r[:, :, :1], r[:, :, 1:].reshape(B * maps, n, s, s)
    keys = resize_reference(keys, mid, g).reshape(B * maps, n, g * g)
    r = torch.cat([cls_k, keys], dim=2)  # (B*maps, n, 1+g*g)
    # query axis
    r = r.transpose(1, 2)  # (B*maps, 1+g*g, n)
    cls_q, qs = r[:, :, :1], r[:, :, 1:].reshape(B * maps, 1 + g * g, s, s)
    qs = resize_reference(qs, mid, g).reshape(B * maps, 1 + g * g, g * g)
    r = torch.cat([cls_q, qs], dim=2).transpose(1, 2).reshape(B, maps, 1 + g * g, 1 + g * g)
    return [r[:, i * heads : (i + 1) * heads] for i in range(depth)]


def feature_reuse(p, pre, feats, s, mid, g):
    f = _ln(p, pre + "feature_resuse_mlp.0.", feats)
    f = _lin(p, pre + "feature_resuse_mlp.1.fc2.", F.gelu(_lin(p, pre + "feature_resuse_mlp.1.fc1.", f)))
    f = f[:, 1:, :]
    B, n, C = f.shape
    f = f.transpose(1, 2).reshape(B, C, s, s)
    f = resize_reference(f, mid, g).flatten(2).transpose(1, 2)
    return torch.cat([torch.zeros(B, 1, C), f], dim=1)


def stage_forward(p, pre, cfg, index, x, feats=None, rels=None):
    """The published stage on weights ``p`` (a state dict), per the spec."""
    heads, depth, C = cfg.num_heads, cfg.depth, cfg.embed_dim
    g = cfg.grids[index]
    if cfg.tokenizer == "t2t":
        _EPS[0] = 1e-5
        tokens = t2t(p, pre + "tokens_to_token.", x, cfg.splits[index])
    else:  # DeiT: one strided conv
        _EPS[0] = 1e-6
        k, pad = DEIT_PATCH[index]
        tokens = F.conv2d(x, p[pre + "patch_embed.proj.weight"], p[pre + "patch_embed.proj.bias"], stride=k, padding=pad)
        tokens = tokens.flatten(2).transpose(1, 2)
    B = tokens.shape[0]
    tokens = torch.cat([p[pre + "cls_token"].expand(B, -1, -1), tokens], dim=1) + p[pre + "pos_embed"]
    rel_in = [None] * depth
    if index > 0:
        s, mid = cfg.grids[index - 1], cfg.reuse_upsample[index]
        rel_in = relation_reuse(p, pre, rels, heads, depth, s, mid, g)
    out_rels = []
    for i in range(depth):
        b = f"{pre}blocks.{i}."
        h = _ln(p, b + "norm1.", tokens)
        n = h.shape[1]
        qkv = _lin(p, b + "attn.qkv.", h).reshape(B, n, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5
        if rel_in[i] is not None:
            a = a + rel_in[i]
        out_rels.append(a)
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(B, n, C)
        tokens = tokens + _lin(p, b + "attn.proj.", y)
        z = tokens
        if index > 0:
            z = torch.cat([tokens, feature_reuse(p, b, feats, cfg.grids[index - 1], cfg.reuse_upsample[index], g)], dim=2)
        z = _ln(p, b + "norm2.", z)
        tokens = tokens + _lin(p, b + "mlp.fc2.", F.gelu(_lin(p, b + "mlp.fc1.", z)))
    logits = _lin(p, pre + "head.", _ln(p, pre + "norm.", tokens)[:, 0])
    return logits, tokens, torch.cat(out_rels, dim=1)
