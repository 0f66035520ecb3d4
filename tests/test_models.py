"""The DVT model family: registry, shapes, stage chaining, reuse resize, FLOPs, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dvt_edge.models import (
    DVTConfig,
    area_matrix,
    count_exit_flops,
    create_model,
    get_config,
    list_models,
    model_defaults,
    resize_matrix,
)
from tests.reference_dvt import resize_reference, stage_forward

SMALL = [n for n in list_models() if get_config(n).img_size <= 64]
BIG = [n for n in list_models() if n not in SMALL]


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


def _randomized(name: str):
    m = _model(name)
    # random (not default-init) values everywhere, so every weight matters in comparisons
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if v.dtype.is_floating_point and not k.endswith("pos_embed"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.05 + (1.0 if k.endswith("norm1.weight") else 0.0))
    return m


@pytest.fixture(scope="module")
def t2t12():
    return _randomized("dvt_t2t_vit_12")


def test_registry_has_required_variants():
    names = list_models()
    for req in ("dvt_t2t_vit_12", "dvt_t2t_vit_14"):
        assert req in names
    small = [n for n in names if get_config(n).in_chans == 1 and get_config(n).img_size == 28]
    assert small, "need a 28x28 grayscale variant"
    for n in small:
        c = get_config(n)
        assert c.num_exits == 3 and list(c.grids) == sorted(c.grids) and len(set(c.grids)) == 3


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_stage_chain(name):
    m = _model(name)
    c = m.cfg
    for batch in (1, 4) if name in SMALL else (1, 2):
        x = torch.randn(batch, c.in_chans, c.img_size, c.img_size)
        with torch.no_grad():
            outs = m(x)
            assert isinstance(outs, list) and len(outs) == c.num_exits == len(m.stages)
            for o in outs:
                assert o.shape == (batch, c.num_classes)
            # chaining the pure stage functions by hand gives model(x)
            feats = rels = None
            for i, stage in enumerate(m.stages):
                logits, feats, rels = stage(x, feats, rels)
                shapes = stage.output_shapes(batch)
                assert tuple(feats.shape) == shapes["features"] and tuple(rels.shape) == shapes["relations"]
                torch.testing.assert_close(logits, outs[i], rtol=0, atol=0)


@pytest.mark.parametrize("name", list_models())
def test_exit_metadata_without_running(name):
    m = create_model(name)
    exits = m.exits
    assert [e.grid for e in exits] == list(m.cfg.grids)
    assert all(e.tokens == 1 + e.grid**2 for e in exits)
    flops = [e.flops for e in exits]
    assert flops == sorted(flops) and flops[0] > 0
    assert sum(e.stage_flops for e in exits) == flops[-1]


def test_t2t_vit_12_flops_match_published_pattern():
    # published (both reuses): 0.47 / 1.46 / 3.50 GFLOPs; measured from the graph here
    g = [e.gflops for e in create_model("dvt_t2t_vit_12").exits]
    assert g == pytest.approx([0.47, 1.46, 3.50], rel=0.03)


@pytest.mark.parametrize("s,mid,g", [(7, 14, 10), (10, 20, 14), (3, 6, 5), (5, 10, 7), (4, 8, 7), (7, 9, 5), (6, 13, 11)])
def test_reuse_resize_matrix_equals_upsample_pool(s, mid, g):
    x = torch.randn(3, 5, s, s, dtype=torch.float64)
    m = resize_matrix(s, mid, g)
    ours = m @ x @ m.T
    ref = resize_reference(x, mid, g)
    assert (ours - ref).abs().max().item() < 1e-12
    # float32, as the model runs it
    m32, x32 = m.float(), x.float()
    assert ((m32 @ x32 @ m32.T) - resize_reference(x32, mid, g)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["dvt_t2t_vit_12", "dvt_deit_small"])
def test_stages_equal_literal_spec_implementation(t2t12, name):
    """Every stage of dvt_t2t_vit_12 and dvt_deit_small (its patch convs and LayerNorm eps were covered by nothing) equals
    the spec's literal ops (einsum, upsample+pool)."""
    t2t12 = t2t12 if name == "dvt_t2t_vit_12" else _randomized(name)
    sd = t2t12.state_dict()
    x = torch.randn(1, 3, 224, 224)
    feats = rels = None
    ref_feats = ref_rels = None
    with torch.no_grad():
        for i, (stage, prefix) in enumerate(zip(t2t12.stages, t2t12.stage_names)):
            logits, feats, rels = stage(x, feats, rels)
            r_logits, ref_feats, ref_rels = stage_forward(sd, prefix + ".", t2t12.cfg, i, x, ref_feats, ref_rels)
            assert (logits - r_logits).abs().max().item() < 1e-4, f"exit {i + 1}"
            assert (feats - ref_feats).abs().max().item() < 1e-4
            assert (rels - ref_rels).abs().max().item() < 1e-3


