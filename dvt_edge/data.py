"""Datasets by spec string, preprocessing shared with the device runtime, and data export.

Specs: ``fashion-mnist``, ``imagefolder:PATH``, ``cifar10``, ``cifar10:PATH``, ``cifar10-jpeg``,
``cifar10-ref`` (shipped), ``npz:PATH``.

    python -m dvt_edge.data export --data fashion-mnist --split val --n 2000 --out val.npz
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from dvt_edge import imagefolder as _folders
from dvt_edge.cifar10 import (  # noqa: F401  (re-exported)
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_REF,
    CIFAR10_TAR,
    CIFAR10_URL,
    check_reference_holdout,
    cifar10_dirs,
    cifar10_preprocess,
    find_cifar10_jpeg,
    load_cifar10,
)
from dvt_edge.downloads import cache_dir, not_found  # noqa: F401  (re-exported)
from dvt_edge.downloads import download as download  # re-exported (load_dataset has a parameter of that name)
from dvt_edge.fashion_mnist import (  # noqa: F401  (re-exported)
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_URL,
    fashion_mnist_dirs,
    load_fashion_mnist,
)
from dvt_edge.imagefolder import HOLDOUT_FRACTION, HOLDOUT_SEED, IMAGE_EXTS, holdout_fingerprint, load_imagefolder, split_files  # noqa: F401  (re-exported)
from dvt_edge.imageset import (  # noqa: F401  (re-exported)
    DataError,
    ImageSet,
    SplitNotHeld,
    as_imagenet_labels,
    as_model_labels,
    default_preprocess,
    label_mismatch,
    stratified_subset,
)
from dvt_edge.npzdata import HOLDOUT_MARK, export_npz, load_npz, load_npz_spec, npz_has_split, write_jpeg_pack  # noqa: F401  (re-exported)

# the loaders live in their own modules; their public names are importable from here too
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import quote_arg, silenced_progress
from dvt_runtime.io import os_error_text, sha256_file, unwritable
from dvt_runtime.preprocess import Preprocess

__all__ = ["ImageSet", "DataError", "load_dataset", "default_preprocess", "fashion_mnist_dirs", "export_npz", "DATASETS"]

SPLITS = ("train", "val")
_SPLIT_ALIASES = {"train": "train", "val": "val", "test": "val", "validation": "val"}

DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST (Debian's dataset-fashion-mnist, $DVT_DATA, or a verified download)",
    "imagefolder:PATH": "ImageNet-style PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (JPEG, PNG, BMP, WebP, TIFF via OpenCV)",
    "cifar10": "CIFAR-10, official python version ($DVT_DATA/cifar10, the cache, or a verified download of the official tarball)",
    "cifar10:PATH": "CIFAR-10 python batches (cifar-10-batches-py) or the official tarball in PATH",
    "cifar10-jpeg": "CIFAR-10's training split as JPEG class folders in $DVT_DATA/cifar10-jpeg or the cache; val = a seeded, class-stratified 10% held out",
    "cifar10-ref": "shipped: val = the 5,000 CIFAR-10 images held out from dvt_small_cifar's training, train = 1,000 of its training images",
    "npz:PATH": "arrays 'images' (uint8 NHW[C], BGR unless channel_order='rgb', or preprocessed float32 NCHW), 'labels', optional 'classes'",
}
PATH_KINDS = ("imagefolder", "cifar10", "npz")  # the specs that name a file or folder


def default_data(model_name: str, extras: Optional[dict] = None, cfg=None) -> str:
    """The dataset spec a checkpoint is evaluated on by default: the one it records
    (``eval_data``), else its variant's registered dataset, when the checkpoint's input
    (``cfg``: channels and size) is the registered variant's."""
    from dvt_edge.models import get_config, list_models, model_defaults

    if extras and extras.get("eval_data"):
        return str(extras["eval_data"])
    if model_name in list_models() and model_defaults(model_name)["dataset"]:
        reg = get_config(model_name)
        if cfg is None or (cfg.in_chans, cfg.img_size) == (reg.in_chans, reg.img_size):
            return model_defaults(model_name)["dataset"]
    raise DataError(f"no default dataset for model {model_name!r}; pass --data (valid specs: {', '.join(DATASETS)})")


