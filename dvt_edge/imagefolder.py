"""Image folders (spec ``imagefolder:PATH``): ``ROOT/<split>/<class>/*`` decoded once with OpenCV,
unreadable, truncated and corrupt files skipped (counted by kind), and a seeded holdout of ``train/`` when there is no ``val/``."""

from __future__ import annotations

import collections
import hashlib
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from dvt_edge.imageset import DataError, ImageSet, class_counts, default_preprocess, display_classes, odd_class_names, stratified_subset
from dvt_runtime import images as _images
from dvt_runtime.console import progress
from dvt_runtime.images import IMAGE_EXTS
from dvt_runtime.preprocess import Preprocess

__all__ = ["IMAGE_EXTS", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "holdout_fingerprint", "holdout_indices", "load_imagefolder", "split_files"]

#: An image folder without ``val/`` holds out this fraction of ``train/`` (seeded,
#: class-stratified) as its validation split; the rest is the training split.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0

#: listed class folders (files, labels), keyed by folder, classes and the class folders' mtimes
_LISTINGS: dict[tuple, tuple[list[Path], np.ndarray]] = {}
#: decoded selections of a listing, keyed by the listing's key and the selection (the last few kept)
_DECODED: dict[tuple, tuple] = {}
_DECODED_KEPT = 4
#: a subset's default preprocessing also looks at this many of its split's images (seeded): _sample_look
LOOK_SAMPLE = 256
_LOOKS: dict[tuple, tuple[bool, int]] = {}


class _Split(NamedTuple):
    """A split's files, before any is decoded."""

    base: Path
    sub: Path  # the folder its files are in
    classes: list[str]  # class folder names
    key: tuple  # the listing's cache key
    files: list[Path]  # every image file of ``sub``'s class folders
    labels: np.ndarray  # their class indices
    idx: np.ndarray  # which of them are the split's (all, or a holdout's side)


def load_imagefolder(root: str, split: str, preprocess: Optional[Preprocess], limit: Optional[int] = None,
                     seed: int = 0) -> ImageSet:
    """``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (or ``test/``).

    Without a ``val/`` (or ``test/``) folder, a seeded class-stratified
    ``HOLDOUT_FRACTION`` of ``train/``'s files is the validation split and is left out of the
    training split. ``limit``: a seeded, class-stratified random ``limit`` of the split's files
    (``ImageSet.limit``'s subset), chosen from the file listing so that only they are decoded.
    Images are decoded once per process; unreadable and truncated files are left out and
    said; sets of equally sized images are held in memory as one uint8 array (so training is
    compute-bound), others as file paths.
    """
    sp = _split(root, split)
    idx, whole = sp.idx, len(sp.idx)
    if limit is not None:
        idx = idx[stratified_subset(sp.labels[idx], limit, seed)]  # as ImageSet.limit picks it
    images, kept, skipped, paths, look, sides = _decoded(sp, split, idx)
    if preprocess is None:  # a subset's default: its look and that of a fixed sample of the split, not the subset's alone
        if len(idx) < whole:
            color, side = _sample_look(sp, split)
            look = (look[0] or color, side or look[1])
        preprocess = _folder_preprocess(*look)
    elif preprocess.num_channels == 1 and look[0] and (shown := _colour_picture(images, paths)):  # a grayscale model's input
        warnings.warn(f"imagefolder: {sp.sub} holds colour pictures (e.g. {shown}) and the preprocessing given takes 1 channel (a "
                      "grayscale model's): they are converted to gray", stacklevel=3)
    _warn_small(sp.sub, paths, sides, preprocess.resize)
    return ImageSet(f"imagefolder:{sp.base}", split, images, kept, display_classes(sp.classes), preprocess, skipped=skipped,
                    files=paths, split_size=whole if len(idx) < whole else 0)


