"""Fashion-MNIST (spec ``fashion-mnist``): found on disk or downloaded, checksummed, read from IDX files."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.downloads import cache_candidates, cache_dir, download, not_found, offline
from dvt_edge.imageset import DataError, ImageSet, default_preprocess

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_URL", "FASHION_MNIST_FILES", "DEBIAN_FASHION_MNIST",
           "fashion_mnist_dirs", "load_fashion_mnist"]

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

#: decoded arrays per (folder, "train"/"t10k"), read once per process
_FMNIST_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs = []
    if os.environ.get("DVT_DATA"):
        root = Path(os.environ["DVT_DATA"]).expanduser()
        dirs += [root / "fashion-mnist", root]
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs + cache_candidates("fashion-mnist")


def load_fashion_mnist(split: str, download: bool = True) -> ImageSet:
    """The ``train`` (60,000 images) or ``val`` (the official 10,000 test images) split."""
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


def _fmnist_file(d: Path, name: str) -> Optional[Path]:
    for cand in (d / name, d / name[:-3]):
        if cand.is_file():
            return cand
    return None


def _find_fashion_mnist(download_ok: bool) -> Path:
    looked = fashion_mnist_dirs()
    for d in looked:
        if all(_fmnist_file(d, f) for f in FASHION_MNIST_FILES):
            return d
    if download_ok and not offline():
        try:
            return _download_fashion_mnist(cache_dir() / "fashion-mnist")
        except OSError as e:
            reason = f"download from {FASHION_MNIST_URL} failed ({e})"
    else:
        reason = "downloads switched off by DVT_OFFLINE" if offline() else "not downloaded by this command"
    raise not_found("Fashion-MNIST", looked, reason,
                    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                    "or put the four *-ubyte.gz files from " + FASHION_MNIST_URL + " into $DVT_DATA/fashion-mnist.")


def _download_fashion_mnist(dest: Path) -> Path:
    for name, (md5, _) in FASHION_MNIST_FILES.items():
        target = dest / name
        if not target.is_file():
            download(FASHION_MNIST_URL + name, target, md5)
    return dest
