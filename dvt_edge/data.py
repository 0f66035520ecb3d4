"""Datasets by spec string, preprocessing shared with the device runtime, and data export.

Specs: ``fashion-mnist`` (default), ``imagefolder:PATH``, ``cifar10:PATH``, ``npz:PATH``.

    python -m dvt_edge.data export --data fashion-mnist --split val --n 2000 --out val.npz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import pickle
import sys
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_runtime.io import atomic_write, check_labels, read_npz
from dvt_runtime.preprocess import Preprocess

__all__ = [
    "ImageSet",
    "DataError",
    "load_dataset",
    "default_preprocess",
    "fashion_mnist_dirs",
    "export_npz",
    "DATASETS",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# file -> (md5 of the official .gz, sha256 of the decompressed IDX payload)
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: ``cifar10-ref``, shipped with the package and packed byte for byte from the JPEG copy:
#: val = the 5,000 CIFAR-10 training images held out from the reference model's training;
#: train = 1,000 of its training images (int8 calibration, threshold selection).
CIFAR10_REF = {"val": Path(__file__).resolve().parent / "assets" / "cifar10_holdout.npz",
               "train": Path(__file__).resolve().parent / "assets" / "cifar10_calib.npz"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "val")
_SPLIT_ALIASES = {"train": "train", "val": "val", "test": "val", "validation": "val"}


class DataError(ValueError):
    """A dataset could not be found or read; the message says what to do."""


#: An image folder without ``val/`` holds out this fraction of ``train/`` (seeded,
#: class-stratified) as its validation split; the rest is the training split.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified random subset of ``n`` samples, in random order.

    Each class gets ``n`` times its share (largest remainders get the leftovers), so a
    subset of class-sorted data (image folders) still covers every class; the order is
    shuffled so that any prefix or half of the subset is a random sample too.
    """
    labels = np.asarray(labels)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise DataError(f"a subset size must be a positive whole number; got {n!r}")
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(labels))
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: n - int(take.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(picked))


# ----------------------------------------------------------------------------- ImageSet