def listed_imagefolder(root: str, split: str, preprocess: Optional[Preprocess] = None) -> ImageSet:
    """The split as listed, nothing decoded: its images are its files' paths (unreadable ones still among them), the default
    preprocessing from a fixed sample. What ``data info`` counts (500,000 files had been decoded to be counted: 62 s, 3.2 GB)."""
    sp = _split(root, split)
    files = [str(sp.files[i]) for i in sp.idx]
    return ImageSet(f"imagefolder:{sp.base}", split, files, sp.labels[sp.idx], display_classes(sp.classes),
                    preprocess or _folder_preprocess(*_sample_look(sp, split)), files=files)


def _warn_small(sub: Path, paths: list[str], sides: np.ndarray, resize: int) -> None:
    """Warn about images upscaled 4x or more (a thumbnail or an icon among photos), as ``predict`` marks them."""
    small = np.flatnonzero(4 * sides <= resize)
    if len(small):
        eg = ", ".join(f"{paths[i]} ({sides[i]} px)" for i in small[:3])
        warnings.warn(f"imagefolder: {len(small)} image(s) in {sub} have a shorter side of at most 1/4 of the {resize} px the "
                      f"preprocessing resizes to, so they are upscaled 4x or more, e.g. {eg}: check they are the pictures you meant",
                      stacklevel=3)


def _decoded(sp: _Split, split: str, idx: np.ndarray) -> tuple:
    """The files ``idx`` of a listing decoded (:func:`_decode`), from the cache of the last few selections."""
    dkey = (sp.key, split, len(idx), hashlib.sha1(idx.astype(np.int64).tobytes()).hexdigest())
    if dkey not in _DECODED:
        while len(_DECODED) >= _DECODED_KEPT:
            _DECODED.pop(next(iter(_DECODED)))
        # a subset of the listing (a limit, or a holdout's side) need not hold every class
        _DECODED[dkey] = _decode(sp.sub, sp.classes, [sp.files[i] for i in idx], sp.labels[idx], split, len(idx) < len(sp.files))
    return _DECODED[dkey]


def _colour_picture(images: object, paths: list[str], sample: int = 64) -> Optional[str]:
    """The path of a picture in colour among the first ``sample`` of a split (its channels differ by more than 2 gray levels
    on average: a gray photo saved as a colour JPEG is none), else None."""
    for i, path in enumerate(paths[:sample]):
        im = images[i] if isinstance(images, np.ndarray) else _try_read(Path(path))[0]
        if im is not None and im.ndim == 3 and im.shape[2] >= 3:
            c = im[..., :3].astype(np.int16)
            if np.abs(c[..., 0] - c[..., 1]).mean() + np.abs(c[..., 1] - c[..., 2]).mean() > 2:
                return path
    return None


def _sample_look(sp: _Split, split: str) -> tuple[bool, int]:
    """(any image in color, the median shorter side) of a seeded stratified ``LOOK_SAMPLE`` of the split's files
    (once per listing): what a subset's default preprocessing also looks at, so that it is not the subset's alone."""
    key = (sp.key, split)
    if key not in _LOOKS:
        pick = sp.idx[stratified_subset(sp.labels[sp.idx], min(LOOK_SAMPLE, len(sp.idx)), 0)]
        # each image's (colour, shorter side), not the image: 256 phone photos held at once took 9 GB for --train-limit 100
        looks = [(im.ndim == 3 and im.shape[2] >= 3, min(im.shape[:2])) for i in pick if (im := _try_read(sp.files[i])[0]) is not None]
        _LOOKS[key] = (any(c for c, _ in looks), int(np.median([s for _, s in looks])) if looks else 0)
    return _LOOKS[key]


def split_files(root: str, split: str) -> list[Path]:
    """The image files of a split, none decoded (a holdout's side chosen from the listing)."""
    sp = _split(root, split)
    return [sp.files[i] for i in sp.idx]


