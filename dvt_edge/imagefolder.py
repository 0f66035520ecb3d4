"""Image folders (spec ``imagefolder:PATH``): ``ROOT/<split>/<class>/*`` decoded once with OpenCV,
unreadable and truncated files skipped, and a seeded holdout of ``train/`` when there is no ``val/``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.imageset import DataError, ImageSet, default_preprocess, display_classes, read_image, stratified_subset
from dvt_runtime.io import progress
from dvt_runtime.preprocess import Preprocess

__all__ = ["IMAGE_EXTS", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "load_imagefolder"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: An image folder without ``val/`` holds out this fraction of ``train/`` (seeded,
#: class-stratified) as its validation split; the rest is the training split.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0

#: decoded class folders, keyed by folder, classes and the class folders' mtimes
_FOLDER_CACHE: dict[tuple, tuple] = {}


def load_imagefolder(root: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    """``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (or ``test/``).

    Without a ``val/`` (or ``test/``) folder, a seeded class-stratified
    ``HOLDOUT_FRACTION`` of ``train/`` is the validation split and is left out of the
    training split. Images are decoded once; folders of equally sized images are held in
    memory as one uint8 array (so training is compute-bound), others as file paths.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a directory (expected {base}/train/<class>/*.jpg and {base}/val/<class>/*.jpg)")
    val_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    holdout = split == "val" and val_dir is None and (base / "train").is_dir()
    sub = base / "train" if (split == "train" or holdout) else val_dir
    if sub is None or not sub.is_dir():
        raise DataError(f"imagefolder: no {split}/ folder in {base} (expected ImageNet-style {base}/{split}/<class>/<image>)")
    train_classes = _class_dirs(base / "train") if (base / "train").is_dir() else []
    own = _class_dirs(sub)
    if train_classes and (extra := sorted(set(own) - set(train_classes))):  # their images would be dropped silently
        raise DataError(f"imagefolder: the class folders of {sub} differ from those of {base / 'train'}: only in {sub.name}/: "
                        f"{extra}, only in train/: {sorted(set(train_classes) - set(own))}; give both splits the same "
                        "class folders (same names, same case; a class missing from val/ is only warned about)")
    classes = train_classes or own
    if not classes:
        raise DataError(f"imagefolder: {sub} has no class folders")
    # decoded once per process; a changed class folder (mtime) is read again
    key = (str(sub.resolve()), tuple(classes), tuple((sub / c).stat().st_mtime_ns if (sub / c).is_dir() else 0 for c in classes))
    if key not in _FOLDER_CACHE:
        _FOLDER_CACHE[key] = _read_class_folders(sub, classes, "train" if holdout else split)
    images, labels, skipped, files, look = _FOLDER_CACHE[key]
    if preprocess is None:
        preprocess = _folder_preprocess(*look)
    ds = ImageSet(f"imagefolder:{base}", split, images, np.array(labels), display_classes(classes), preprocess, skipped=skipped,
                  files=files)
    if val_dir is None:  # hold out part of train/ as the validation split
        ds = _holdout_split(ds, split, base)
    return ds


def _class_dirs(split_dir: Path) -> list[str]:
    """Class folder names of a split, hidden folders (``.ipynb_checkpoints``, ``.DS_Store``-like) left out."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_preprocess(color: bool, side: int) -> Preprocess:
    """The default preprocessing for a folder's images: color when any image has color (a grayscale
    picture in a color set is read as color, never the other way round), 224 px when the median
    image's shorter side is above 64 (one thumbnail does not shrink a folder of photos)."""
    return default_preprocess(3 if color else 1, side if side <= 64 else 224)


def _holdout_split(ds: ImageSet, split: str, base: Path) -> ImageSet:
    """``split`` of a folder without ``val/``: the seeded holdout of ``train/``, or the rest of it."""
    n_val = int(round(HOLDOUT_FRACTION * len(ds)))
    if n_val < ds.num_classes or n_val >= len(ds):
        raise DataError(f"imagefolder: {base} has no val/ folder and too few images ({len(ds)}) to hold out {HOLDOUT_FRACTION:.0%} for validation")
    val_idx = stratified_subset(ds.labels, n_val, HOLDOUT_SEED)
    if split == "val":
        ds = ds.subset(val_idx)
    else:
        ds = ds.subset(np.setdiff1d(np.arange(len(ds)), val_idx))
        gone = [c for c, k in zip(ds.classes, np.bincount(ds.labels, minlength=ds.num_classes)) if k == 0]
        if gone:  # the holdout took a class's only image(s): the model would never see that class
            raise DataError(f"imagefolder: {base} has no val/ folder, and holding out {HOLDOUT_FRACTION:.0%} for validation "
                            f"leaves no training image of class(es) {gone[:10]}; add images of them, or a val/ folder")
    ds.name = f"imagefolder:{base}"
    return ds


def _read_class_folders(sub: Path, classes: list[str], split: str) -> tuple[object, list[int], list[str], list[str], tuple[bool, int]]:
    """Decode every image of ``sub/<class>/`` once -> (uint8 array or paths, labels, skipped, paths,
    (any image in color, the median image's shorter side))."""
    files, labels = _list_class_folders(sub, classes)
    decoded, keep, kept_paths, skipped = [], [], [], []
    shapes: set[tuple[int, ...]] = set()
    in_memory, nbytes, color, sides = True, 0, False, []
    for p, y in zip(progress(files, desc=f"decode {sub}", unit="img", enabled=len(files) > 2000), labels):
        img = _try_read(p)
        if img is None:
            skipped.append(str(p))
            continue
        keep.append(y)
        kept_paths.append(str(p))
        shapes.add(img.shape)
        color = color or (img.ndim == 3 and img.shape[2] >= 3)
        sides.append(min(img.shape[:2]))
        if in_memory:
            decoded.append(img)
            nbytes += img.nbytes
            if len(shapes) > 1 or nbytes > 2e9:  # mixed sizes, or too large: paths, decoded again on access
                in_memory, decoded = False, []
    _check_classes(sub, classes, keep, skipped, split)
    images: object = np.stack(decoded) if in_memory and decoded else kept_paths  # (N, H, W[, C]) uint8, or paths
    return images, keep, skipped, kept_paths, (color, int(np.median(sides)) if sides else 0)


def _list_class_folders(sub: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The image files directly in ``sub/<class>/`` and their class indices (nested folders: a warning)."""
    files, labels = [], []
    nested: list[str] = []
    for ci, cname in enumerate(classes):
        cdir = sub / cname
        entries = sorted(cdir.iterdir()) if cdir.is_dir() else []
        nested += [str(p) for p in entries if p.is_dir()]
        for p in entries:
            if p.suffix.lower() in IMAGE_EXTS and (p.is_file() or p.is_symlink()):  # a broken link: counted as skipped
                files.append(p)
                labels.append(ci)
    if nested:
        warnings.warn(f"imagefolder: ignoring {len(nested)} folder(s) nested inside class folders of {sub}, e.g. {nested[:3]} "
                      "(images must lie directly in <split>/<class>/)", stacklevel=4)
    return files, labels


def _check_classes(sub: Path, classes: list[str], keep: list[int], skipped: list[str], split: str) -> None:
    """Refuse a training split with an empty class; warn about skipped files, empty or unbalanced classes."""
    counts = {c: 0 for c in classes}
    for y in keep:
        counts[classes[y]] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if split == "train" and empty:
        raise DataError(f"imagefolder: class folder(s) with no readable image in {sub}: {empty}")
    if empty:
        warnings.warn(f"imagefolder: {sub} has no images for class(es) {empty}", stacklevel=4)
    if skipped:
        warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable or truncated image(s) in {sub}, e.g. {skipped[:3]}", stacklevel=4)
    nz = [n for n in counts.values() if n]
    if nz and max(nz) > 10 * min(nz):
        warnings.warn(f"imagefolder: {sub} is very unbalanced (images per class: {counts})", stacklevel=4)


def _try_read(p: Path) -> Optional[np.ndarray]:
    """Decoded uint8 pixels, or None for a file that cannot be read or fully decoded (truncated JPEGs included)."""
    try:
        return read_image(p)
    except DataError:
        return None