@dataclass
class ImageSet:
    """A labelled image set plus the preprocessing that turns its images into inputs.

    ``images`` is either a uint8 array (N, H, W[, C]) in memory, a list of file paths
    (decoded with OpenCV on access), or a float32 array (N, C, H, W) that is already
    preprocessed (``preprocessed=True``, e.g. an exported ``.npz``).
    """

    name: str
    split: str
    images: object
    labels: np.ndarray
    classes: list[str]
    preprocess: Preprocess
    preprocessed: bool = False
    skipped: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # source file of each sample (image folders)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) == 0:
            raise DataError(f"{self.name} ({self.split}) holds no images")
        bad = (self.labels < 0) | (self.labels >= len(self.classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{self.name}: label {int(self.labels[i])} of sample {i} is out of range for "
                f"{len(self.classes)} classes (valid: 0..{len(self.classes) - 1})"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The samples at ``idx`` (same classes and preprocessing)."""
        idx = np.asarray(idx, dtype=np.int64)
        images = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[int(i)] for i in idx]
        files = [self.files[int(i)] for i in idx] if self.files else []
        return ImageSet(self.name, self.split, images, self.labels[idx], self.classes, self.preprocess, self.preprocessed, self.skipped, files)

    def limit(self, n: Optional[int], seed: int = 0) -> ImageSet:
        """A seeded, class-stratified random subset of ``n`` samples (all when None)."""
        return self if n is None else self.subset(stratified_subset(self.labels, n, seed))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def raw(self, i: int) -> np.ndarray:
        """The i-th image as uint8 pixels (BGR or gray), before preprocessing."""
        if self.preprocessed:
            raise DataError(f"{self.name} holds preprocessed arrays only; raw pixels are not available")
        im = self.images[i]
        return _read_image(im) if isinstance(im, (str, Path)) else np.asarray(im)

    def input(self, i: int) -> np.ndarray:
        """The i-th network input, float32 (C, H, W)."""
        if self.preprocessed:
            return np.asarray(self.images[i], dtype=np.float32)
        return self.preprocess.apply(self.raw(i))

    def arrays(self, n: Optional[int] = None, seed: Optional[int] = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess (a subset of) the set into float32 (N, C, H, W) and int64 (N,) arrays.

        ``n``: how many samples, a seeded class-stratified random subset (all when None);
        ``seed``: the subset's seed (0 when None), or with ``n=None`` a shuffle of all.
        """
        if n is not None:
            idx = stratified_subset(self.labels, n, 0 if seed is None else seed)
        elif seed is not None:
            idx = np.random.default_rng(seed).permutation(len(self))
        else:
            idx = np.arange(len(self))
        if self.preprocessed:
            return np.ascontiguousarray(np.asarray(self.images)[idx], dtype=np.float32), self.labels[idx]
        out = np.empty((len(idx),) + self.preprocess.input_shape, np.float32)
        it = idx
        if progress:
            from tqdm import tqdm

            it = tqdm(idx, desc=f"preprocess {self.name}/{self.split}", unit="img", leave=False)
        for j, i in enumerate(it):
            out[j] = self.input(int(i))
        return out, self.labels[idx]


# ----------------------------------------------------------------------------- preprocessing


def default_preprocess(in_chans: int, img_size: int) -> Preprocess:
    """The preprocessing a fresh model of this input shape is trained with."""
    if in_chans == 1:
        # Fashion-MNIST statistics
        return Preprocess(size=img_size, resize=img_size, channels="gray", mean=(0.2860,), std=(0.3530,), interpolation="area")
    # ImageNet (T2T-ViT / DeiT evaluation: resize to size/0.875, center crop, bicubic)
    return Preprocess(
        size=img_size, resize=int(round(img_size / 0.875)), channels="rgb",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="cubic",
    )


# ----------------------------------------------------------------------------- readers


def _read_image(path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"cannot read image {path} (not an image OpenCV can decode, or unreadable)")
    if img.dtype != np.uint8:  # 16-bit PNGs
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    return img


def _read_idx(path: Path) -> tuple[np.ndarray, str]:
    """IDX file (optionally gzipped) -> (array, sha256 of the decompressed payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims), hashlib.sha256(data).hexdigest()


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs = []
    if os.environ.get("DVT_DATA"):
        root = Path(os.environ["DVT_DATA"]).expanduser()
        dirs += [root / "fashion-mnist", root]
    dirs.append(DEBIAN_FASHION_MNIST)
    dirs.append(cache_dir() / "fashion-mnist")
    return dirs


def cache_dir() -> Path:
    """dvt-edge's cache folder ($XDG_CACHE_HOME/dvt-edge or ~/.cache/dvt-edge)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dvt-edge"


def _fmnist_file(d: Path, name: str) -> Optional[Path]:
    for cand in (d / name, d / name[:-3]):
        if cand.is_file():
            return cand
    return None


def _find_fashion_mnist(download: bool) -> Path:
    looked = fashion_mnist_dirs()
    for d in looked:
        if all(_fmnist_file(d, f) for f in FASHION_MNIST_FILES):
            return d
    if download and os.environ.get("DVT_OFFLINE") != "1":
        try:
            return _download_fashion_mnist(looked[-1])
        except OSError as e:
            reason = f"download from {FASHION_MNIST_URL} failed ({e})"
    else:
        reason = "download disabled"
    raise _not_found("Fashion-MNIST", looked, reason,
                     "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                     "or put the four *-ubyte.gz files from " + FASHION_MNIST_URL + " into $DVT_DATA/fashion-mnist.")


def _download_fashion_mnist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, (md5, _) in FASHION_MNIST_FILES.items():
        target = dest / name
        if not target.is_file():
            download(FASHION_MNIST_URL + name, target, md5)
    return dest


def download(url: str, target: Path, md5: str) -> Path:
    """Fetch ``url`` to ``target`` (atomically), refusing content whose md5 is not ``md5``."""
    from tqdm import tqdm

    print(f"downloading {url} -> {target}", file=sys.stderr)
    h, chunks = hashlib.md5(), []
    with urllib.request.urlopen(url, timeout=60) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False, disable=total is None or total < 1 << 20) as bar:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                chunks.append(chunk)
                bar.update(len(chunk))
    got = h.hexdigest()
    if got != md5:
        raise OSError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, b"".join(chunks))
    return target


_FMNIST_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _load_fashion_mnist(split: str, download: bool = True) -> ImageSet:
    d = _find_fashion_mnist(download)
    prefix = "train" if split == "train" else "t10k"
    key = (str(d), prefix)
    if key not in _FMNIST_CACHE:
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            path = _fmnist_file(d, name)
            arr, digest = _read_idx(path)
            if digest != FASHION_MNIST_FILES[name][1]:
                raise DataError(f"{path} does not match the official Fashion-MNIST checksum (corrupted?); delete it and retry")
            arrays.append(arr)
        _FMNIST_CACHE[key] = (arrays[0], arrays[1].astype(np.int64))
    images, labels = _FMNIST_CACHE[key]
    return ImageSet("fashion-mnist", split, images, labels, list(FASHION_MNIST_CLASSES), default_preprocess(1, 28))


def _load_imagefolder(root: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
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
    train_classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir()) if (base / "train").is_dir() else []
    classes = train_classes or sorted(p.name for p in sub.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {sub} has no class folders")
    # decoded once per process; a changed class folder (mtime) is read again
    key = (str(sub.resolve()), tuple(classes), tuple((sub / c).stat().st_mtime_ns if (sub / c).is_dir() else 0 for c in classes))
    if key not in _FOLDER_CACHE:
        _FOLDER_CACHE[key] = _read_class_folders(sub, classes, "train" if holdout else split)
    images, labels, skipped, files = _FOLDER_CACHE[key]
    if preprocess is None:
        first = images[0] if isinstance(images, np.ndarray) else _read_image(images[0])
        chans = 1 if first.ndim == 2 or first.shape[2] == 1 else 3
        side = min(first.shape[:2])
        preprocess = default_preprocess(chans, side if side <= 64 else 224)
    ds = ImageSet(f"imagefolder:{base}", split, images, np.array(labels), classes, preprocess, skipped=skipped, files=files)
    if val_dir is None:  # hold out part of train/ as the validation split
        n_val = int(round(HOLDOUT_FRACTION * len(ds)))
        if n_val < len(classes) or n_val >= len(ds):
            raise DataError(f"imagefolder: {base} has no val/ folder and too few images ({len(ds)}) to hold out {HOLDOUT_FRACTION:.0%} for validation")
        val_idx = stratified_subset(ds.labels, n_val, HOLDOUT_SEED)
        if split == "val":
            ds = ds.subset(val_idx)
        else:
            ds = ds.subset(np.setdiff1d(np.arange(len(ds)), val_idx))
        ds.name = f"imagefolder:{base}"
    return ds


_FOLDER_CACHE: dict[tuple, tuple] = {}


def _read_class_folders(sub: Path, classes: list[str], split: str) -> tuple[object, list[int], list[str], list[str]]:
    """Decode every image of ``sub/<class>/`` once -> (uint8 array or paths, labels, skipped, paths)."""
    from tqdm import tqdm

    files, labels = [], []
    nested: list[str] = []
    for ci, cname in enumerate(classes):
        cdir = sub / cname
        entries = sorted(cdir.iterdir()) if cdir.is_dir() else []
        nested += [str(p) for p in entries if p.is_dir()]
        for p in entries:
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                files.append(p)
                labels.append(ci)
    if nested:
        warnings.warn(f"imagefolder: ignoring {len(nested)} folder(s) nested inside class folders of {sub}, e.g. {nested[:3]} "
                      "(images must lie directly in <split>/<class>/)", stacklevel=3)
    decoded, keep, kept_paths, skipped = [], [], [], []
    show = len(files) > 2000
    for p, y in zip(tqdm(files, desc=f"decode {sub}", unit="img", leave=False, disable=not show), labels):
        img = _try_read(p)
        if img is None:
            skipped.append(str(p))
        else:
            decoded.append(img)
            keep.append(y)
            kept_paths.append(str(p))
    counts = {c: 0 for c in classes}
    for y in keep:
        counts[classes[y]] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if split == "train" and empty:
        raise DataError(f"imagefolder: class folder(s) with no readable image in {sub}: {empty}")
    if empty:
        warnings.warn(f"imagefolder: {sub} has no images for class(es) {empty}", stacklevel=3)
    if skipped:
        warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable or truncated image(s) in {sub}, e.g. {skipped[:3]}", stacklevel=3)
    nz = [n for n in counts.values() if n]
    if nz and max(nz) > 10 * min(nz):
        warnings.warn(f"imagefolder: {sub} is very unbalanced (images per class: {counts})", stacklevel=3)
    shapes = {im.shape for im in decoded}
    if len(shapes) == 1 and decoded and len(decoded) * decoded[0].nbytes <= 2e9:
        images: object = np.stack(decoded)  # (N, H, W[, C]) uint8, in memory
    else:
        images = kept_paths  # mixed sizes: decoded again on access
    return images, keep, skipped, kept_paths


def _try_read(p: Path) -> Optional[np.ndarray]:
    """Decoded uint8 pixels, or None for a file OpenCV cannot fully decode (truncated JPEGs included)."""
    import cv2

    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    if p.suffix.lower() in (".jpg", ".jpeg") and not (data.size >= 4 and data[-2] == 0xFF and data[-1] == 0xD9):
        # a JPEG without its end-of-image marker is truncated: OpenCV would decode it as grey
        tail = data[-64:].tobytes().rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            return None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if img is None:
        return None
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    return img


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only plain containers and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TAR = "cifar-10-python.tar.gz"


def cifar10_dirs() -> list[Path]:
    """Where the official CIFAR-10 python version is looked for, in order."""
    dirs = []
    if os.environ.get("DVT_DATA"):
        root = Path(os.environ["DVT_DATA"]).expanduser()
        dirs += [root / "cifar10", root / "cifar-10", root]
    dirs.append(cache_dir() / "cifar10")
    return dirs


def _cifar_batches_dir(d: Path) -> Optional[Path]:
    for cand in (d / "cifar-10-batches-py", d):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return cand
    return None


def _extract_cifar10(tar_path: Path, dest: Path) -> Path:
    """Verify the official tarball's md5, then extract its batches (no path escapes)."""
    import tarfile

    h = hashlib.md5()
    with open(tar_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != CIFAR10_MD5:
        raise DataError(f"{tar_path} does not match the official CIFAR-10 md5 {CIFAR10_MD5} (corrupted or another file); delete it and retry")
    tmp = dest / f".extract-{os.getpid()}"
    with tarfile.open(tar_path, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith("cifar-10-batches-py/")]
        tf.extractall(tmp, members=members, filter="data")
    final = dest / "cifar-10-batches-py"
    if not final.exists():
        os.replace(tmp / "cifar-10-batches-py", final)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return final


def _find_cifar10(download_ok: bool) -> Path:
    looked = cifar10_dirs()
    for d in looked:
        found = _cifar_batches_dir(d)
        if found:
            return found
        if (d / CIFAR10_TAR).is_file():
            return _extract_cifar10(d / CIFAR10_TAR, d)
    if download_ok and os.environ.get("DVT_OFFLINE") != "1":
        dest = looked[-1]
        try:
            download(CIFAR10_URL, dest / CIFAR10_TAR, CIFAR10_MD5)
            return _extract_cifar10(dest / CIFAR10_TAR, dest)
        except OSError as e:
            reason = f"download from {CIFAR10_URL} failed ({e})"
    else:
        reason = "download disabled (offline)"
    raise _not_found("CIFAR-10", looked, reason,
                     f"Put the official {CIFAR10_TAR} (md5 {CIFAR10_MD5}, from {CIFAR10_URL}) or its extracted "
                     "cifar-10-batches-py/ into $DVT_DATA/cifar10, or use cifar10:PATH, or imagefolder:PATH for a JPEG copy.")


def _find_cifar10_jpeg() -> Path:
    """The CIFAR-10 training split as JPEG class folders (``train/<class>/*.jpg``)."""
    looked = []
    if os.environ.get("DVT_DATA"):
        looked.append(Path(os.environ["DVT_DATA"]).expanduser() / "cifar10-jpeg")
    looked.append(cache_dir() / "cifar10-jpeg")
    for d in looked:
        if (d / "train").is_dir():
            return d
    raise DataError(
        "the CIFAR-10 JPEG copy (train/<class>/*.jpg) was not found. Looked in:\n" + "".join(f"  - {d}\n" for d in looked)
        + f"Unpack cifar10-train-jpeg.tar.gz into one of them (mkdir -p {looked[-1]} && tar -xzf cifar10-train-jpeg.tar.gz -C {looked[-1]}), "
        "or use the official python version: --data cifar10."
    )


def _load_cifar10(root: str, split: str, preprocess: Optional[Preprocess], download_ok: bool = True) -> ImageSet:
    if root:
        base = Path(root).expanduser()
        if (base / "cifar-10-batches-py").is_dir():
            base = base / "cifar-10-batches-py"
        elif (base / CIFAR10_TAR).is_file() and _cifar_batches_dir(base) is None:
            base = _extract_cifar10(base / CIFAR10_TAR, base)
    else:
        base = _find_cifar10(download_ok)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DataError(f"cifar10: {missing} not found in {base} (expected the python version, cifar-10-batches-py)")
    xs, ys = [], []
    for n in names:
        with open(base / n, "rb") as f:
            try:
                d = _RestrictedUnpickler(f, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise DataError(f"cifar10: {base / n} is not a CIFAR-10 python batch ({e})") from e
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)[..., ::-1])  # RGB -> BGR
        ys.append(np.asarray(d[b"labels"], np.int64))
    pre = preprocess or cifar10_preprocess()
    return ImageSet(f"cifar10:{base}", split, np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), list(CIFAR10_CLASSES), pre)


def cifar10_preprocess(size: int = 32) -> Preprocess:
    """CIFAR-10 training statistics; area resize of the shorter side, center crop."""
    return Preprocess(size=size, resize=size, channels="rgb", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), interpolation="area")