def test_sinusoid_position_table_matches_definition():
    m = create_model("dvt_t2t_vit_12")
    pe = m.stages[0].pos_embed[0]  # (50, 256)
    pos, j = 7, 10
    angle = pos / 10000 ** (2 * (j // 2) / 256)
    assert pe[pos, j].item() == pytest.approx(torch.sin(torch.tensor(angle, dtype=torch.float64)).item(), abs=1e-6)
    assert pe[pos, j + 1].item() == pytest.approx(torch.cos(torch.tensor(angle, dtype=torch.float64)).item(), abs=1e-6)
    assert not m.stages[0].pos_embed.requires_grad


def test_reuse_ablation_flags_remove_modules():
    m = create_model("dvt_micro_fmnist", feature_reuse=False, relation_reuse=False)
    keys = list(m.state_dict())
    assert not any("feature_resuse_mlp" in k or "relation_reuse_conv" in k for k in keys)
    with torch.no_grad():
        assert len(m(torch.randn(2, 1, 28, 28))) == 3


def test_unknown_model_lists_registered():
    with pytest.raises(ValueError, match="registered models") as e:
        create_model("dvt_t2t_vit_13")
    assert "dvt_t2t_vit_12" in str(e.value) and "Did you mean" in str(e.value)


@pytest.mark.parametrize("src,dst", [(28, 12), (28, 18), (28, 14), (224, 150), (10, 10)])
def test_area_matrix_equals_opencv_inter_area(src, dst):
    import cv2
    import numpy as np

    x = np.random.default_rng(0).random((src, src), dtype=np.float32)
    m = area_matrix(src, dst).float()
    ours = (m @ torch.from_numpy(x) @ m.T).numpy()
    assert np.abs(ours - cv2.resize(x, (dst, dst), interpolation=cv2.INTER_AREA)).max() < 1e-5


def test_stage_img_sizes_resize_inside_each_stage():
    model = create_model("dvt_micro_fmnist", stage_img_sizes=(12, 18, 28), splits=((2, 2, 0), (3, 2, 1), (2, 2, 0))).eval()
    assert [s.input_size for s in model.stages] == [12, 18, 28] and [e.grid for e in model.exits] == [3, 5, 7]
    x = torch.rand(2, 1, 28, 28)
    stage, m = model.stages[0], area_matrix(28, 12).float()
    with torch.no_grad():  # the stage's tokens are those of the area-downscaled image
        want = torch.cat([stage.cls_token.expand(2, -1, -1), stage.tokenizer(m @ x @ m.T)], 1) + stage.pos_embed
        assert torch.allclose(stage.embed(x), want, atol=1e-6)
    assert "input_resize" not in model.state_dict()  # a constant, not a weight: same keys as without it
    with pytest.raises(ValueError, match="stage_img_sizes"):
        create_model("dvt_micro_fmnist", stage_img_sizes=(12, 28))
    with pytest.raises(ValueError, match="12px image"):
        create_model("dvt_micro_fmnist", stage_img_sizes=(12, 18, 28))  # the 28px splits do not give 3x3 on 12px


def test_stage_depths_and_stem_blocks_shape_each_stage():
    """Per-stage depth and stem: each stage's relations have its own depth x heads maps, the next
    stage's relation reuse takes them; equal entries build exactly the published layout."""
    cfg = get_config("dvt_small_cifar")
    model = create_model("dvt_small_cifar", stage_depths=(1, 2, 4), stem_blocks=(2, 3, 2)).eval()
    assert [len(s.blocks) for s in model.stages] == [1, 2, 4]
    assert [len(s.tokenizer.stem) for s in model.stages] == [6, 9, 6]  # conv, BN, GELU per block
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = rels = None
        for i, s in enumerate(model.stages):
            assert s.input_shapes(2).get("relations") == (None if i == 0 else (2, model.stages[i - 1].depth * cfg.num_heads) + rels.shape[2:])
            logits, feats, rels = s(x, feats, rels)
            assert tuple(rels.shape) == s.output_shapes(2)["relations"] == (2, s.depth * cfg.num_heads, s.num_tokens, s.num_tokens)
            assert torch.isfinite(logits).all()
    base = [e.flops for e in count_exit_flops(cfg)]
    lite = [e.flops for e in count_exit_flops(get_config("dvt_small_cifar", stage_depths=(2, 2, 3), stem_blocks=(2, 2, 3)))]
    assert lite[0] < base[0] and lite[1] < base[1] and lite[2] - lite[1] == base[2] - base[1] - (
        # stage 3 is unchanged but for its relation-reuse input: 2x2 maps from stage 2 instead of 3x2
        (3 - 2) * cfg.num_heads * 3 * cfg.stage_depth(2) * cfg.num_heads * model.stages[2].prev_tokens ** 2)
    same = create_model("dvt_small_cifar", stage_depths=(3, 3, 3), stem_blocks=(3, 3, 3)).state_dict()
    assert {k: v.shape for k, v in same.items()} == {k: v.shape for k, v in create_model("dvt_small_cifar").state_dict().items()}
    for bad, match in ((dict(stage_depths=(2, 2)), "stage_depths"), (dict(stage_depths=(2, 0, 3)), "stage_depths"),
                       (dict(stem_blocks=(1, 2, 3)), "stem_blocks"), (dict(stem_blocks=(2, 2)), "stem_blocks")):
        with pytest.raises(ValueError, match=match):
            create_model("dvt_small_cifar", **bad)
    with pytest.raises(ValueError, match="stem_blocks"):
        create_model("dvt_small_cifar", stem_blocks=(2.0, 3, 2))  # JSON floats are not block counts
    with pytest.raises(ValueError, match="stem_blocks sets the 'convbn'"):
        create_model("dvt_micro_fmnist", stem_blocks=(2, 2, 2))


def test_bad_override_and_inconsistent_config():
    with pytest.raises(ValueError, match="unknown override"):
        create_model("dvt_micro_fmnist", embed=3)
    with pytest.raises(ValueError, match="token grid"):
        create_model("dvt_micro_fmnist", grids=(3, 5, 8))
    with pytest.raises(ValueError, match="valid"):
        DVTConfig(tokenizer="vit")


@pytest.mark.parametrize("shape", [(1, 3, 28, 28), (1, 1, 32, 32), (28, 28), (2, 1, 28, 27)])
def test_wrong_input_shape_names_expected(shape):
    m = _model("dvt_micro_fmnist")
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        m(torch.randn(*shape))


def test_later_stage_requires_reuse_tensors():
    m = _model("dvt_micro_fmnist")
    with pytest.raises(ValueError, match="features"):
        m.stages[1](torch.randn(1, 1, 28, 28))


def test_training_mode_gradients_reach_every_stage():
    m = create_model("dvt_micro_fmnist", drop_path_rate=0.1).train()
    loss = sum(F.cross_entropy(o, torch.tensor([1, 2])) for o in m(torch.randn(2, 1, 28, 28)))
    loss.backward()
    for s in m.stages:
        assert s.head.weight.grad is not None and s.head.weight.grad.abs().sum() > 0
    # reuse modules are trained through later exits
    assert m.stages[1].relation_reuse_conv[0].weight.grad.abs().sum() > 0
    assert m.stages[2].blocks[0].feature_resuse_mlp[1].fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_torch_export_every_stage(name):
    """Each stage exports at batch 1 with torch.export (one graph, no breaks)."""
    m = _model(name)
    for stage in m.stages:
        inputs = stage.example_inputs(1)
        ep = torch.export.export(stage, inputs)
        with torch.no_grad():
            got = ep.module()(*inputs)
            want = stage(*inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("blocked", [False, True], ids=["one-hot-conv", "blocked"])
@pytest.mark.parametrize("channels,k,s,p,size", [(3, 7, 4, 2, 57), (64, 3, 2, 1, 28), (5, 3, 2, 1, 7), (3, 14, 8, 3, 64),
                                                 (3, 11, 6, 5, 61), (64, 3, 2, 1, 19), (2, 4, 2, 0, 9), (2, 5, 5, 0, 20)])
def test_soft_split_is_unfold_exactly(channels, k, s, p, size, blocked):
    """T2T's soft split as a one-hot grouped convolution, or as blocks, slices and concatenations:
    the very numbers of nn.Unfold (channel order c*k*k + i*k + j, padding included), so published
    T2T checkpoints keep their outputs."""
    from dvt_edge.models import SoftSplit

    x = torch.randn(2, channels, size, size) * 10
    ref = torch.nn.Unfold(kernel_size=k, stride=s, padding=p)(x)
    m = SoftSplit(channels, k, s, p)
    m.blocked = blocked
    got = m(x)
    assert got.shape == ref.shape
    assert torch.equal(got, ref)
    assert "weight" not in SoftSplit(channels, k, s, p).state_dict()  # checkpoints unchanged


def test_deit_stages_as_published():
    """The published DVT DeiT-S: the 10x10 stage's patch conv is kernel 23, stride 23, padding 3 (stride 22 without
    padding gives the same grid and weight shapes, so a published checkpoint loaded without a word), and every
    LayerNorm of the blocks, the reuse MLP and the final norm has eps 1e-6."""
    m = create_model("dvt_deit_small")
    conv = m.stages[1].tokenizer.proj
    assert (conv.kernel_size, conv.stride, conv.padding) == ((23, 23), (23, 23), (3, 3))
    assert {mod.eps for st in m.stages for mod in st.modules() if isinstance(mod, torch.nn.LayerNorm)} == {1e-6}
    assert {mod.eps for mod in create_model("dvt_t2t_micro").stages[0].blocks.modules()
            if isinstance(mod, torch.nn.LayerNorm)} == {1e-5}  # T2T-ViT: PyTorch's default


def test_performer_stays_finite_in_float16():
    """Core ML fp16 / int8 compute in float16: the performer's normalisation must not overflow it
    ((y * 1e8) / (d * 1e8 + 1) gave inf / inf = NaN on most tokens)."""
    from dvt_edge.models import TokenPerformer

    torch.manual_seed(0)
    t = TokenPerformer(147, 64).eval()
    x = torch.randn(1, 3136, 147)
    with torch.no_grad():
        ref = t(x)
        half = t.half()(x.half()).float()
    assert torch.isfinite(half).all() and (half - ref).abs().max().item() < 0.05


def test_zoo_keeps_small_models_flops_significant():
    """Rounding to 4 decimals showed the micro model's 0.000345 GFLOPs as 0.0003 (13% low)."""
    from dvt_edge.models import create_model
    from dvt_edge.zoo import format_table, zoo_rows

    row = next(r for r in zoo_rows() if r["model"] == "dvt_micro_fmnist")
    exact = create_model("dvt_micro_fmnist").exits[0].gflops
    assert abs(row["gflops"][0] - exact) <= 1e-3 * exact
    assert f"{exact:.3g}" in format_table([row])
    cifar = next(r for r in zoo_rows() if r["model"] == "dvt_small_cifar")  # 0.0081546: printed 0.00816, rounded twice
    assert format_table([cifar]).split()[-7:-3] == [f"{create_model('dvt_small_cifar').exits[0].gflops:.3g}", "/", "0.0276", "/"]
    assert row["params"] == sum(p.numel() for p in create_model("dvt_micro_fmnist").parameters())
    assert f"{row['params'] / 1e6:.2f}M" in format_table([row])  # 75,406 is 0.08M, as train and the card say


def test_register_model_takes_a_preset_that_fits_or_refuses_one_that_does_not(monkeypatch):
    """A contributor's 32 px RGB variant registered without preprocess= got ImageNet's 224 px preset, and one given a
    preset of other channels was accepted; training then replaced either with the data's own, unsaid."""
    from dvt_edge import models as M

    for name in ("_REGISTRY", "_DESCRIPTIONS", "_DEFAULTS"):  # copies, undone after the test
        monkeypatch.setattr(M, name, dict(getattr(M, name)))
    cifar = get_config("dvt_small_cifar")
    M.register_model("dvt_mine_32", cifar)
    assert model_defaults("dvt_mine_32")["preprocess"] == M.PREPROCESS_PRESETS["cifar10"]
    assert not M.imagenet_layout("dvt_mine_32")
    with pytest.raises(ValueError, match=r"preset 'fashion-mnist' is gray; 'dvt_mine_b' takes rgb images \(3 channel\(s\)\): pass one of \['cifar10', 'imagenet'\]"):
        M.register_model("dvt_mine_b", cifar, preprocess="fashion-mnist")
    with pytest.raises(ValueError, match=r"'dvt_mine_c' takes 4 input channels: .* register a variant with in_chans 1 or 3"):
        M.register_model("dvt_mine_c", get_config("dvt_small_cifar", in_chans=4))
    assert "dvt_mine_b" not in M.list_models() and "dvt_mine_c" not in M.list_models()
    M.register_model("dvt_mine_48", get_config("dvt_small_cifar", img_size=48))
    pre = model_defaults("dvt_mine_48")["preprocess"]  # no preset at 48 px: ImageNet's statistics at its size
    assert (pre["size"], pre["channels"], tuple(pre["mean"])) == (48, "rgb", (0.485, 0.456, 0.406))
    M.register_model("dvt_mine_56", get_config("dvt_micro_fmnist", img_size=56, splits=((12, 8, 0), (8, 5, 0), (4, 4, 0))))
    pre = model_defaults("dvt_mine_56")["preprocess"]  # gray: Fashion-MNIST's
    assert (pre["size"], pre["channels"], tuple(pre["mean"])) == (56, "gray", (0.2860,))
    M.register_model("dvt_mine_in", get_config("dvt_small_cifar", img_size=48), preprocess="imagenet")  # at its size, crop kept
    pre = model_defaults("dvt_mine_in")["preprocess"]
    assert (pre["size"], pre["resize"], pre["interpolation"], tuple(pre["std"])) == (48, 55, "pil-bicubic", (0.229, 0.224, 0.225))
    assert M.imagenet_layout("dvt_t2t_vit_12") and M.imagenet_layout("dvt_t2t_micro") and M.imagenet_layout("dvt_mine_48")
