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

from dvt_runtime.io import atomic_write
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
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "val")
_SPLIT_ALIASES = {"train": "train", "val": "val", "test": "val", "validation": "val"}


class DataError(ValueError):
    """A dataset could not be found or read; the message says what to do."""


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

        ``n``: how many samples (all when None); with ``seed`` a seeded random subset,
        otherwise the first ``n``.
        """
        idx = np.arange(len(self))
        if seed is not None:
            idx = np.random.default_rng(seed).permutation(idx)
        if n is not None:
            if n <= 0:
                raise DataError(f"n must be positive, got {n}")
            idx = idx[:n]
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
    dirs.append(_cache_dir() / "fashion-mnist")
    return dirs


def _cache_dir() -> Path:
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
    raise DataError(
        "Fashion-MNIST not found. Looked in:\n"
        + "".join(f"  - {d}\n" for d in looked)
        + f"({reason}).\nInstall it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
        "or put the four *-ubyte.gz files from " + FASHION_MNIST_URL + " into $DVT_DATA/fashion-mnist."
    )


def _download_fashion_mnist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, (md5, _) in FASHION_MNIST_FILES.items():
        target = dest / name
        if target.is_file():
            continue
        print(f"downloading {FASHION_MNIST_URL}{name} -> {target}", file=sys.stderr)
        with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=60) as r:
            data = r.read()
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise OSError(f"checksum mismatch for {name}: md5 {got}, expected {md5}")
        atomic_write(target, data)
    return dest


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
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a directory (expected {base}/train/<class>/*.jpg and {base}/val/<class>/*.jpg)")
    sub = base / split
    if not sub.is_dir() and split == "val" and (base / "test").is_dir():
        sub = base / "test"
    if not sub.is_dir():
        raise DataError(f"imagefolder: no {split}/ folder in {base} (expected ImageNet-style {base}/{split}/<class>/<image>)")
    train_classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir()) if (base / "train").is_dir() else []
    classes = train_classes or sorted(p.name for p in sub.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {sub} has no class folders")
    paths, labels, counts, skipped = [], [], {}, []
    for ci, cname in enumerate(classes):
        cdir = sub / cname
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_EXTS) if cdir.is_dir() else []
        ok = 0
        for p in files:
            if _image_readable(p):
                paths.append(str(p))
                labels.append(ci)
                ok += 1
            else:
                skipped.append(str(p))
        counts[cname] = ok
    empty = [c for c, n in counts.items() if n == 0]
    if split == "train" and empty:
        raise DataError(f"imagefolder: class folder(s) with no readable image in {sub}: {empty}")
    if empty:
        warnings.warn(f"imagefolder: {sub} has no images for class(es) {empty}", stacklevel=2)
    if skipped:
        warnings.warn(
            f"imagefolder: skipped {len(skipped)} unreadable image(s) in {sub}, e.g. {skipped[:3]}", stacklevel=2
        )
    nz = [n for n in counts.values() if n]
    if nz and max(nz) > 10 * min(nz):
        warnings.warn(f"imagefolder: {sub} is very unbalanced (images per class: {counts})", stacklevel=2)
    if preprocess is None:
        first = _read_image(paths[0])
        chans = 1 if first.ndim == 2 or first.shape[2] == 1 else 3
        preprocess = default_preprocess(chans, 224 if chans == 3 else 28)
    return ImageSet(f"imagefolder:{base}", split, paths, np.array(labels), classes, preprocess, skipped=skipped)


def _image_readable(p: Path) -> bool:
    import cv2

    try:
        return cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None
    except cv2.error:
        return False


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


def _load_cifar10(root: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    base = Path(root).expanduser()
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DataError(f"cifar10: {missing} not found in {base} (expected the python version, cifar-10-batches-py)")
    xs, ys = [], []
    for n in names:
        with open(base / n, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)[..., ::-1])  # RGB -> BGR
        ys.append(np.asarray(d[b"labels"], np.int64))
    pre = preprocess or Preprocess(size=32, resize=32, channels="rgb", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    return ImageSet(f"cifar10:{base}", split, np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), list(CIFAR10_CLASSES), pre)


def _load_npz(path: str, split: str, preprocess: Optional[Preprocess]) -> ImageSet:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"npz: {p} not found")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"npz: cannot read {p}: {e}") from e
    for k in ("images", "labels"):
        if k not in z.files:
            raise DataError(f"npz: {p} has no '{k}' array (found {z.files}); expected 'images', 'labels' and optional 'classes'")
    images, labels = z["images"], z["labels"]
    classes = [str(c) for c in z["classes"]] if "classes" in z.files else [str(i) for i in range(int(labels.max()) + 1)]
    stored = Preprocess.from_dict(_json_loads(str(z["preprocess"]))) if "preprocess" in z.files else None
    if images.dtype == np.float32 and images.ndim == 4:
        pre = stored or preprocess or default_preprocess(images.shape[1], images.shape[2])
        return ImageSet(f"npz:{p}", split, images, labels, classes, pre, preprocessed=True)
    if images.dtype != np.uint8:
        raise DataError(f"npz: 'images' must be uint8 pixels (N, H, W[, C]) or preprocessed float32 (N, C, H, W); got {images.dtype} {images.shape}")
    chans = 1 if images.ndim == 3 else images.shape[3]
    pre = preprocess or stored or default_preprocess(1 if chans == 1 else 3, images.shape[1])
    return ImageSet(f"npz:{p}", split, images, labels, classes, pre)


def _json_loads(s: str):
    import json

    return json.loads(s)


DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST (Debian's dataset-fashion-mnist, $DVT_DATA, or a verified download)",
    "imagefolder:PATH": "ImageNet-style PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (JPEG/PNG via OpenCV)",
    "cifar10:PATH": "CIFAR-10 python batches (cifar-10-batches-py)",
    "npz:PATH": "arrays 'images' (uint8 NHW[C] or preprocessed float32 NCHW), 'labels', optional 'classes'",
}


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
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
