"""--finetune across layouts: a new token grid resamples learned position embeddings; deeper stages
start as the identity, so the fine-tuned model begins with the source's answers."""

from __future__ import annotations

import torch

from dvt_edge import save_checkpoint
from dvt_edge.models import create_model
from dvt_edge.train import _finetune_init
from dvt_edge.transfer import resample_pos_embed

GRID_474 = dict(grids=(4, 7, 8), stage_img_sizes=(16, 28, 32), reuse_upsample=(0, 14, 16))


def test_resampling_keeps_the_class_token_and_the_grid_geometry():
    g, h, C = 6, 7, 4
    r = torch.arange(g, dtype=torch.float32).repeat_interleave(g)  # row index of each grid token
    c = torch.arange(g, dtype=torch.float32).repeat(g)  # column index
    grid = torch.stack([r, c, r + c, torch.zeros(g * g)], dim=1)  # (g*g, C)
    pe = torch.cat([torch.full((1, C), 5.0), grid])[None]  # (1, 1+g*g, C)
    out = resample_pos_embed(pe, 1 + h * h)
    assert out.shape == (1, 1 + h * h, C)
    assert torch.equal(out[0, 0], pe[0, 0])  # the class token's row is not a grid position
    rows = out[0, 1:].reshape(h, h, C)
    assert torch.allclose(rows[:, :, 0], rows[:, :1, 0].expand(h, h), atol=1e-5)  # channel 0 depends on the row only
    assert torch.allclose(rows[:, :, 1], rows[:1, :, 1].expand(h, h), atol=1e-5)  # channel 1 on the column only
    assert torch.all(rows[1:, 0, 0] > rows[:-1, 0, 0])  # still increasing down the rows
    assert torch.isfinite(out).all()
    assert torch.equal(resample_pos_embed(pe, 1 + g * g), pe)  # same grid: unchanged


def test_finetune_onto_a_new_grid_resamples_the_learned_position_embedding(tmp_path):
    torch.manual_seed(0)
    src = create_model("dvt_small_cifar")
    save_checkpoint(tmp_path / "src.pt", src)
    m = create_model("dvt_small_cifar", **GRID_474)
    msg = _finetune_init(m, str(tmp_path / "src.pt"), trusted=False)
    assert "position embeddings resampled to the new grid: ['less_token.pos_embed']" in msg and "re-initialised 0" in msg
    s, o = src.state_dict(), m.state_dict()
    assert o["less_token.pos_embed"].shape == (1, 50, 96) and s["less_token.pos_embed"].shape == (1, 37, 96)
    assert torch.equal(o["less_token.pos_embed"], resample_pos_embed(s["less_token.pos_embed"], 50))
    assert all(torch.equal(v, s[k]) for k, v in o.items() if k != "less_token.pos_embed")


def test_finetune_into_deeper_stages_starts_with_the_same_answers(tmp_path):
    torch.manual_seed(0)
    src = create_model("dvt_small_cifar", **GRID_474)
    for p in src.parameters():  # no zero biases left from init: a copied-or-not slip shows in the outputs
        p.data.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "src.pt", src)
    m = create_model("dvt_small_cifar", **GRID_474, stage_depths=(3, 4, 5))
    msg = _finetune_init(m, str(tmp_path / "src.pt"), trusted=False)
    assert "new blocks starting as the identity: ['less_token.blocks.3', 'normal_token.blocks.3', 'normal_token.blocks.4']" in msg
    assert "normal_token.relation_reuse_conv.0.weight" in msg and "less_token.relation_reuse_conv.2.weight" in msg
    o = m.state_dict()
    assert o["normal_token.relation_reuse_conv.0.weight"].shape[1] == 8  # stage 2's 4 blocks x 2 heads in
    assert o["normal_token.blocks.4.attn.qkv.weight"].abs().sum() > 0  # new blocks learn: only their outputs start at zero
    src.eval(), m.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(src(x), m(x)):
            assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_finetune_onto_a_finer_stride_one_grid_starts_tokens_as_source_tokens(tmp_path):
    # stage 3's 2x2 stride-2 split over its 16x16 stem map becomes 5x5 stride 1 (12x12 tokens): with
    # the source kernel at [1:3, 1:3], new token (2a-1, 2b-1) reads the stem rows 2a..2a+1 of source token (a, b)
    torch.manual_seed(0)
    src = create_model("dvt_small_cifar")
    for p in src.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "src.pt", src)
    m = create_model("dvt_small_cifar", grids=(4, 6, 12), splits=((2, 2, 0), (2, 2, 0), (5, 1, 0)), reuse_upsample=(0, 12, 24))
    msg = _finetune_init(m, str(tmp_path / "src.pt"), trusted=False)
    assert "normal_token.patch_embed.proj.weight" in msg.split("grown")[1] and "re-initialised 0" in msg
    src.eval(), m.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = src.normal_token.tokenizer(x).reshape(2, 8, 8, -1)  # (B, 8, 8, embed)
        b = m.normal_token.tokenizer(x).reshape(2, 12, 12, -1)  # (B, 12, 12, embed)
    assert torch.isfinite(b).all()
    assert torch.allclose(b[:, 1::2, 1::2], a[:, 1:7, 1:7], atol=1e-5), (b[:, 1::2, 1::2] - a[:, 1:7, 1:7]).abs().max()


def test_finetune_reads_the_weight_keys_load_checkpoint_accepts(tmp_path):
    """A file with its weights under 'state_dict' (the authors' format) or 'model', or DDP 'module.' names, fine-tunes."""
    torch.manual_seed(0)
    src = create_model("dvt_micro_fmnist")
    for key in ("state_dict", "model"):
        torch.save({key: {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / f"{key}.pth.tar")
        m = create_model("dvt_micro_fmnist")
        _finetune_init(m, str(tmp_path / f"{key}.pth.tar"), trusted=False)
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in m.state_dict().items()), key