def _not_found(name: str, looked: list[Path], reason: str, how: str) -> DataError:
    """A data set that is not on this machine: where we looked, why nothing was fetched, how to get it."""
    return DataError(f"{name} not found. Looked in:\n" + "".join(f"  - {d}\n" for d in looked) + f"({reason}).\n{how}")


def _load_npz(path: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    """Arrays ``images`` + ``labels`` (+ ``classes``, ``preprocess``), or a JPEG pack:
    ``jpeg`` (uint8, every file's bytes end to end) + ``offsets`` (N+1) + ``labels``.

    An optional ``split`` entry names the one split the file holds; asking for another is
    an error (so a held-out set can never serve as training data by accident).
    """
    p = Path(path).expanduser()
    hint = "write one with numpy.savez (arrays 'images', 'labels', optional 'classes') or python -m dvt_edge.data export"
    z = read_npz(p, (), lambda m: DataError(f"npz: {m}"), hint)
    files = list(z)
    if "split" in files and str(z["split"]) != split:
        raise DataError(f"npz: {p} holds only the {str(z['split'])!r} split, not {split!r}")
    jpeg = "jpeg" in files and "offsets" in files
    for k in ("labels",) if jpeg else ("images", "labels"):
        if k not in files:
            raise DataError(f"npz: {p} has no '{k}' array (found {files}); expected 'images', 'labels' and optional 'classes'")
    labels = check_labels(z["labels"], f"npz: {p}", DataError)
    if "classes" in files:
        classes = [str(c) for c in z["classes"]]
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).all() else None
        if counts is not None and (counts == 0).any():
            raise DataError(f"npz: {p} has no 'classes' array and labels skip class(es) {np.flatnonzero(counts == 0)[:10].tolist()} "
                            f"(labels run 0..{int(labels.max())}); add a 'classes' array naming every class")
    stored = Preprocess.from_dict(_json_loads(str(z["preprocess"]))) if "preprocess" in files else None
    if jpeg:
        images = _decode_jpeg_pack(z["jpeg"], z["offsets"], p)
    else:
        images = z["images"]
    if len(images) != len(labels):
        raise DataError(f"npz: {p} has {len(images)} images but {len(labels)} labels")
    if images.dtype == np.float32 and images.ndim == 4:
        pre = stored or preprocess or default_preprocess(images.shape[1], images.shape[2])
        return ImageSet(f"npz:{p}", split, images, labels, classes, pre, preprocessed=True)
    if images.dtype != np.uint8:
        raise DataError(f"npz: 'images' must be uint8 pixels (N, H, W[, C]) or preprocessed float32 (N, C, H, W); got {images.dtype} {images.shape}")
    chans = 1 if images.ndim == 3 else images.shape[3]
    pre = preprocess or stored or default_preprocess(1 if chans == 1 else 3, images.shape[1])
    return ImageSet(f"npz:{p}", split, images, labels, classes, pre)