def default_train_data(model_name: str) -> str:
    """``train --data`` when none is given: what the model's published reference was trained on, else its registered set."""
    from dvt_edge.models import _check_name, list_models, model_defaults
    from dvt_edge.references import REFERENCES

    if model_name not in list_models():  # a typo, or a variant a script registered, fine-tuned from its file in another process
        try:
            _check_name(model_name)
        except ValueError as e:
            raise DataError(f"{e} No training data is known for it: for a checkpoint of a variant registered by a script, "
                            f"pass --data (valid specs: {', '.join(DATASETS)})") from None
    for ref in REFERENCES.values():
        if ref.model == _check_name(model_name) and "--data" in ref.steps[0]:
            return ref.steps[0][ref.steps[0].index("--data") + 1]
    if model_defaults(model_name)["dataset"]:
        return model_defaults(model_name)["dataset"]
    raise DataError(f"no training data is known for model {model_name!r}; pass --data (valid specs: {', '.join(DATASETS)})")


def recorded_train_args(extras: Optional[dict]) -> dict:
    """The ``python -m dvt_edge.train`` arguments a checkpoint records (a run's or a published file's), else {}."""
    import json

    extras = extras or {}
    summary = extras.get("train_summary") or (extras.get("train") or {}).get("args")
    try:
        d = json.loads(summary) if isinstance(summary, str) else (summary or {})
        args = d.get("args", d)
    except (ValueError, AttributeError):
        return {}
    return args if isinstance(args, dict) else {}


