"""Checkpoints: the published DVT format and dvt-edge's own (which rebuilds its model).

Published (``*.pth.tar``): ``model_state_dict`` (keys ``less_less_token.`` /
``less_token.`` / ``normal_token.``) plus ``flops``, ``anytime_classification``,
``dynamic_threshold``, ``budgeted_batch_classification``.

Ours: the same weights key plus ``format``/``format_version``, ``model`` (registry
name and every :class:`DVTConfig` field), ``classes``, ``preprocess`` and optional
training state. Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from dvt_edge.models import DVT, STAGE_NAMES, DVTConfig, create_model, get_config, list_models, model_from_args
from dvt_runtime.io import atomic_write
from dvt_runtime.preprocess import Preprocess

__all__ = ["CheckpointError", "CheckpointInfo", "load_checkpoint", "save_checkpoint", "infer_model_name", "read_checkpoint", "checkpoint_model_name"]

FORMAT = "dvt-edge-checkpoint"
FORMAT_VERSION = 1
PUBLISHED_EXTRAS = ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message says why."""


@dataclass
class CheckpointInfo:
    """What a checkpoint file says besides its weights."""

    path: str
    format: str  # "dvt-edge" or "published"
    model_name: str
    config: DVTConfig
    classes: Optional[list[str]] = None
    preprocess: Optional[Preprocess] = None
    flops: Optional[list[float]] = None  # GFLOPs (MACs) per exit, cumulative
    accuracies: Optional[list[float]] = None  # per-exit top-1 (anytime_classification)
    thresholds: Optional[torch.Tensor] = None  # dynamic_threshold (budgets x exits)
    budget_curve: Optional[list] = None  # budgeted_batch_classification
    extras: dict = field(default_factory=dict)  # any other top-level entries (train state, ...)


def _torch_load(path: Path, map_location, trusted: bool) -> object:
    if not path.exists():
        from dvt_edge.references import REFERENCES  # a README command run outside the clone: the shipped file is elsewhere

        shipped = [r.checkpoint for r in REFERENCES.values() if r.checkpoint.name == path.name and r.checkpoint.is_file()]
        raise CheckpointError(f"checkpoint {path} does not exist" + (f" (the packaged reference of that name is {shipped[0]})" if shipped else ""))
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    _check_records(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = msg.strip().splitlines()
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if detail is not None:  # a real pickle that references Python classes/functions
            detail = detail.strip().split(" was not an allowed global")[0]  # not torch's advice to allow it
            raise CheckpointError(
                f"{path} needs arbitrary Python unpickling to load ({ascii(detail)[1:-1]}). Unpickling can run code, so "
                "it is refused by default. If you trust the file's source, load it with trusted=True "
                "(CLI: --trust-checkpoint, on train, evaluate, export, bench and data export)."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_safe_reason(lines, e)}); " + _not_a_checkpoint(path)) from None
    except Exception as e:  # torch raises many types on junk (KeyError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_safe_reason(str(e).strip().splitlines(), e)}); "
                              + _not_a_checkpoint(path)) from None