def _decode_jpeg_pack(data: np.ndarray, offsets: np.ndarray, p: Path) -> np.ndarray:
    import cv2

    if data.dtype != np.uint8 or offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(data) or (np.diff(offsets) <= 0).any():
        raise DataError(f"npz: {p}: 'jpeg' must be uint8 bytes and 'offsets' N+1 increasing positions from 0 to len(jpeg)")
    out = []
    for i in range(len(offsets) - 1):
        img = cv2.imdecode(data[offsets[i] : offsets[i + 1]], cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f"npz: {p}: image {i} of the JPEG pack cannot be decoded")
        out.append(img)
    if len({im.shape for im in out}) != 1:
        raise DataError(f"npz: {p}: the JPEG pack's images differ in size")
    return np.stack(out)


def write_jpeg_pack(ds: ImageSet, out: Path, split: str = "val") -> Path:
    """Pack an image folder's files byte for byte (no re-encoding) into one ``.npz``.

    Decoding the pack gives exactly the pixels of the files (same decoder), so a
    held-out split can travel with the package.
    """
    import io
    import json

    if not ds.files:
        raise DataError(f"write_jpeg_pack needs an image-folder dataset; {ds.name} has no source files")
    paths = ds.files
    blobs = [np.fromfile(f, dtype=np.uint8) for f in paths]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, jpeg=np.concatenate(blobs), offsets=offsets, labels=ds.labels, classes=np.array(ds.classes),
             names=np.array([str(Path(f).relative_to(Path(f).parents[2])) for f in paths]), split=np.array(split),
             preprocess=np.array(json.dumps(ds.preprocess.to_dict())), source=np.array(f"{ds.name}/{ds.split}"))
    atomic_write(out, buf.getvalue())
    return Path(out)


