"""Checkpoints: the published format (arch inferred, strict), ours, and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dvt_edge import load_checkpoint, save_checkpoint
from dvt_edge.checkpoint import CheckpointError
from dvt_edge.models import create_model
from dvt_runtime.preprocess import Preprocess

FIXTURE = Path(__file__).parent / "fixtures" / "official-checkpoint-keys.json"
PUBLISHED = {"dvt_t2t_vit_12": "DVT_T2t_vit_12", "dvt_t2t_vit_14": "DVT_T2t_vit_14", "dvt_deit_small": "DVT_Deit_small"}


def published_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of exactly the listed keys and shapes."""
    shapes = json.loads(FIXTURE.read_text())[arch]
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


def save_published(path: Path, sd: dict, **extra) -> Path:
    ckpt = {
        "model_state_dict": sd,
        "flops": [0.47, 1.46, 3.50],
        "anytime_classification": [69.0, 75.6, 80.0],
        "dynamic_threshold": torch.rand(59, 3),
        "budgeted_batch_classification": [[0.5, 1.0], [70.0, 78.0]],
        **extra,
    }
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("name", ["dvt_t2t_vit_12", "dvt_t2t_vit_14"])
def test_published_checkpoint_loads_strictly_with_arch_inferred(tmp_path, name):
    sd = published_state_dict(PUBLISHED[name])
    path = save_published(tmp_path / "model_best.pth.tar", sd)
    model, info = load_checkpoint(path)
    assert model.name == name and info.format == "published"
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k in sd:
        assert torch.equal(loaded[k], sd[k]), k
    assert info.flops == pytest.approx([0.47, 1.46, 3.50])
    assert info.accuracies == pytest.approx([69.0, 75.6, 80.0])
    assert tuple(info.thresholds.shape) == (59, 3)
    assert info.budget_curve == [[0.5, 1.0], [70.0, 78.0]]
    assert not model.training


def test_published_checkpoint_with_module_prefix_and_new_class_count(tmp_path):
    sd = published_state_dict("DVT_T2t_vit_12")
    for k in [k for k in sd if k.endswith("head.weight")]:
        sd[k] = sd[k][:100]
    for k in [k for k in sd if k.endswith("head.bias")]:
        sd[k] = sd[k][:100]
    sd = {"module." + k: v for k, v in sd.items()}
    model, _ = load_checkpoint(save_published(tmp_path / "c100.pth.tar", sd))
    assert model.name == "dvt_t2t_vit_12" and model.cfg.num_classes == 100


def test_missing_key_is_listed(tmp_path):
    sd = published_state_dict("DVT_T2t_vit_12")
    del sd["less_token.blocks.3.attn.qkv.weight"]
    path = save_published(tmp_path / "bad.pth.tar", sd)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*less_token\.blocks\.3\.attn\.qkv\.weight") as e:
        load_checkpoint(path, model="dvt_t2t_vit_12")
    assert "dvt_t2t_vit_12" in str(e.value)
    # inferred: a file one key short of a registered model is that model's, damaged (--model NAME had been advised, and
    # repeated the same refusal)
    with pytest.raises(CheckpointError, match=r"are 'dvt_t2t_vit_12''s except for missing keys \(1\).*damaged or edited.*Re-download") as e:
        load_checkpoint(path)
    assert "--model" not in str(e.value)


def test_a_checkpoint_at_another_input_size_is_not_called_damaged(tmp_path):
    """A model fine-tuned at another size differs in its position embeddings only (3 keys): it was told to re-download."""
    sd = published_state_dict("DVT_T2t_vit_12")
    for k in [k for k in sd if k.endswith("pos_embed")]:
        sd[k] = torch.zeros(1, sd[k].shape[1] * 2, sd[k].shape[2])
    with pytest.raises(CheckpointError, match=r"is 'dvt_t2t_vit_12' but for its position embeddings .*another input size or token grid"):
        load_checkpoint(save_published(tmp_path / "big.pth.tar", sd))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    """torch.compile's '_orig_mod.' (alone or inside DDP's 'module.') was called another project's model."""
    sd = published_state_dict("DVT_T2t_vit_12")
    model, _ = load_checkpoint(save_published(tmp_path / "c.pth.tar", {prefix + k: v for k, v in sd.items()}))
    assert model.name == "dvt_t2t_vit_12" and torch.equal(model.state_dict()["normal_token.head.weight"], sd["normal_token.head.weight"])