def _check_records(path: Path) -> None:
    """A torch.save file is a zip whose records are stored, not compressed: a compressed one (a 1 MB file inflating to a
    1 GB tensor) is refused before torch allocates it. Other files (legacy pickles, junk) are left to torch.load."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            packed = [i for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]  # torch.jit.save's code files: small
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    if sum(i.file_size for i in packed) > (1 << 20):  # in total: twenty 1 MB records had passed a per-record limit
        raise CheckpointError(f"{path} holds compressed records ({len(packed)}, e.g. {packed[0].filename}: {sum(i.compress_size for i in packed)} "
                              f"bytes inflating to {sum(i.file_size for i in packed)}), which torch.save never writes: not a checkpoint as saved (a zip bomb?); "
                              "save it again with torch.save")


#: files users pass as --checkpoint by mistake, by suffix: what they are
OTHER_FILES = {".onnx": "an exported ONNX exit", ".ort": "an exported ONNX Runtime Mobile exit", ".pte": "an exported ExecuTorch exit",
               ".json": "a JSON file (a manifest, metrics or report)", ".npz": "a numpy archive (a data set)",
               ".png": "an image", ".jpg": "an image", ".md": "a text file (a model card)"}


def _not_a_checkpoint(path: Path) -> str:
    """The end of the error for a file torch cannot load: what it is when its suffix says, else truncated or another kind."""
    what = OTHER_FILES.get(path.suffix.lower())
    if what:
        return (f"it is {what}, not a checkpoint: pass the .pt (or .pth/.pth.tar) file a training run wrote, e.g. runs/NAME/last.pt, "
                "or a published checkpoint")
    return "it may be truncated or another kind of file: re-download or re-save it"


def _safe_reason(lines: list[str], e: BaseException) -> str:
    """The loader's first line, unless it suggests unsafe loading (weights_only=False), which we never advise."""
    first = lines[0].strip() if lines else ""
    if not first or "weights_only" in first or "unsafe" in first.lower():
        return type(e).__name__
    first = first.split(". ")[0]  # the loader's own sentence, not its advice after it
    return first if len(first) <= 200 else first[:197] + "..."


def read_checkpoint(path: Union[str, Path], map_location="cpu", trusted: bool = False) -> dict:
    """Load the raw checkpoint dict (weights_only unless ``trusted``)."""
    path = Path(path)
    obj = _torch_load(path, map_location, trusted)
    if isinstance(obj, torch.nn.Module):  # torch.save(model): only a trusted load gets here; its weights are the checkpoint
        return {"model_state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")  # timm's, DeiT's and others' averaged weights


def _weights(ckpt: dict, key: str) -> Optional[dict]:
    """``ckpt[key]`` when it is a non-empty dict of tensors (a module's state dict in a trusted load), else None."""
    sd = ckpt.get(key)
    sd = sd.state_dict() if isinstance(sd, torch.nn.Module) else sd  # {'model': model} (a trusted load)
    return sd if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()) else None


def _state_dict_of(ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
    """The file's model weights: its first of model_state_dict, state_dict, model; else its EMA weights (said); else the
    file itself when it is a bare state dict. A file holding EMA weights beside the others says which were taken."""
    key = next((k for k in ("model_state_dict", "state_dict", "model") if _weights(ckpt, k) is not None), None)
    ema = next((k for k in EMA_KEYS if _weights(ckpt, k) is not None), None)
    if key is not None and ema is not None:
        warnings.warn(f"{path} also holds averaged (EMA) weights under {ema!r}: loaded {key!r}; to use the EMA weights, save a copy "
                      f"holding them in its place: python -c \"import torch; c = torch.load('{path}', weights_only=True); "
                      f"c['{key}'] = c.pop('{ema}'); torch.save(c, 'ema.pth')\"", stacklevel=3)
    if key is not None or ema is not None:
        if key is None:
            warnings.warn(f"{path} holds only averaged (EMA) weights, under {ema!r}: loaded them", stacklevel=3)
        sd = _weights(ckpt, key or ema)
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state dict
    else:
        raise CheckpointError(f"{path} has no model weights: expected a 'model_state_dict' entry (found keys {sorted(ckpt)[:8]})")
    while (pre := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)) is not None:
        sd = {k[len(pre):]: v for k, v in sd.items()}  # saved from a wrapper, maybe two (DDP around torch.compile)
    if bad := [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]:  # load, --finetune alike
        raise CheckpointError(f"{path}: {', '.join(bad[:3])}{f' and {len(bad) - 3} more' if len(bad) > 3 else ''} hold NaN or "
                              "infinite weights (a training run that diverged, or a damaged file): use an earlier checkpoint")
    return sd


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile: stripped when every key has one


def _signature(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _diff(expected: dict[str, tuple], got: dict[str, tuple]) -> tuple[list, list, list]:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted((k, expected[k], got[k]) for k in set(expected) & set(got) if expected[k] != got[k])
    return missing, unexpected, wrong


def _format_diff(missing: list, unexpected: list, wrong: list, n: int = 5) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {missing[:n]}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:n]}")
    if wrong:
        shown = [f"{k}: model {tuple(e)} vs file {tuple(g)}" for k, e, g in wrong[:n]]
        parts.append(f"wrong-shaped keys ({len(wrong)}): {shown}")
    return "; ".join(parts)