def _json_loads(s: str):
    import json

    return json.loads(s)


DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST (Debian's dataset-fashion-mnist, $DVT_DATA, or a verified download)",
    "imagefolder:PATH": "ImageNet-style PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (JPEG/PNG via OpenCV)",
    "cifar10": "CIFAR-10, official python version ($DVT_DATA/cifar10, the cache, or a verified download of the official tarball)",
    "cifar10:PATH": "CIFAR-10 python batches (cifar-10-batches-py) or the official tarball in PATH",
    "cifar10-jpeg": "CIFAR-10's training split as JPEG class folders in $DVT_DATA/cifar10-jpeg or the cache; val = a seeded, class-stratified 10% held out",
    "cifar10-ref": "shipped: val = the 5,000 CIFAR-10 images held out from dvt_small_cifar's training, train = 1,000 of its training images",
    "npz:PATH": "arrays 'images' (uint8 NHW[C] or preprocessed float32 NCHW), 'labels', optional 'classes'",
}


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


def load_dataset(spec: str = "fashion-mnist", split: str = "train", preprocess: Optional[Preprocess] = None, download: bool = True) -> ImageSet:
    """Open a dataset by spec string; ``preprocess`` overrides the dataset's default (e.g. a model's)."""
    if split not in _SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; valid: {sorted(_SPLIT_ALIASES)}")
    split = _SPLIT_ALIASES[split]
    kind, _, arg = spec.partition(":")
    loaders: dict[str, Callable[..., ImageSet]] = {
        "imagefolder": _load_imagefolder, "cifar10": _load_cifar10, "npz": _load_npz,
    }
    if kind in ("fashion-mnist", "fashion_mnist", "fmnist"):
        ds = _load_fashion_mnist(split, download)
        if preprocess is not None:
            ds.preprocess = preprocess
        return ds
    if kind == "cifar10":
        return _load_cifar10(arg, split, preprocess, download)
    if kind == "cifar10-jpeg":
        ds = _load_imagefolder(str(_find_cifar10_jpeg()), split, preprocess)
        ds.name = "cifar10-jpeg"
        return ds
    if kind == "cifar10-ref":
        ds = _load_npz(str(CIFAR10_REF[split]), split, preprocess)
        ds.name = "cifar10-ref"
        return ds
    if kind in loaders:
        if not arg:
            raise DataError(f"dataset spec {spec!r} needs a path: {kind}:PATH")
        return loaders[kind](arg, split, preprocess)
    raise DataError(f"unknown dataset spec {spec!r}; valid: {list(DATASETS)}")


