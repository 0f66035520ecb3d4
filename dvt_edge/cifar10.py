"""CIFAR-10: the official python batches (spec ``cifar10[:PATH]``: found, or downloaded and
md5-verified, then unpickled safely), where the JPEG copy lies (``cifar10-jpeg``), and the
packs shipped with the package (``cifar10-ref``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_edge.downloads import cache_candidates, cache_dir, download, md5_file, not_found, offline
from dvt_edge.imageset import DataError, ImageSet
from dvt_runtime.console import quote_arg
from dvt_runtime.io import replace
from dvt_runtime.preprocess import Preprocess

__all__ = ["CIFAR10_CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_TAR", "CIFAR10_REF",
           "cifar10_dirs", "cifar10_preprocess", "load_cifar10", "find_cifar10_jpeg"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TAR = "cifar-10-python.tar.gz"
#: ``cifar10-ref``, shipped with the package and packed byte for byte from the JPEG copy:
#: val = the 5,000 CIFAR-10 training images held out from the reference model's training;
#: train = 1,000 of its training images (int8 calibration, threshold selection).
CIFAR10_REF = {"val": Path(__file__).resolve().parent / "assets" / "cifar10_holdout.npz",
               "train": Path(__file__).resolve().parent / "assets" / "cifar10_calib.npz"}


def check_reference_holdout(ds: ImageSet, root: Path, split: str) -> None:
    """``cifar10-jpeg`` must hold out exactly the images shipped as ``cifar10-ref`` val: none of them is ever
    trained on, and its val split is those images (all readable). The holdout is drawn by position in the file
    listing, so a changed folder (a missing or extra file, or an added val/ or test/ folder) would silently move it;
    ``ds`` may be a subset of the split (``limit``): the whole split's listing is checked."""
    from dvt_edge.imagefolder import split_files
    from dvt_runtime.io import read_npz

    held = {str(n) for n in read_npz(CIFAR10_REF["val"], ("names",), DataError, "reinstall dvt-edge")["names"]}
    names = {Path(f).relative_to(root).as_posix() for f in split_files(str(root), split)}  # listed under root: no resolve (linked files)
    if split == "train":
        bad = names & held
        what = f"{len(bad)} of the 5,000 images held out from the reference's training (cifar10-ref) would be trained on"
    else:
        bad = names ^ held
        what = f"its val split differs from the 5,000 held-out images of cifar10-ref in {len(bad)} files"
        if not bad and ds.skipped:  # listed where they should be, but not all of them decode
            bad = {Path(f).relative_to(root).as_posix() for f in ds.skipped}
            what = f"{len(bad)} of the 5,000 images held out from the reference's training (cifar10-ref) cannot be read"
    if bad:
        raise DataError(f"cifar10-jpeg at {root}: {what}, e.g. {sorted(bad)[:3]}. The folder differs from the official JPEG copy "
                        "(50,000 files in train/<class>/, nothing else): unpack it again from cifar10-train-jpeg.tar.gz, or "
                        "train on this folder as imagefolder:PATH (its own holdout, not comparable with cifar10-ref)")


def cifar10_preprocess(size: int = 32) -> Preprocess:
    """CIFAR-10 training statistics; area resize of the shorter side, center crop."""
    return Preprocess(size=size, resize=size, channels="rgb", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), interpolation="area")


def cifar10_dirs() -> list[Path]:
    """Where the official CIFAR-10 python version is looked for, in order."""
    dirs = []
    if os.environ.get("DVT_DATA"):
        root = Path(os.environ["DVT_DATA"]).expanduser()
        dirs += [root / "cifar10", root / "cifar-10", root]
    return dirs + cache_candidates("cifar10")


def load_cifar10(root: str, split: str, preprocess: Optional[Preprocess], download_ok: bool = True) -> ImageSet:
    """The python batches in ``root`` (found or fetched when empty): 50,000 train / 10,000 val images."""
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


def find_cifar10_jpeg() -> Path:
    """The CIFAR-10 training split as JPEG class folders (``train/<class>/*.jpg``)."""
    looked = []
    if os.environ.get("DVT_DATA"):
        looked.append(Path(os.environ["DVT_DATA"]).expanduser() / "cifar10-jpeg")
    looked += cache_candidates("cifar10-jpeg")
    for d in looked:
        if (d / "train").is_dir():
            return d
    where = quote_arg(str(looked[-1])) if looked else '"${DVT_DATA:?set DVT_DATA first}/cifar10-jpeg"'
    places = ("Looked in:\n" + "".join(f"  - {d}\n" for d in looked)) if looked else (
        "Looked nowhere: DVT_DATA is not set and there is no cache folder (no home folder; set DVT_DATA).\n")
    raise DataError(
        f"the CIFAR-10 JPEG copy (train/<class>/*.jpg) was not found. {places}"
        + f"Unpack cifar10-train-jpeg.tar.gz into one of them (mkdir -p {where} && tar -xzf cifar10-train-jpeg.tar.gz -C {where}), "
        "or use the official python version: --data cifar10."
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only plain containers and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")


def _cifar_batches_dir(d: Path) -> Optional[Path]:
    for cand in (d / "cifar-10-batches-py", d):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return cand
    return None


def _extract_cifar10(tar_path: Path, dest: Path) -> Path:
    """Verify the official tarball's md5, then extract its batches (no path escapes)."""
    import shutil
    import tarfile

    if md5_file(tar_path) != CIFAR10_MD5:
        raise DataError(f"{tar_path} does not match the official CIFAR-10 md5 {CIFAR10_MD5} (corrupted or another file); delete it and retry")
    tmp = dest / f".extract-{os.getpid()}"
    final = dest / "cifar-10-batches-py"
    try:  # a failed extraction (disk full, interrupted) leaves no half-extracted folder behind
        with tarfile.open(tar_path, "r:gz") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith("cifar-10-batches-py/")]
            tf.extractall(tmp, members=members, filter="data")
        if not final.exists():
            replace(tmp / "cifar-10-batches-py", final)
    finally:
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
    if download_ok and not offline():
        dest = cache_dir() / "cifar10"
        try:
            download(CIFAR10_URL, dest / CIFAR10_TAR, CIFAR10_MD5)
            return _extract_cifar10(dest / CIFAR10_TAR, dest)
        except OSError as e:
            reason = f"download from {CIFAR10_URL} failed ({e})"
    else:
        reason = "downloads switched off by DVT_OFFLINE" if offline() else "not downloaded by this command"
    raise not_found("CIFAR-10", looked, reason,
                    f"Put the official {CIFAR10_TAR} (md5 {CIFAR10_MD5}, from {CIFAR10_URL}) or its extracted "
                    "cifar-10-batches-py/ into $DVT_DATA/cifar10, or use cifar10:PATH, or imagefolder:PATH for a JPEG copy.")