def _num_classes(sd: dict[str, torch.Tensor]) -> Optional[int]:
    heads = [v for k, v in sd.items() if k.endswith("head.weight")]
    return int(heads[0].shape[0]) if heads else None


def infer_model_name(sd: dict[str, torch.Tensor]) -> tuple[str, int]:
    """The registered model whose keys and shapes match ``sd`` exactly, and its class count."""
    n_cls = _num_classes(sd)
    got = {k: tuple(v.shape) for k, v in sd.items()}
    best = None
    for name in list_models():
        sig = sig_of(name, n_cls)
        diff = _diff(sig, got)
        if not any(diff):
            return name, n_cls if n_cls is not None else get_config(name).num_classes
        # closest: the most keys of the same name and shape, then the fewest differences (not the model with fewest keys)
        score = (-sum(got.get(k) == v for k, v in sig.items()), sum(len(d) for d in diff))
        if best is None or score < best[0]:
            best = (score, name, diff, {k.split(".")[0] for k in sig})
    assert best is not None
    missing, unexpected, wrong = best[2]
    tops = sorted({k.split(".")[0] for k in got})
    if len(unexpected) > len(got) / 2 and not best[3] & set(tops):  # none of a DVT's per-exit networks: "closest" names a stranger
        return_hint = (f"its keys start with {tops[:8]}{'...' if len(tops) > 8 else ''}, which no registered DVT has (a DVT "
                       "checkpoint holds one network per exit, e.g. the official ones' less_less_token.* / less_token.* / "
                       "normal_token.*): a single-network model, or another project's, cannot be loaded as a DVT")
        raise CheckpointError(f"cannot infer the architecture: {return_hint}. Registered: {list_models()}")
    if not missing and not unexpected and wrong and all(k.endswith("pos_embed") for k, _, _ in wrong):  # at 384 px: 3 keys
        raise CheckpointError(
            f"the checkpoint is {best[1]!r} but for its position embeddings ({_format_diff(missing, unexpected, wrong)}): a model at "
            f"another input size or token grid, which loads once registered (dvt_edge.models.register_model with that size)"
        )
    if best[0][1] <= NEAR_MISS:  # a damaged or edited file, not an unknown architecture (another depth differs in tens of keys)
        raise CheckpointError(
            f"the checkpoint's keys and shapes are {best[1]!r}'s except for {_format_diff(missing, unexpected, wrong)}: the file "
            "was damaged or edited (weights load strictly: nothing is filled in or dropped). Re-download it, or re-save it "
            "from the run that trained it"
        )
    raise CheckpointError(
        f"cannot infer the architecture: no registered model matches the checkpoint's keys and shapes. "
        f"Closest is {best[1]!r}: {_format_diff(missing, unexpected, wrong)}. Registered: {list_models()}. "
        "A DVT of another architecture loads once registered (dvt_edge.models.register_model with its DVTConfig)."
    )


NEAR_MISS = 3  # a file differing from a registered model in at most this many keys (missing, extra, reshaped) is that model's