def same_data(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two dataset specs name the same data: ``KIND:PATH`` specs by their resolved path (``~/photos``
    and ``/home/me/photos`` are one folder), others by their text."""
    (ka, _, pa), (kb, _, pb) = (str(a).partition(":"), str(b).partition(":"))
    if a is not None and b is not None and ka == kb and pa and pb:
        return Path(pa).expanduser().resolve() == Path(pb).expanduser().resolve()
    return a == b


def absolute_spec(spec: str) -> str:
    """``KIND:PATH`` with PATH made absolute (``~`` expanded, links kept), as a checkpoint records it: a relative
    folder read from another working directory was another folder, or none (then another set stood in)."""
    kind, _, path = spec.partition(":")
    return f"{kind}:{os.path.abspath(os.path.expanduser(path))}" if path and kind in PATH_KINDS else spec


def npz_read_whole(spec: str) -> bool:
    """Whether ``spec`` is an ``npz:`` file that names no split (read whole as either split) and is not marked
    ``#holdout``."""
    kind, _, path = spec.partition(":")
    return kind == "npz" and bool(path) and not path.endswith(HOLDOUT_MARK) and npz_has_split(path) is False


def training_spec(spec: str) -> str:
    """The spec a training run records: :func:`absolute_spec`, and an ``npz:`` file without a 'split' entry marked
    ``#holdout`` (its 10% held out for validation: it validated on the images it trained on, best.pt chosen on them)."""
    spec = absolute_spec(spec)
    if npz_read_whole(spec):
        path = spec.partition(":")[2]
        print(f"note: {path} holds no 'split' entry: {HOLDOUT_FRACTION:.0%} of its images (seeded, class-stratified) are held "
              f"out for validation and never trained on; the run records npz:{path}{HOLDOUT_MARK}, which evaluate and "
              "export read as that held-out part", file=sys.stderr)
        return spec + HOLDOUT_MARK
    return spec


def held_out_part(given: Optional[str], recorded: Optional[str]) -> Optional[str]:
    """``recorded`` (``npz:PATH#holdout``, a run's) when ``given`` names that same npz file, else None: the whole file
    would hold the images the run trained on."""
    if given and isinstance(recorded, str) and recorded.endswith(HOLDOUT_MARK) and same_data(given, recorded[: -len(HOLDOUT_MARK)]):
        return recorded
    return None


def resumed_spec(given: Optional[str], recorded: Optional[str]) -> Optional[str]:
    """The data a resumed run goes on with: its recorded held-out split when ``given`` names that npz file (the run's own
    command, given again), else ``given``, else ``recorded`` (the resume check compares them)."""
    return held_out_part(given, recorded) or given or recorded


def holdout_of(spec: str) -> Optional[dict]:
    """What a held-out split is drawn from, as a checkpoint records it: :func:`holdout_fingerprint` of an ``imagefolder:``
    spec without ``val/``, the SHA-256 of the file of an ``npz:PATH#holdout`` spec (its 10% is drawn from the file's
    images: another file holds out other images); None for any other spec (or a file not there: the loader says so)."""
    kind, _, path = spec.partition(":")
    if kind == "npz" and path.endswith(HOLDOUT_MARK):
        f = Path(path[: -len(HOLDOUT_MARK)]).expanduser()
        return {"file_sha256": sha256_file(f)} if f.is_file() else None
    return holdout_fingerprint(path) if kind == "imagefolder" and path else None


def _holdout_counts(now: Optional[dict], then: dict) -> str:
    """How a holdout moved, for the messages: file counts of a folder, hashes of an npz file."""
    if "file_sha256" in then:
        return f"the file's SHA-256 is {now['file_sha256'][:12] if now else 'unknown'}... now, {str(then['file_sha256'])[:12]}... then"
    return f"{now['files'] if now else 'no'} held-out files now, {then.get('files')} then"


def _holdout_source(then: dict) -> str:
    return ("its held-out 10% is drawn from the file's images" if "file_sha256" in then
            else "with no val/ folder its held-out images are drawn from train/'s file list")


def holdout_changed(spec: str, extras: Optional[dict], whose: str = "the model") -> str:
    """A warning when ``spec`` is the folder a checkpoint (``whose``, for the message) was trained on and its holdout is not
    the one recorded then (files were added, removed or renamed), else ""."""
    then = (extras or {}).get("holdout")
    if not isinstance(then, dict) or not same_data(spec, recorded_train_args(extras).get("data")):
        return ""
    try:
        now = holdout_of(spec)
    except DataError:  # not readable here: the loader says so
        return ""
    if now is None or now == then:
        return ""
    fix = ("restore the file as it was, or train again" if "file_sha256" in then
           else "restore the folder as it was, or give it a val/ folder and train again")
    return (f"warning: {spec} has changed since {whose} was trained on it: {_holdout_source(then)}, and they are not the ones "
            f"held out then ({_holdout_counts(now, then)}). Images the model was trained on may now count as held out, and figures "
            f"read on them are too high: {fix}")


def check_resumed_holdout(spec: str, now: Optional[dict], resumed: Optional[dict]) -> None:
    """Refuse to resume on a folder whose holdout is not the one the run started with (it would train on images held
    out then); ``now``: :func:`holdout_of` listed before the decode. An npz run from before the 10% holdout is said."""
    if resumed is not None and (said := npz_in_sample(spec, spec)):  # the run's own file, read whole (opened once)
        print(f"note: this run validates on the images it trains on ({said}): its val top-1 and best.pt are "
              "in-sample; a new run (without --resume) holds 10% out", file=sys.stderr)
    then = (resumed or {}).get("holdout")
    if isinstance(then, dict) and now != then:
        kind, _, root = spec.partition(":")  # hidden files (macOS's ._photo.jpg) were listed as images before 2026-12-05
        hidden = [p for p in Path(root).expanduser().glob("train/*/.*") if p.suffix.lower() in IMAGE_EXTS] if kind == "imagefolder" else []
        why = (f"; it holds {len(hidden)} hidden file(s) named like images (e.g. {hidden[0].name}), which are no longer read as "
               "images: a run started before that listed them" if hidden else "")
        raise DataError(f"--resume: {spec} changed since the run started ({_holdout_counts(now, then)}): {_holdout_source(then)}, "
                        f"so the resumed run would train on images held out then{why}. Restore it as it was, or start a new run")


def check_training_holdout(spec: str, before: Optional[dict]) -> None:
    """Refuse a training run whose folder's holdout moved while its images were read (``before``: listed before the decode)."""
    if holdout_of(spec) != before:
        raise DataError(f"{spec} changed while its images were read, and {_holdout_source(before or {})}: train again once it is "
                        "settled")


def recorded_data(extras: Optional[dict]) -> list[str]:
    """The dataset specs a checkpoint records, most portable first: a published reference's
    evaluation set (``eval_data``), its data, and the data its training run was given."""
    extras = extras or {}
    out = [str(extras[k]) for k in ("eval_data", "data") if extras.get(k)]
    if trained := recorded_train_args(extras).get("data"):
        out.append(str(trained))
    return list(dict.fromkeys(out))


def checkpoint_data(model_name: str, extras: Optional[dict] = None, cfg=None, split: str = "train") -> tuple[Optional[str], str]:
    """The dataset a checkpoint is evaluated and calibrated on when none is given: the first spec it
    records (:func:`recorded_data`) that is on this machine, else its variant's registered dataset.

    Returns ``(spec, note)``; the note (else "") says when the checkpoint's own data is not here and
    another set stands in, so that no figure is silently measured on other images. ``spec`` is None when
    nothing is known; when nothing is here, the first candidate (its loader then says where it looked).
    Each candidate is tried on ``split``, the split the caller reads.
    """
    recorded = recorded_data(extras)
    candidates = list(recorded)
    try:
        candidates.append(default_data(model_name, extras, cfg))
    except DataError:
        pass
    if cfg is not None and (cfg.in_chans, cfg.img_size) == (1, 28):
        candidates.append("fashion-mnist")
    trained = recorded_train_args(extras).get("data")  # accuracies on images the model trained on: never a stand-in, nor the fall-back
    said = {c: trained_on_val(c, trained) for c in dict.fromkeys(candidates)} if split == "val" else {}
    in_sample = next((v for v in said.values() if v), "")
    candidates = [c for c in dict.fromkeys(candidates) if not said.get(c)]
    why: list[str] = []  # each recorded set that could not be read, and why
    for spec in candidates:
        try:
            if spec.startswith("imagefolder:") and spec.partition(":")[2]:  # here: its folders list (nothing decoded)
                split_files(spec.partition(":")[2], split)
            else:
                load_dataset(spec, split, download=False, limit=1)
        except DataError as e:
            if spec in recorded:
                why.append(f"{spec}: {str(e)[:300]}")
            continue
        if why:  # an earlier recorded set (e.g. its evaluation set) is not here: said, even when another recorded one stands in
            return spec, f"the checkpoint's own data could not be read here ({'; '.join(why)}); using {spec} instead"
        return spec, ""
    return (candidates[0] if candidates else None), (f"{in_sample}: not a stand-in for its evaluation" if in_sample else "")


def trained_on_val(spec: str, train_spec: Optional[str]) -> str:
    """Why ``spec``'s val images are among those a run on ``train_spec`` trained on ("" when not known to be)."""
    if spec == "cifar10-ref" and isinstance(train_spec, str) and (train_spec == "cifar10" or train_spec.startswith("cifar10:")):
        return f"cifar10-ref's val images are 5,000 of CIFAR-10's training images, every one of which {train_spec} trained on"
    return ""


def npz_in_sample(spec: str, train_spec: Optional[str]) -> str:
    """Why ``spec`` is the whole npz file a run recorded before npz files had a held-out 10% trained on ("" if not)."""
    if isinstance(train_spec, str) and same_data(spec.removesuffix(HOLDOUT_MARK), train_spec) and npz_read_whole(train_spec):
        return f"{spec} holds one set of images (no 'split' entry), and the run, recorded before npz files had a held-out 10%, trained on all of it"
    return ""


def check_stored_preprocess(ds: ImageSet, pre: Preprocess, model_name: str, spec: str) -> None:
    """Images stored preprocessed are trained on as they are: refused unless preprocessed as the model expects (the
    checkpoint would record the model's preprocessing, and a deployed bundle would feed frames the model never saw)."""
    if ds.preprocessed and pre != ds.preprocess:
        raise DataError(f"{spec} holds images already preprocessed as {ds.preprocess.to_dict()}, but {model_name} expects "
                        f"{pre.to_dict()}: write the set as uint8 pixels (python -m dvt_edge.data export, or np.savez of the raw "
                        "images), or preprocessed as the model expects")


def own_holdout(data: str, extras: Optional[dict]) -> str:
    """``data`` as given, or its recorded ``npz:PATH#holdout`` when it names the npz file the checkpoint's run trained on
    (said on stderr): read whole, its val split would score, and choose thresholds on, the images trained on."""
    if held := held_out_part(data, recorded_train_args(extras).get("data")):
        print(f"note: {data} is the file this model trained on, 90% of it: {held} is read instead (its held-out 10% as the "
              "val split)", file=sys.stderr)
        return held
    return data


def data_for_checkpoint(data: Optional[str], model_name: str, extras: Optional[dict] = None, cfg=None,
                        split: str = "val") -> tuple[str, str]:
    """``(data, "")`` when given, else :func:`checkpoint_data`'s choice (tried on ``split``) and note; a stand-in
    set is said on stderr."""
    spec, note = (own_holdout(data, extras), "") if data else checkpoint_data(model_name, extras, cfg, split)
    if spec and (warning := holdout_changed(spec, extras)):  # e.g. the file changed since: its 10% is other images
        print(warning, file=sys.stderr)
    trained = recorded_train_args(extras).get("data")
    if spec and split == "val" and (said := (data and trained_on_val(spec, trained)) or npz_in_sample(spec, trained)):
        print(f"warning: {said}: its accuracies there are in-sample", file=sys.stderr)
    if data:
        return spec, ""
    if spec is None:
        raise DataError(f"no default dataset for model {model_name!r}; pass --data (valid specs: {', '.join(DATASETS)})")
    if note:
        print(f"note: {note} (pass --data SPEC to choose)", file=sys.stderr)
    return spec, note


def load_dataset(spec: str = "fashion-mnist", split: str = "train", preprocess: Optional[Preprocess] = None, download: bool = True,
                 limit: Optional[int] = None, seed: int = 0, listed: bool = False) -> ImageSet:
    """Open a dataset by spec string; ``preprocess`` overrides the dataset's default (e.g. a model's).

    ``limit``: a seeded, class-stratified random ``limit`` of the split (``ImageSet.limit(limit, seed)``);
    image folders pick it from their file listing and decode only those files (``listed``: none, as file paths).
    """
    if split not in _SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; valid: {sorted(_SPLIT_ALIASES)}")
    split = _SPLIT_ALIASES[split]
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder":
        if not arg:
            raise DataError(f"dataset spec {spec!r} needs a path: {kind}:PATH")
        return _folders.listed_imagefolder(arg, split, preprocess) if listed else load_imagefolder(arg, split, preprocess, limit, seed)
    if kind == "cifar10-jpeg":
        root = find_cifar10_jpeg()
        ds = (_folders.listed_imagefolder if listed else load_imagefolder)(str(root), split, preprocess or cifar10_preprocess(),  # the
                                                                   *(() if listed else (limit, seed)))  # reference's, not ImageNet's
        check_reference_holdout(ds, root, split)
        ds.name = "cifar10-jpeg"
        return ds
    return _load_whole(spec, split, preprocess, download).limit(limit, seed)


def _load_whole(spec: str, split: str, preprocess: Optional[Preprocess], download: bool) -> ImageSet:
    """A split held in memory or in one file (every spec but image folders)."""
    kind, _, arg = spec.partition(":")
    if kind in ("fashion-mnist", "fashion_mnist", "fmnist"):
        ds = load_fashion_mnist(split, download)
        if preprocess is not None:
            ds.preprocess = preprocess
        return ds
    if kind == "cifar10":
        return load_cifar10(arg, split, preprocess, download)
    if kind == "cifar10-ref":
        ds = load_npz(str(CIFAR10_REF[split]), split, preprocess)
        ds.name = "cifar10-ref"
        return ds
    if kind == "npz":
        if not arg:
            raise DataError(f"dataset spec {spec!r} needs a path: {kind}:PATH")
        return load_npz_spec(arg, split, preprocess)
    raise DataError(f"unknown dataset spec {spec!r}; valid: {list(DATASETS)}" + (f" (an .npz file: npz:{spec})" if spec.endswith(".npz") else ""))


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=command_name("python -m dvt_edge.data"), description=__doc__, formatter_class=DocFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a preprocessed .npz (calibration/validation set for devices)")
    ex.add_argument("--data", default=None, help=f"dataset spec: {', '.join(DATASETS)} (default: --checkpoint's own data)")
    ex.add_argument("--split", default="val", help="train or val (test; the default)")
    ex.add_argument("--n", type=int, default=None, help="number of samples (default: all)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the random subset (default 0)")
    ex.add_argument("--checkpoint", default=None, help="use this checkpoint's preprocessing (and, for a 1000-class ImageNet model "
                                                       "and a folder of some of ImageNet's synsets, ImageNet's class indices)")
    ex.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling of --checkpoint (only for files you trust)")
    ex.add_argument("--out", required=True, help="the .npz to write")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars (as TQDM_DISABLE=1)")
    info = sub.add_parser("info", help="print what a dataset spec resolves to")
    info.add_argument("--data", required=True, help=f"dataset spec: {', '.join(DATASETS)}")
    info.add_argument("--json", action="store_true", help="print JSON (dvt-edge/data-info/1: each split's classes and images per class)")
    info.add_argument("--no-progress", action="store_true", help="accepted as every command takes it (info draws no progress bar)")
    return ap


def scoring_set(spec: str, split: str, preprocess: Optional[Preprocess], num_classes: int, classes: Optional[list[str]],
                use: str, limit: Optional[int] = None, seed: int = 0, checkpoint: str = "CHECKPOINT", stand_in: str = "") -> ImageSet:
    """``spec``'s ``split`` (``limit``: a seeded, class-stratified subset), whose labels must be a model's: another
    data set's would score every exit wrong (``use``: what the caller does with it, ``checkpoint`` the model's
    file, and ``stand_in`` :func:`checkpoint_data`'s note when ``spec`` stands in for the model's own data, for the message)."""
    ds = load_dataset(spec, split, preprocess=preprocess, limit=limit, seed=seed)
    if ds.preprocessed and preprocess is not None and ds.preprocess != preprocess:  # an npz of float32 another recipe made
        want = preprocess.to_dict()
        diff = ", ".join(f"{k}: {v} vs {want[k]}" for k, v in ds.preprocess.to_dict().items() if v != want[k])
        raise DataError(f"{spec} holds images preprocessed otherwise than this model expects ({diff}): scores on them are not the "
                        f"model's; write them with its preprocessing: python -m dvt_edge.data export --checkpoint {quote_arg(str(checkpoint))} --data ... "
                        "--out val.npz, or store uint8 pixels")
    if limit is not None and len(ds) < limit:  # said, not only in the JSON's n_images
        left = len(ds.skipped)  # unreadable files among those chosen: the split is larger than what was read
        has = f"{len(ds)} readable images of the {len(ds) + left} chosen" if left else f"{len(ds)} images"
        print(f"note: {spec}'s {split} split has {has}, all used to {use} it (up to {limit} would be)", file=sys.stderr)
    ds = as_model_labels(ds, num_classes, classes) or ds  # some of the model's classes (ImageNet's synset folders, a test folder)
    mismatch = label_mismatch(ds, num_classes, classes)
    if mismatch and stand_in:  # the model's own images are missing here: that is the fix, not a model for these classes
        raise DataError(f"{spec} cannot {use} this model: {mismatch}. It stood in because {stand_in.replace(f'; using {spec} instead', '')}: "
                        "pass --data SPEC with the images the model was trained on (moved? their new path)")
    if mismatch and "rename the folders" in mismatch:  # the model's classes, spelled ambiguously: no other model is needed
        raise DataError(f"{spec} cannot {use} this model: {mismatch}")
    if mismatch:
        raise DataError(f"{spec} cannot {use} this model: {mismatch} (a model for these classes: python -m dvt_edge.train "
                        f"--finetune {quote_arg(checkpoint)} --data {quote_arg(spec)} --out runs/NAME)")
    return ds


def _export(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.out == "-":  # a file named "-" had been written where a pipe's reader waited
        raise DataError("--out -: standard output cannot take an .npz; name the .npz file to write (e.g. val.npz)")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; name the .npz file to write (e.g. {out / 'val.npz'})")
    if out.exists() and not args.force:
        raise DataError(f"--out {out} exists; pass --force to replace it, or choose another name")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataError(f"--out {out}: {blocker} is a file, not a folder")
    if (near := next((p for p in out.parents if p.exists()), None)) is not None and (why := unwritable(near)):
        raise DataError(f"--out {out}: cannot write in {near} ({why}); choose another path")  # before the (long) read
    pre = model = None
    if not args.data and not args.checkpoint:  # it had been Fashion-MNIST whatever the model (a 4-class photo model's calibration set)
        raise DataError(f"pass --data SPEC (valid: {', '.join(DATASETS)}), or --checkpoint CKPT to write its own data set")
    if args.checkpoint:
        from dvt_edge.checkpoint import load_checkpoint

        model, info = load_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
        pre = info.preprocess
        if _SPLIT_ALIASES.get(args.split) == "val" or not args.data:  # a calibration set of trained-on images: its held-out part, or said
            args.data = data_for_checkpoint(args.data, model.name, info.extras, model.cfg, _SPLIT_ALIASES.get(args.split, "val"))[0]
    ds = load_dataset(args.data, args.split, preprocess=pre, limit=args.n, seed=args.seed)  # an image folder decodes only those
    if model is not None:  # labelled as the bundles of this checkpoint answer, which the runtime's calibrate checks
        ds = as_model_labels(ds, model.cfg.num_classes, info.classes) or ds
        if mismatch := label_mismatch(ds, model.cfg.num_classes, info.classes):
            print(f"warning: {args.data} is not labelled with {args.checkpoint}'s classes ({mismatch}): the runtime's calibrate "
                  "will refuse this file for that checkpoint's bundles", file=sys.stderr)
    # sets of one size and colour (a folder of photos is resized photo by photo: its default, 224 px for photos over 64 px,
    # was said as the folder's size for the checkpoint's own training folder, and the folder was decoded twice)
    photos = args.data.partition(":")[0] == "imagefolder"
    native = load_dataset(args.data, args.split, limit=args.n, seed=args.seed).preprocess if pre is not None and not photos else None
    if native is not None and (native.num_channels, native.size) != (pre.num_channels, pre.size):
        print(f"warning: {args.checkpoint} takes {pre.num_channels}-channel {pre.size} px input; {args.data} is "
              f"{native.num_channels}-channel {native.size} px: its images are converted to the checkpoint's input", file=sys.stderr)
    out = export_npz(ds, out, None, None if args.n is not None else args.seed)  # limited already, in the subset's order
    print(f"wrote {out} ({len(ds)} samples of {ds.name}/{ds.split}, preprocessed {ds.preprocess.input_shape})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with silenced_progress(getattr(args, "no_progress", False)):
            if args.cmd == "info":
                from dvt_edge.datainfo import print_info

                print_info(args.data, args.json)
            else:
                _export(args)
        return 0
    except (DataError, ValueError, OSError) as e:  # CheckpointError (--checkpoint) is a ValueError too
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