# ----------------------------------------------------------------------------- export


def export_npz(ds: ImageSet, out: Path, n: Optional[int] = None, seed: int = 0, progress: bool = True) -> Path:
    """Write a preprocessed subset (float32 NCHW) a device can read with numpy alone."""
    import io
    import json

    x, y = ds.arrays(n, seed=seed, progress=progress)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=x, labels=y, classes=np.array(ds.classes),
        preprocess=np.array(json.dumps(ds.preprocess.to_dict())), source=np.array(f"{ds.name}/{ds.split}"),
    )
    atomic_write(out, buf.getvalue())
    return Path(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dvt_edge.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a preprocessed .npz (calibration/validation set for devices)")
    ex.add_argument("--data", default="fashion-mnist", help=f"dataset spec: {', '.join(DATASETS)}")
    ex.add_argument("--split", default="val", help="train or val (test)")
    ex.add_argument("--n", type=int, default=None, help="number of samples (default: all)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    ex.add_argument("--checkpoint", default=None, help="use this checkpoint's preprocessing")
    ex.add_argument("--out", required=True)
    info = sub.add_parser("info", help="print what a dataset spec resolves to")
    info.add_argument("--data", default="fashion-mnist")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            for split in SPLITS:
                ds = load_dataset(args.data, split)
                counts = np.bincount(ds.labels, minlength=ds.num_classes)
                print(f"{ds.name} [{split}]: {len(ds)} images, {ds.num_classes} classes, per class {counts.tolist()}")
            print(f"preprocess: {ds.preprocess.to_dict()}")
            return 0
        pre = None
        if args.checkpoint:
            from dvt_edge.checkpoint import load_checkpoint

            _, info_ = load_checkpoint(args.checkpoint)
            pre = info_.preprocess
        ds = load_dataset(args.data, args.split, preprocess=pre)
        out = export_npz(ds, Path(args.out), args.n, args.seed)
        print(f"wrote {out} ({min(args.n or len(ds), len(ds))} samples of {ds.name}/{ds.split}, preprocessed {ds.preprocess.input_shape})")
        return 0
    except (DataError, ValueError) as e:  # CheckpointError (--checkpoint) is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