def sig_of(name: str, n_cls: Optional[int]) -> dict[str, tuple[int, ...]]:
    """A registered model's keys and shapes (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return _signature(create_model(name, num_classes=n_cls) if n_cls is not None else create_model(name))


def checkpoint_model_name(path: Union[str, Path], trusted: bool = False) -> str:
    """The registered model a checkpoint holds: the name ours record, else the one its keys and shapes infer (published)."""
    ckpt = read_checkpoint(path, trusted=trusted)
    if ckpt.get("format") == FORMAT and isinstance(ckpt.get("model"), dict) and ckpt["model"].get("name"):
        return str(ckpt["model"]["name"])
    return infer_model_name(_state_dict_of(ckpt, Path(path)))[0]


def model_like_checkpoint(path: Union[str, Path], trusted: bool = False, **overrides) -> tuple[DVT, Optional[Preprocess]]:
    """A fresh model of a checkpoint's own architecture (its stored config, ``overrides`` applied) and the preprocessing it
    was trained with: ``--finetune`` of a variant a launcher script registered, in a process that does not register it
    (a ``--model`` that is neither is refused before, by :func:`check_finetune_model`)."""
    model, info = load_checkpoint(path, trusted=trusted)  # checked: the config against the weights, before building
    return DVT(dataclasses.replace(model.cfg, **overrides), name=model.name), info.preprocess


def check_finetune_model(name: str, source: str) -> None:
    """``--model name`` beside ``--finetune`` of a ``source`` variant: a registered model, or the source's own (rebuilt from
    the file); another name is a typo, said naming the checkpoint's variant (the registry's closest name misled)."""
    if name not in list_models() and name != source:
        raise ValueError(f"--model {name!r} is not registered here and is not --finetune's variant {source!r}: drop --model (the "
                         f"checkpoint's own is used), or pass a registered one: {list_models()}")


def _stage_order(name: str) -> tuple:
    """Sort key of a stage name in exit order: the three-exit names, then ``stage0``, ``stage1``, ... by number."""
    if name in STAGE_NAMES:
        return (0, STAGE_NAMES.index(name), "")
    digits = name[len(name.rstrip("0123456789")):]
    return (1, int(digits) if digits else -1, name)


def _check_config_against_weights(cfg: DVTConfig, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Before building anything: the stored config's sizes must be those of the stored weights.

    A small file whose config claims ``depth=10**6`` or ``embed_dim=2**20`` would otherwise
    allocate the model first and exhaust memory; the weights bound what the config may say.
    """
    stages = sorted({k.split(".")[0] for k in sd if "." in k}, key=_stage_order)  # stage2 before stage10
    first = STAGE_NAMES[0] if cfg.num_exits == 3 else "stage0"
    facts = []
    if len(stages) != cfg.num_exits:
        facts.append(f"{cfg.num_exits} exits configured, weights for {len(stages)} stage(s)")
    cls = sd.get(f"{first}.cls_token")
    if cls is None or cls.shape[-1] != cfg.embed_dim:
        facts.append(f"embed_dim {cfg.embed_dim} configured, weights have {None if cls is None else cls.shape[-1]}")
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith(f"{first}.blocks.") and k.split(".")[2].isdigit()}
    if len(blocks) != cfg.stage_depth(0):
        facts.append(f"depth {cfg.stage_depth(0)} configured, weights have {len(blocks)} block(s)")
    head = sd.get(f"{first}.head.weight")
    if (head.shape[0] if head is not None else 0) != cfg.num_classes:
        facts.append(f"{cfg.num_classes} classes configured, the head in the weights has {None if head is None else head.shape[0]}")
    fc1 = sd.get(f"{first}.blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.shape[0] != int(cfg.embed_dim * cfg.mlp_ratio):
        facts.append(f"mlp_ratio {cfg.mlp_ratio} configured, weights have MLP width {fc1.shape[0]}")
    for i, name in enumerate(stages[: cfg.num_exits]):
        pe = sd.get(f"{name}.pos_embed")
        if pe is not None and i < len(cfg.grids) and pe.shape[1] != 1 + cfg.grids[i] ** 2:
            facts.append(f"exit {i + 1}: grid {cfg.grids[i]} configured, position table for {pe.shape[1]} tokens")
    second = STAGE_NAMES[1] if cfg.num_exits == 3 else "stage1"
    rel = sd.get(f"{second}.relation_reuse_conv.0.weight")  # takes exit 1's depth x heads maps
    if rel is not None and rel.ndim > 1 and rel.shape[1] != cfg.stage_depth(0) * cfg.num_heads:
        facts.append(f"depth x num_heads = {cfg.stage_depth(0) * cfg.num_heads} configured, relation maps in the weights: {rel.shape[1]}")
    if not facts:  # every tensor the config implies, at its shape, must be in the file (built on 'meta': no memory),
        # so building allocates no more than the file holds, whatever the config says of later stages
        with torch.device("meta"):
            shapes = _signature(DVT(cfg))
        missing, _, wrong = _diff(shapes, {k: tuple(v.shape) for k, v in sd.items()})
        if missing or wrong:
            facts.append(f"the config implies tensors the weights lack or shape differently: {_format_diff(missing, [], wrong)}")
    if facts:
        raise CheckpointError(f"{path}: its stored model config does not match its weights ({'; '.join(facts)}); "
                              "the file is corrupted or was edited: nothing was built")


def _classes(classes, n: int, path: Path) -> Optional[list[str]]:
    """The stored class names: a list of ``n`` strings, or None when the file has none."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: 'classes' must be a list of class-name strings, got {type(classes).__name__} {str(classes)[:60]!r}")
    if len(classes) != n:
        raise CheckpointError(f"{path}: 'classes' names {len(classes)} classes but the model has {n} outputs")
    return list(classes)


def load_checkpoint(
    path: Union[str, Path],
    model: Union[DVT, str, None] = None,
    map_location="cpu",
    trusted: bool = False,
) -> tuple[DVT, CheckpointInfo]:
    """Load a published or dvt-edge checkpoint strictly -> (model in eval mode, info).

    ``model``: a DVT instance or registry name to load into; by default the model is
    rebuilt from the checkpoint's own arguments (ours) or inferred from keys (published).
    ``trusted=True`` allows arbitrary unpickling (``weights_only=False``): only for
    files you trust.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location, trusted)
    sd = _state_dict_of(ckpt, path)
    ours = ckpt.get("format") == FORMAT
    if ours and _field(path, "format_version", lambda: int(ckpt.get("format_version", 0))) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is format version {ckpt['format_version']}, newer than this dvt-edge reads ({FORMAT_VERSION}); upgrade dvt-edge"
        )
    if isinstance(model, str):
        n_cls = _num_classes(sd)
        model = create_model(model, num_classes=n_cls)
    elif model is None:
        if ours:
            try:
                _check_config_against_weights(DVTConfig.from_dict(ckpt["model"]["config"]), sd, path)
                model = model_from_args(ckpt["model"])
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{path}: cannot rebuild its model from the stored arguments ({e})") from None
        else:
            name, n_cls = infer_model_name(sd)
            model = create_model(name, num_classes=n_cls)
    missing, unexpected, wrong = _diff(_signature(model), {k: tuple(v.shape) for k, v in sd.items()})
    if missing or unexpected or wrong:
        fits = ""
        if not ours:  # a published file given the wrong --model: say which one it is
            try:
                fits = f"; it fits {infer_model_name(sd)[0]!r}: drop --model (it is inferred), or pass that name"
            except CheckpointError:
                pass
        raise CheckpointError(
            f"{path} does not fit model {model.name!r} ({model.cfg.num_exits} exits, embed {model.cfg.embed_dim}, "
            f"depth {model.cfg.stage_depths or model.cfg.depth}, {model.cfg.num_classes} classes){fits}: "
            f"{_format_diff(missing, unexpected, wrong)}"
        )
    model.load_state_dict(sd, strict=True)
    model.eval()
    pre = ckpt.get("preprocess")
    if pre is not None and not isinstance(pre, dict):  # dropping it would ship another model's mean/std and resize
        raise CheckpointError(f"{path}: 'preprocess' must be a dict of Preprocess fields (resize, mean, std, ...), got "
                              f"{type(pre).__name__}; re-save the checkpoint with dvt_edge.checkpoint.save_checkpoint")
    if isinstance(pre, dict):
        _check_preprocess(model, _field(path, "preprocess", lambda: Preprocess.from_dict(pre)), f"{path}: its")
    extras = {k: v for k, v in ckpt.items() if k not in ("model_state_dict", "state_dict", "model", "format", "format_version", "classes", "preprocess") + PUBLISHED_EXTRAS}
    info = CheckpointInfo(
        path=str(path),
        format="dvt-edge" if ours else "published",
        model_name=model.name,
        config=model.cfg,
        classes=_classes(ckpt.get("classes"), model.cfg.num_classes, path),
        preprocess=_field(path, "preprocess", lambda: Preprocess.from_dict(pre)) if isinstance(pre, dict) else _registered_preprocess(model),
        flops=_field(path, "flops", lambda: [float(f) for f in ckpt["flops"]]) if ckpt.get("flops") is not None else None,
        accuracies=(_field(path, "anytime_classification", lambda: _percentages(ckpt["anytime_classification"]))
                    if ckpt.get("anytime_classification") is not None else None),
        thresholds=(_field(path, "dynamic_threshold", lambda: torch.as_tensor(ckpt["dynamic_threshold"], dtype=torch.float64))
                    if ckpt.get("dynamic_threshold") is not None else None),
        budget_curve=ckpt.get("budgeted_batch_classification"),
        extras=extras,
    )
    return model, info


