"""Data sets in one ``.npz`` file (spec ``npz:PATH``): pixel or preprocessed arrays, or a JPEG
pack; writing JPEG packs and the preprocessed exports a device reads with numpy alone."""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.imageset import DataError, ImageSet, SplitNotHeld, decode_image, default_preprocess
from dvt_runtime.io import atomic_write, check_labels, read_npz
from dvt_runtime.npzsets import bgr_pixels
from dvt_runtime.preprocess import Preprocess

__all__ = ["load_npz", "write_jpeg_pack", "export_npz"]


#: ``npz:PATH#holdout``: a file without a 'split' entry, as training records it: 10% held out for validation (seeded,
#: class-stratified, as an image folder without val/), never trained on; "val" is that part and "train" the rest
HOLDOUT_MARK = "#holdout"


def npz_has_split(path: str) -> Optional[bool]:
    """Whether the .npz at ``path`` names the split it holds (None: not readable here; loading it says why)."""
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as z:
            return "split" in z.files
    except (OSError, ValueError, zipfile.BadZipFile):  # a truncated file: loading it says so
        return None


def load_npz_spec(arg: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    """The ``PATH`` or ``PATH#holdout`` of an ``npz:`` spec (see :data:`HOLDOUT_MARK`)."""
    from dvt_edge.imagefolder import holdout_indices

    path = arg[: -len(HOLDOUT_MARK)] if arg.endswith(HOLDOUT_MARK) else arg
    if path == arg:
        return load_npz(path, split, preprocess)
    if npz_has_split(path):
        raise DataError(f"npz:{arg}: {path} names the split it holds, so there is nothing to hold out: use npz:{path}")
    ds = load_npz(path, split, preprocess)
    side = ds.subset(holdout_indices(ds.labels, split, Path(path), ds.classes, why=f"npz: {path} has no 'split' entry", fix=""))
    side.name, side.split_size = f"npz:{arg}", None
    return side


def load_npz(path: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    """Arrays ``images`` + ``labels`` (+ ``classes``, ``preprocess``), or a JPEG pack:
    ``jpeg`` (uint8, every file's bytes end to end) + ``offsets`` (N+1) + ``labels``.

    An optional ``split`` entry names the one split the file holds; asking for another is
    an error (so a held-out set can never serve as training data by accident). Colour pixels are
    read in OpenCV's BGR order; a file of RGB pixels (PIL, torchvision) says so with an entry
    ``channel_order`` = ``"rgb"``.
    """
    p = Path(path).expanduser()
    hint = "write one with numpy.savez (arrays 'images', 'labels', optional 'classes') or python -m dvt_edge.data export"
    z = read_npz(p, (), lambda m: DataError(f"npz: {m}"), hint)
    files = list(z)
    if "split" in files and str(z["split"]) != split:
        raise SplitNotHeld(f"npz: {p} holds only the {str(z['split'])!r} split, not {split!r}")
    jpeg = "jpeg" in files and "offsets" in files
    for k in ("labels",) if jpeg else ("images", "labels"):
        if k not in files:
            raise DataError(f"npz: {p} has no '{k}' array (found {files}); expected 'images', 'labels' and optional 'classes'")
    labels = check_labels(z["labels"], f"npz: {p}", DataError)
    classes = [str(c) for c in z["classes"]] if "classes" in files else _numbered_classes(labels, p)
    if len(set(classes)) != len(classes):
        raise DataError(f"npz: {p}: 'classes' names a class twice: {sorted({c for c in classes if classes.count(c) > 1})[:5]}")
    try:
        stored = Preprocess.from_dict(json.loads(str(z["preprocess"]))) if "preprocess" in files else None
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        raise DataError(f"npz: {p} has an unusable 'preprocess' entry ({e}); re-export it with python -m dvt_edge.data export") from None
    images = _decode_jpeg_pack(z["jpeg"], z["offsets"], p) if jpeg else z["images"]
    if len(images) != len(labels):
        raise DataError(f"npz: {p} has {len(images)} images but {len(labels)} labels")
    if images.dtype == np.float32 and images.ndim == 4:
        pre = stored or preprocess or default_preprocess(images.shape[1], images.shape[2])
        if tuple(images.shape[1:]) != tuple(pre.input_shape):  # e.g. NHWC, or another model's input
            raise DataError(f"npz: {p}: preprocessed images must be float32 (N, C, H, W) = (N, {', '.join(map(str, pre.input_shape))}) "
                            f"for its preprocessing, got {images.shape}")
        if not np.isfinite(images).all():
            raise DataError(f"npz: {p}: preprocessed images hold NaN or infinite values")
        return ImageSet(f"npz:{p}", split, images, labels, classes, pre, preprocessed=True)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
        raise DataError(f"npz: 'images' must be uint8 pixels (N, H, W) or (N, H, W, 1/3/4 channels), or preprocessed float32 "
                        f"(N, C, H, W); got {images.dtype} {images.shape}")
    images = bgr_pixels(z, images, p, lambda m: DataError(f"npz: {m}"))
    chans = 1 if images.ndim == 3 else images.shape[3]
    pre = preprocess or stored or default_preprocess(1 if chans == 1 else 3, images.shape[1])
    return ImageSet(f"npz:{p}", split, images, labels, classes, pre)


def _numbered_classes(labels: np.ndarray, p: Path) -> list[str]:
    """Class names "0".."max label" for a file without ``classes``; every class must occur."""
    top, present = int(labels.max()), set(np.unique(labels).tolist())
    if len(present) < top + 1 and (labels >= 0).all():  # without building 10**12 names for a label of 10**12 (bincount did too)
        skipped = list(itertools.islice((i for i in range(top + 1) if i not in present), 10))
        raise DataError(f"npz: {p} has no 'classes' array and labels skip class(es) {skipped} (labels run 0..{top}, {len(labels)} "
                        "images); add a 'classes' array naming every class")
    classes = [str(i) for i in range(top + 1)]
    return classes


def _decode_jpeg_pack(data: np.ndarray, offsets: np.ndarray, p: Path) -> np.ndarray:
    if data.dtype != np.uint8 or offsets.dtype.kind not in "iu" or offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(data) or (np.diff(offsets) <= 0).any():
        raise DataError(f"npz: {p}: 'jpeg' must be uint8 bytes and 'offsets' N+1 increasing positions from 0 to len(jpeg)")
    out = [decode_image(data[offsets[i] : offsets[i + 1]], f"npz: {p}: image {i} of the JPEG pack") for i in range(len(offsets) - 1)]
    if len({im.shape for im in out}) != 1:
        raise DataError(f"npz: {p}: the JPEG pack's images differ in size")
    return np.stack(out)


def write_jpeg_pack(ds: ImageSet, out: Path, split: str = "val") -> Path:
    """Pack an image folder's files byte for byte (no re-encoding) into one ``.npz``.

    Decoding the pack gives exactly the pixels of the files (same decoder), so a
    held-out split can travel with the package.
    """
    if not ds.files:
        raise DataError(f"write_jpeg_pack needs an image-folder dataset; {ds.name} has no source files")
    paths = ds.files
    blobs = [np.fromfile(f, dtype=np.uint8) for f in paths]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, jpeg=np.concatenate(blobs), offsets=offsets, labels=ds.labels, classes=np.array(ds.classes),
             names=np.array([str(Path(f).relative_to(Path(f).parents[2])) for f in paths]), split=np.array(split),
             preprocess=np.array(json.dumps(ds.preprocess.to_dict())), source=np.array(f"{ds.name} ({ds.split} split)"))
    atomic_write(out, buf.getvalue())
    return Path(out)


def export_npz(ds: ImageSet, out: Path, n: Optional[int] = None, seed: Optional[int] = 0, progress: bool = True) -> Path:
    """Write a preprocessed subset (float32 NCHW) a device can read with numpy alone (``n``, ``seed``: as
    ``ImageSet.arrays`` takes them; ``seed=None`` keeps the set's order)."""
    x, y = ds.arrays(n, seed=seed, progress=progress)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=x, labels=y, classes=np.array(ds.classes), split=np.array(ds.split),  # loading it as another split is refused
        preprocess=np.array(json.dumps(ds.preprocess.to_dict())), source=np.array(f"{ds.name} ({ds.split} split)"),
    )
    atomic_write(out, buf.getvalue())
    return Path(out)