def holdout_fingerprint(root: str) -> Optional[dict]:
    """For a folder without ``val/``: how many files its holdout holds and a hash of their paths under ``train/``, which a
    checkpoint records (the holdout is drawn from the file list: files added or removed later move trained-on images into
    it); None for a folder with its own ``val/``."""
    base = Path(root).expanduser()
    if not (base / "train").is_dir() or any((base / d).is_dir() for d in ("val", "test")):
        return None  # its own val/ (or no train/: the loader says what is wrong)
    sp = _split(root, "val")
    names = sorted(Path(sp.files[i]).relative_to(sp.sub).as_posix() for i in sp.idx)
    return {"files": len(names), "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def _class_folders_hint(base: Path) -> str:
    """When ``base`` itself holds class folders of images (a split folder given, or no split folders made): what to do."""
    try:
        classes = [d.name for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")
                   and any(p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") for p in d.iterdir())]
    except OSError:  # an unreadable folder: the error itself stands
        return ""
    if not classes:
        return ""
    shown = f"{classes[:3]}" + ("..." if len(classes) > 3 else "")
    if base.name in ("train", "val", "test"):
        return f"; {base} holds the class folders {shown}: give its parent, imagefolder:{base.parent}"
    return f"; {base} holds class folders ({shown}) directly: move them into {base / 'train'}/ (a val split is then held out)"


def _split(root: str, split: str) -> _Split:
    """List a split's class folders (once per process; a changed class folder, by mtime, is listed again)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a directory (expected {base}/train/<class>/*.jpg and {base}/val/<class>/*.jpg)")
    val_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    holdout = split == "val" and val_dir is None and (base / "train").is_dir()
    sub = base / "train" if (split == "train" or holdout) else val_dir
    if sub is None or not sub.is_dir():
        raise DataError(f"imagefolder: no {split}/ folder in {base} (expected ImageNet-style {base}/{split}/<class>/<image>)"
                        + _class_folders_hint(base))
    train_classes = _class_dirs(base / "train") if (base / "train").is_dir() else []
    own = _class_dirs(sub)
    if train_classes and (extra := sorted(set(own) - set(train_classes))):  # their images would be dropped silently
        raise DataError(f"imagefolder: the class folders of {sub} differ from those of {base / 'train'}: only in {sub.name}/: "
                        f"{extra}, only in train/: {sorted(set(train_classes) - set(own))}; give both splits the same "
                        "class folders (same names, same case; a class missing from val/ is only warned about)")
    classes = train_classes or own
    if not classes:
        raise DataError(f"imagefolder: {sub} has no class folders")
    key = (str(sub.resolve()), tuple(classes), tuple((sub / c).stat().st_mtime_ns if (sub / c).is_dir() else 0 for c in classes))
    if key not in _LISTINGS:  # said once per listing
        _LISTINGS[key] = _list_class_folders(sub, classes)
        counts = np.bincount(_LISTINGS[key][1], minlength=len(classes)).tolist()
        nz = [n for n in counts if n]
        if nz and max(nz) > 10 * min(nz):
            warnings.warn(f"imagefolder: {sub} is very unbalanced (image files per class: {class_counts(classes, counts)}); to "
                          "train on it: --class-weight balanced", stacklevel=4)
        if (sub.name == "train" or not train_classes) and (odd := odd_class_names(classes)):  # once, for train/'s names
            warnings.warn(f"imagefolder: class folders of {sub}: {odd}", stacklevel=4)
    files, labels = _LISTINGS[key]
    if sub.name == "train" and (empty := [c for c, k in zip(classes, np.bincount(labels, minlength=len(classes))) if k == 0]):
        raise DataError(f"imagefolder: class folder(s) with no readable image in {sub}: {empty}")
    idx = holdout_indices(labels, split, base, classes) if val_dir is None else np.arange(len(files))
    return _Split(base, sub, classes, key, files, labels, idx)


def _class_dirs(split_dir: Path) -> list[str]:
    """Class folder names of a split, hidden folders (``.ipynb_checkpoints``, ``.DS_Store``-like) left out."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_preprocess(color: bool, side: int) -> Preprocess:
    """The default preprocessing for a folder's images: color when any image has color (a grayscale
    picture in a color set is read as color, never the other way round), 224 px when the median
    image's shorter side is above 64 (one thumbnail does not shrink a folder of photos)."""
    return default_preprocess(3 if color else 1, side if side <= 64 else 224)


def _named(classes: list[str], which) -> list[str]:
    """Classes ``which`` (indices) as a user finds them: the display name, and the folder when it differs (n01440764)."""
    shown = display_classes(classes)
    return [shown[k] if shown[k] == classes[k] else f"{shown[k]} ({classes[k]}/)" for k in list(which)[:10]]


def holdout_indices(labels: np.ndarray, split: str, base: Path, classes: list[str], why: str = "", fix: str = ", or a val/ folder") -> np.ndarray:
    """Indices of ``split`` for a set without a validation split (``why`` says so: a folder without ``val/``, by default):
    the seeded, class-stratified holdout, or the rest."""
    why = why or f"imagefolder: {base} has no val/ folder"
    n_val = int(round(HOLDOUT_FRACTION * len(labels)))
    if n_val < len(classes) or n_val >= len(labels):
        need = next(n for n in range(len(labels), 100 * len(classes) + 100) if len(classes) <= int(round(HOLDOUT_FRACTION * n)) < n)
        raise DataError(f"{why} and too few images ({len(labels)}) to hold out {HOLDOUT_FRACTION:.0%} for validation with one image "
                        f"of each of its {len(classes)} classes: {need} or more are needed{fix}")
    val_idx = stratified_subset(labels, n_val, HOLDOUT_SEED)
    counts = np.bincount(labels, minlength=len(classes))
    if (counts == 1).any() and (counts[labels[val_idx]] == 1).any():  # a 1-image class's image held out: it is trained on instead
        ok = np.flatnonzero(counts[labels] > 1)  # (only then: every other folder keeps the holdout it had)
        val_idx = ok[stratified_subset(labels[ok], n_val, HOLDOUT_SEED)]
        if split == "train":
            warnings.warn(f"{why}: class(es) {_named(classes, np.flatnonzero(counts == 1))} hold one image, kept for training (none "
                          f"held out to validate them); add images of them{fix}", stacklevel=3)
    if split == "val":
        return val_idx
    rest = np.setdiff1d(np.arange(len(labels)), val_idx)
    gone = _named(classes, np.flatnonzero(np.bincount(labels[rest], minlength=len(classes)) == 0))
    if gone:  # the holdout took a class's only image(s): the model would never see that class
        raise DataError(f"{why}, and holding out {HOLDOUT_FRACTION:.0%} for validation "
                        f"leaves no training image of class(es) {gone}; add images of them{fix}")
    return rest


def _decode(sub: Path, classes: list[str], files: list[Path], labels: np.ndarray, split: str,
            limited: bool) -> tuple[object, np.ndarray, list[str], list[str], tuple[bool, int], np.ndarray]:
    """Decode the chosen files of ``sub/<class>/`` -> (uint8 array or paths, labels, skipped, paths,
    (any image in color, the median image's shorter side), each kept image's shorter side)."""
    keep, kept_paths, skipped = [], [], []
    kinds: collections.Counter[str] = collections.Counter()  # why files were skipped: unreadable, truncated, corrupt
    in_memory, color, sides, buf = True, False, [], None
    # one array filled in place, not a list stacked at the end: that had held every image twice (3.2 GB for 1.4 GB of pixels)
    for p, y in zip(progress(files, desc=f"decode {sub}", unit="img", enabled=len(files) > 2000), labels.tolist()):
        img, why = _try_read(p)
        if img is None:
            skipped.append(str(p))
            kinds[why] += 1
            continue
        if in_memory and buf is None:
            buf = np.empty((len(files), *img.shape), img.dtype) if len(files) * img.nbytes <= 2e9 else None  # (N, H, W[, C])
        if in_memory and (buf is None or buf.shape[1:] != img.shape or buf.dtype != img.dtype):  # too large, or mixed sizes:
            in_memory, buf = False, None  # paths, decoded again on access
        if in_memory:
            buf[len(keep)] = img
        keep.append(y)
        kept_paths.append(str(p))
        color = color or (img.ndim == 3 and img.shape[2] >= 3)
        sides.append(min(img.shape[:2]))
    _check_classes(sub, classes, labels, keep, skipped, split, limited, kinds)
    images: object = buf[: len(keep)] if in_memory and keep else kept_paths  # (N, H, W[, C]) uint8, or paths
    labels_kept = np.array(keep, dtype=np.int64)
    for a in (images, labels_kept):  # shared by every ImageSet the cache serves: read-only
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return images, labels_kept, skipped, kept_paths, (color, int(np.median(sides)) if sides else 0), np.array(sides, dtype=np.int64)


def _list_class_folders(sub: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The image files directly in ``sub/<class>/`` and their class indices (nested folders: a warning)."""
    files, labels = [], []
    nested: list[str] = []
    other: collections.Counter[str] = collections.Counter()  # files of other kinds (HEIC photos, notes), by suffix
    for ci, cname in enumerate(classes):
        cdir = sub / cname
        # hidden entries are no one's images, as predict reads folders: .DS_Store, macOS's ._photo.jpg AppleDouble files
        # (beside every photo copied to exFAT or FAT storage), .ipynb_checkpoints
        entries = sorted(p for p in cdir.iterdir() if not p.name.startswith(".")) if cdir.is_dir() else []
        nested += [str(p) for p in entries if p.is_dir()]
        for p in entries:
            if p.suffix.lower() in IMAGE_EXTS and (p.is_file() or p.is_symlink()):  # a broken link: counted as skipped
                files.append(p)
                labels.append(ci)
            elif p.is_file():
                other[p.suffix.lower() or "(no suffix)"] += 1
    if nested:
        warnings.warn(f"imagefolder: ignoring {len(nested)} folder(s) nested inside class folders of {sub}, e.g. {nested[:3]} "
                      "(images must lie directly in <split>/<class>/)", stacklevel=4)
    if other:
        warnings.warn(f"imagefolder: ignoring {sum(other.values())} file(s) in class folders of {sub} that are not images it reads "
                      f"({', '.join(f'{k}: {n}' for k, n in other.most_common())}; it reads {' '.join(sorted(IMAGE_EXTS))}): convert "
                      "them (HEIC, e.g. with pillow-heif) to use them", stacklevel=4)
    return files, np.array(labels, dtype=np.int64)


def _check_classes(sub: Path, classes: list[str], chosen: np.ndarray, keep: list[int], skipped: list[str], split: str,
                   limited: bool, kinds: collections.Counter[str]) -> None:
    """Refuse a training split with a class none of whose chosen files can be read, or (the whole folder) an empty
    class; warn about skipped files, and about the same in other splits. A subset of the listing (``limited``: a
    limit, or a holdout's side) need not hold every class."""
    n_kept = np.bincount(np.asarray(keep, dtype=np.int64), minlength=len(classes))
    n_chosen = np.bincount(chosen, minlength=len(classes))
    unreadable = [c for c, n, k in zip(classes, n_kept, n_chosen) if n == 0 and k > 0]
    empty = unreadable + ([] if limited else [c for c, k in zip(classes, n_chosen) if k == 0])
    what = (f"none of the chosen images of class(es) {unreadable} in {sub} can be read" if limited else
            f"class folder(s) with no readable image in {sub}: {empty}")
    if split == "train" and empty:
        raise DataError(f"imagefolder: {what}")
    if empty:
        warnings.warn(f"imagefolder: {what}" if limited else f"imagefolder: {sub} has no images for class(es) {empty}", stacklevel=4)
    if skipped:
        why = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        warnings.warn(f"imagefolder: skipped {len(skipped)} image(s) in {sub} ({why}; left out), e.g. {skipped[:3]}", stacklevel=4)


def _try_read(p: Path) -> tuple[Optional[np.ndarray], str]:
    """(decoded uint8 pixels, "") or, for a file that cannot be read or fully decoded, (None, why): unreadable,
    truncated (a JPEG cut short) or corrupt (a JPEG whose coded data libjpeg finds damaged)."""
    try:
        return _images.read_image(p, strict=True), ""
    except _images.DecoderMissing as e:  # the check cannot run here: every JPEG would be "unreadable"
        raise DataError(str(e)) from None
    except _images.ImageError as e:
        return None, e.kind