@pytest.mark.parametrize("wrap", [lambda m: m, lambda m: {"model": m, "epoch": 1}], ids=["torch.save(model)", "{'model': model}"])
def test_a_pickled_model_loads_its_weights_when_trusted(tmp_path, wrap):
    """The refusal said to pass trusted=True; doing so then refused the model object ("holds a DVT, not a checkpoint dict")."""
    m = create_model("dvt_micro_fmnist").eval()
    path = tmp_path / "full.pt"
    torch.save(wrap(m), path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_checkpoint(path)
    m2, _ = load_checkpoint(path, trusted=True)
    assert m2.name == "dvt_micro_fmnist"
    for k, v in m.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k


def test_ema_weights_are_named_and_nan_weights_refused(tmp_path, capsys):
    """A file holding timm's or DeiT's averaged weights beside the others loaded the others without a word (and one holding
    only them was "no model weights"); a diverged run's NaN weights loaded and ran to NaN logits downstream."""
    m = create_model("dvt_micro_fmnist")
    sd = m.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"state_dict": sd, "state_dict_ema": ema}, tmp_path / "both.pth")
    with pytest.warns(UserWarning, match="also holds averaged \\(EMA\\) weights under 'state_dict_ema': loaded 'state_dict'.*"
                                         "c\\['state_dict'\\] = c.pop\\('state_dict_ema'\\); torch.save\\(c, 'ema.pth'\\)"):
        got, _ = load_checkpoint(tmp_path / "both.pth")
    assert torch.equal(got.state_dict()["less_less_token.head.bias"], sd["less_less_token.head.bias"])
    torch.save({"model_ema": ema}, tmp_path / "ema.pth")
    with pytest.warns(UserWarning, match="holds only averaged \\(EMA\\) weights, under 'model_ema': loaded them"):
        got, _ = load_checkpoint(tmp_path / "ema.pth")
    assert torch.equal(got.state_dict()["less_less_token.head.bias"], ema["less_less_token.head.bias"])
    sd["less_token.head.weight"][0, 0] = float("nan")
    torch.save({"state_dict": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="less_token.head.weight hold NaN or infinite weights .*use an earlier checkpoint"):
        load_checkpoint(tmp_path / "nan.pth")
    from dvt_edge.train import main as train_main  # --finetune reads the weights itself: refused there too, before any epoch

    assert train_main(["--finetune", str(tmp_path / "nan.pth"), "--epochs", "1", "--train-limit", "64", "--val-limit", "32",
                       "--threads", "1", "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert "hold NaN or infinite weights" in capsys.readouterr().err


def test_wrong_shape_is_listed(tmp_path):
    sd = published_state_dict("DVT_T2t_vit_12")
    sd["normal_token.blocks.0.mlp.fc1.weight"] = torch.zeros(512, 256)  # should be (512, 304)
    path = save_published(tmp_path / "bad.pth.tar", sd)
    with pytest.raises(CheckpointError, match=r"wrong-shaped keys \(1\).*normal_token\.blocks\.0\.mlp\.fc1\.weight.*\(512, 304\).*\(512, 256\)"):
        load_checkpoint(path, model="dvt_t2t_vit_12")


def test_wrong_arch_fails_with_keys(tmp_path):
    path = save_published(tmp_path / "t2t12.pth.tar", published_state_dict("DVT_T2t_vit_12"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, model="dvt_t2t_vit_14")
    msg = str(e.value)
    assert "dvt_t2t_vit_14" in msg and "missing keys" in msg and "wrong-shaped keys" in msg
    assert "less_less_token.blocks.12" in msg  # T2T-14 has 14 blocks
    assert "it fits 'dvt_t2t_vit_12': drop --model (it is inferred)" in msg  # 90 missing and 497 wrong-shaped keys, and no way out


def test_a_single_network_checkpoint_is_not_called_close_to_the_smallest_model(tmp_path):
    """A plain T2T-ViT state dict (one network, no per-exit prefixes) was "closest" to dvt_micro_fmnist, the model with the
    fewest keys, and told to pass that as --model."""
    one = {k.split(".", 1)[1]: v for k, v in published_state_dict("DVT_T2t_vit_12").items() if k.startswith("normal_token.")}
    with pytest.raises(CheckpointError, match=r"keys start with \['blocks', .*which no registered DVT has .*less_less_token") as e:
        load_checkpoint(save_published(tmp_path / "t2t.pth.tar", one))
    assert "Closest" not in str(e.value) and "--model" not in str(e.value)
    # per-exit networks of an architecture not registered here: still a DVT, its closest named (not "single-network")
    renamed = {k.replace(".blocks.", ".layerblocks."): v for k, v in published_state_dict("DVT_T2t_vit_12").items()}
    with pytest.raises(CheckpointError, match="Closest is 'dvt_t2t_vit_12'.*register_model") as e:  # the most keys in common
        load_checkpoint(save_published(tmp_path / "other.pth.tar", renamed))  # (it named dvt_t2t_micro)
    assert "--model" not in str(e.value) and "damaged" not in str(e.value)


def test_our_format_round_trip_rebuilds_model(tmp_path):
    torch.manual_seed(3)
    m = create_model("dvt_micro_fmnist", drop_path_rate=0.1).eval()
    pre = Preprocess(size=28, resize=32, channels="gray", mean=(0.5,), std=(0.25,))
    path = save_checkpoint(tmp_path / "run" / "best.pt", m, classes=list("abcdefghij"), preprocess=pre, accuracies=[80.0, 85.0, 88.0])
    m2, info = load_checkpoint(path)
    assert info.format == "dvt-edge" and m2.name == "dvt_micro_fmnist"
    assert m2.cfg == m.cfg  # every constructor argument travelled
    assert info.preprocess == pre and info.classes == list("abcdefghij")
    assert info.accuracies == [80.0, 85.0, 88.0]
    assert info.flops == pytest.approx([e.gflops for e in m.exits])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(path.parent.glob(".*.tmp")), "no temporary files left behind"


class Custom:  # an arbitrary Python object: loading it needs full unpickling
    pass


def test_arbitrary_pickle_is_refused_with_override(tmp_path):
    path = tmp_path / "evil.pt"
    m = create_model("dvt_micro_fmnist")
    torch.save({"model_state_dict": m.state_dict(), "extra": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"arbitrary Python unpickling.*trusted=True"):
        load_checkpoint(path)
    # knowingly overridden: it loads
    m2, info = load_checkpoint(path, trusted=True)
    assert m2.name == "dvt_micro_fmnist" and isinstance(info.extras["extra"], Custom)


def test_every_command_the_refusal_names_takes_trust_checkpoint(tmp_path, capsys):
    """The refusal names the commands that take --trust-checkpoint: each of them does (bench and data export
    did not: such a file could be neither benchmarked nor turned into calibration images)."""
    import re

    from dvt_edge import bench, data, evaluate, train
    from dvt_edge.export import __main__ as export_cli

    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": create_model("dvt_micro_fmnist").state_dict(), "extra": Custom()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    named = re.search(r"--trust-checkpoint, on ([a-z ,]+)\)", str(e.value)).group(1).replace(" and ", ", ").split(", ")
    mains = {"train": train.main, "evaluate": evaluate.main, "export": export_cli.main, "bench": bench.main,
             "data export": lambda a: data.main(["export", *a])}
    assert sorted(named) == sorted(mains)
    for name, main in mains.items():
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "--trust-checkpoint" in capsys.readouterr().out, name
    out = tmp_path / "x.npz"
    assert data.main(["export", "--data", "fashion-mnist", "--n", "4", "--checkpoint", str(path), "--out", str(out)]) == 2
    assert "arbitrary Python unpickling" in capsys.readouterr().err and not out.exists()
    assert data.main(["export", "--data", "fashion-mnist", "--n", "4", "--checkpoint", str(path), "--trust-checkpoint", "--out", str(out)]) == 0


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, bytes(range(256)) * 4])
def test_non_checkpoint_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(path)


def test_truncated_checkpoint_says_so_in_whole_sentences(tmp_path):
    """A half-downloaded file: the loader's reason ends where its sentence does (it was cut at 200 characters,
    mid-way through torch's "there is a high likelihood that your checkpoint file is")."""
    src = tmp_path / "full.pt"
    torch.save({"model_state_dict": create_model("dvt_micro_fmnist").state_dict()}, src)
    (tmp_path / "half.pt").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "half.pt")
    msg = str(e.value)
    assert "failed finding central directory)" in msg and "likelihood" not in msg and msg.endswith("re-download or re-save it")


def test_missing_file_and_dict_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert "packaged" not in str(e.value)
    # the README's --finetune dvt_edge/assets/dvt_small_cifar.pt run from another folder: where the shipped file is
    from dvt_edge.references import REFERENCES

    with pytest.raises(CheckpointError, match=rf"packaged reference of that name is {re.escape(str(REFERENCES['cifar10'].checkpoint))}\)"):
        load_checkpoint(tmp_path / "dvt_edge" / "assets" / "dvt_small_cifar.pt")
    torch.save({"epoch": 3}, tmp_path / "noweights.pt")
    with pytest.raises(CheckpointError, match="model_state_dict"):
        load_checkpoint(tmp_path / "noweights.pt")


@pytest.mark.parametrize("field, value, match", [
    ("preprocess", '{"size": 28}', "'preprocess' must be a dict"),
    ("preprocess", {"size": 28, "resize": 28, "channels": "gray", "mean": [0.5], "std": [0.25], "interpolation": "area",
                    "invert": "false"}, "'preprocess' entry is malformed.*invert must be true or false"),
    ("preprocess", {"size": 28, "resize": 28, "channels": "gray", "mean": [0.5], "std": [1e39], "interpolation": "area"},
     r"'preprocess' entry is malformed.*out of range: pixels are scaled to \[0, 1\]"),  # every input 0 in float32: chance, said nowhere
    ("anytime_classification", [float("nan"), float("inf"), -5.0], r"'anytime_classification' entry is malformed.*percentages in 0\.\.100"),
    ("format_version", "two", "'format_version' entry is malformed"),
    ("flops", ["a", "b", "c"], "'flops' entry is malformed"),
    ("dynamic_threshold", [[0.5, "x", 0.1]], "'dynamic_threshold' entry is malformed"),
])
def test_malformed_stored_fields_are_checkpoint_errors(tmp_path, field, value, match):
    """A wrong-typed field names itself; a preprocess that is not a dict is never dropped for a default one."""
    m = create_model("dvt_micro_fmnist")
    path = save_checkpoint(tmp_path / "ok.pt", m, classes=list("abcdefghij"),
                           preprocess=Preprocess(size=28, resize=28, channels="gray", mean=(0.5,), std=(0.25,)))
    ckpt = torch.load(path, weights_only=True)
    ckpt[field] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.pt")


def test_saved_numpy_values_load_without_trust_and_unpicklable_extras_are_refused(tmp_path):
    """numpy accuracies and class names (np.str_) used to be pickled as numpy objects, so the file needed
    --trust-checkpoint to load; an extra that torch cannot load safely is refused at save, naming it."""
    import numpy as np

    m = create_model("dvt_micro_fmnist")
    save_checkpoint(tmp_path / "a.pt", m, classes=[np.str_(f"c{i}") for i in range(10)], accuracies=np.array([50.0, 60.0, 70.0]),
                    note={"best": np.float32(3.5)})
    _, info = load_checkpoint(tmp_path / "a.pt")
    assert info.accuracies == [50.0, 60.0, 70.0] and info.classes[1] == "c1" and info.extras["note"] == {"best": 3.5}
    with pytest.raises(CheckpointError, match=r"extra 'bad\.arr' is a ndarray"):
        save_checkpoint(tmp_path / "b.pt", m, bad={"arr": np.zeros(3)})
    assert not (tmp_path / "b.pt").exists()


def test_eleven_exits_round_trip(tmp_path):
    """Stage names sorted as text put stage10 before stage2: an 11-exit checkpoint failed its own config check."""
    m = create_model("dvt_micro_fmnist", grids=(3,) * 10 + (5,), splits=((6, 4, 0),) * 10 + ((4, 3, 1),),
                     reuse_upsample=(0,) + (6,) * 9 + (10,))
    save_checkpoint(tmp_path / "m.pt", m)
    assert load_checkpoint(tmp_path / "m.pt")[0].cfg.grids == m.cfg.grids


def test_a_bare_state_dict_gets_its_variants_preprocessing(tmp_path):
    from dvt_edge.models import model_defaults

    m = create_model("dvt_small_cifar")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    _, info = load_checkpoint(tmp_path / "sd.pt")
    assert info.preprocess == Preprocess(**model_defaults("dvt_small_cifar")["preprocess"])  # CIFAR's mean/std, not ImageNet's


def test_preprocessing_for_another_input_size_is_refused(tmp_path):
    """A 32 px preprocessing on a 64 px model exported and "verified" (on preprocessed arrays), then failed on every frame."""
    model = create_model("dvt_t2t_micro")
    bad = Preprocess(size=32, resize=36, channels="rgb", mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="area")
    with pytest.raises(CheckpointError, match=r"makes \(3, 32, 32\) inputs .* takes \(3, 64, 64\)"):
        save_checkpoint(tmp_path / "a.pt", model, preprocess=bad)
    good = Preprocess(size=64, resize=64, channels="rgb", mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="area")
    save_checkpoint(tmp_path / "a.pt", model, preprocess=good)
    ckpt = torch.load(tmp_path / "a.pt", weights_only=True)
    ckpt["preprocess"] = bad.to_dict()  # written by something else
    torch.save(ckpt, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="b.pt: its preprocessing makes"):
        load_checkpoint(tmp_path / "b.pt")
    assert load_checkpoint(tmp_path / "a.pt")[1].preprocess == good


@pytest.mark.parametrize("name,what", [("exit1.onnx", "an exported ONNX exit"), ("manifest.json", "a JSON file"),
                                       ("val.npz", "a numpy archive")])
def test_a_bundle_or_data_file_given_as_checkpoint_is_named(tmp_path, name, what):
    """--checkpoint bundle/exit1.onnx or metrics.json said "re-download or re-save it"."""
    (tmp_path / name).write_bytes(b"\x08\x07\x12\x07pytorch" if name.endswith(".onnx") else b'{"a": 1}')
    with pytest.raises(CheckpointError, match=rf"it is {what}.*not a checkpoint: pass the \.pt .* a training run wrote"):
        load_checkpoint(tmp_path / name)