def _registered_preprocess(model: DVT) -> Optional[Preprocess]:
    """A file without preprocessing (published, or a bare state dict): its registered variant's, when the
    model takes that variant's input (channels and size); else None."""
    from dvt_edge.models import get_config, model_defaults

    if model.name not in list_models():
        return None
    reg, pre = get_config(model.name), Preprocess(**model_defaults(model.name)["preprocess"])
    if (reg.in_chans, reg.img_size) != (model.cfg.in_chans, model.cfg.img_size) or (pre.num_channels, pre.size) != (reg.in_chans, reg.img_size):
        return None
    return pre


def _percentages(values) -> list[float]:
    """Per-exit top-1 accuracies as stored: each a finite percentage (a NaN went into evaluate.json as bare NaN)."""
    acc = [float(a) for a in values]
    if not all(math.isfinite(a) and 0.0 <= a <= 100.0 for a in acc):
        raise ValueError(f"accuracies must be percentages in 0..100, got {acc}")
    return acc


def _field(path: Path, name: str, parse):
    """``parse()`` of one stored field, a malformed value a CheckpointError naming it."""
    try:
        return parse()
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its {name!r} entry is malformed ({type(e).__name__}: {str(e)[:200]})") from None


def save_checkpoint(
    path: Union[str, Path],
    model: DVT,
    classes: Optional[list[str]] = None,
    preprocess: Optional[Preprocess] = None,
    accuracies: Optional[list[float]] = None,
    **extras,
) -> Path:
    """Write our format atomically (temp file + rename): a crash never leaves half a file."""
    if preprocess is not None:
        _check_preprocess(model, preprocess, "the")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.constructor_args(),
        "model_state_dict": state,
        # plain Python values: numpy scalars would need arbitrary unpickling to load (weights_only refuses them)
        "classes": [str(c) for c in classes] if classes is not None else None,
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "flops": [float(e.gflops) for e in model.exits],
        "anytime_classification": _percentages(accuracies) if accuracies is not None else None,  # never what load refuses
        **extras,
    }
    ckpt.update({k: _plain(v, k) for k, v in extras.items()})  # a file we write loads without trust
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, buf.getbuffer())


def _check_preprocess(model: DVT, pre: Preprocess, whose: str) -> None:
    """CheckpointError unless ``pre`` makes the model's input (channels, size): a bundle would take no camera frame."""
    want = (model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
    if pre.input_shape != want:
        raise CheckpointError(f"{whose} preprocessing makes {pre.input_shape} inputs (channels {pre.channels!r}, size {pre.size}) "
                              f"but the model takes {want}: save it with the model's own preprocessing "
                              "(dvt_edge.models.model_defaults(name)['preprocess'] for a registered variant)")


def _plain(v, where: str):
    """``v`` with numpy scalars as Python numbers; a CheckpointError naming ``where`` for anything that
    ``torch.load(weights_only=True)`` would refuse (it could not be loaded without trusting the file)."""
    if v is None or isinstance(v, (str, bool, int, float, torch.Tensor)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x, f"{where}[{i}]") for i, x in enumerate(v))
    if isinstance(v, dict):
        return {k: _plain(x, f"{where}.{k}") for k, x in v.items()}
    raise CheckpointError(f"save_checkpoint: extra {where!r} is a {type(v).__name__}, which a checkpoint can only hold by "
                          "arbitrary unpickling; pass plain values (str, int, float, list, dict, torch.Tensor)")


