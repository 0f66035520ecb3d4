"""The in-memory form of every data set: ``ImageSet``, its errors, subsets and default preprocessing.

Loaders (``dvt_edge.fashion_mnist``, ``dvt_edge.cifar10``, ``dvt_edge.imagefolder``,
``dvt_edge.npzdata``) return an ``ImageSet``; ``dvt_edge.data.load_dataset`` picks the loader.
"""

from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dvt_runtime import images as _images
from dvt_runtime.checks import class_key, numbered
from dvt_runtime.console import progress as progress_bar
from dvt_runtime.images import IMREAD_FLAGS, jpeg_end, to_uint8  # noqa: F401  (re-exported)
from dvt_runtime.preprocess import Preprocess
from dvt_runtime.stats import stratified_indices

__all__ = ["DataError", "ImageSet", "SplitNotHeld", "stratified_subset", "as_imagenet_labels", "as_model_labels", "default_preprocess", "decode_image", "jpeg_end", "label_mismatch", "read_image", "to_uint8"]


class DataError(ValueError):
    """A dataset could not be found or read; the message says what to do."""


class SplitNotHeld(DataError):
    """A file of one split (an exported .npz) was asked for another."""


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified random subset of ``n`` samples, in random order
    (:func:`dvt_runtime.stats.stratified_indices`, the one implementation; the device's calibration splits with it too)."""
    try:
        return stratified_indices(labels, n, seed)
    except ValueError as e:
        raise DataError(str(e)) from None


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
    split_size: int = 0  # images in the whole split when this set is a subset of it (0: it is the whole split)

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
    def whole(self) -> int:
        """Images in the whole split this set was drawn from (its own length when it is the whole split)."""
        return self.split_size or len(self)

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The samples at ``idx`` (same classes and preprocessing)."""
        idx = np.asarray(idx, dtype=np.int64)
        images = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[int(i)] for i in idx]
        files = [self.files[int(i)] for i in idx] if self.files else []
        return ImageSet(self.name, self.split, images, self.labels[idx], self.classes, self.preprocess, self.preprocessed, self.skipped, files,
                        self.split_size or len(self))

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
        # a file path: checked strictly once, when its folder was decoded; not again on every access (every epoch)
        return read_image(im, strict=False) if isinstance(im, (str, Path)) else np.asarray(im)

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
        it = progress_bar(idx, desc=f"preprocess {self.name}/{self.split}", unit="img", enabled=progress)
        for j, i in enumerate(it):
            out[j] = self.input(int(i))
        return out, self.labels[idx]


def label_mismatch(ds: ImageSet, num_classes: int, classes: Optional[list[str]]) -> Optional[str]:
    """Why a data set's labels are not a model's (None: they are): other class names (indices "0".."N-1" on
    either side name nothing), or another number of classes."""
    if classes and not numbered(classes) and not numbered(ds.classes) and list(ds.classes) != list(classes):
        # (spelled alike one for one, as_model_labels reads them as the model's: this is a set it could not)
        if unknown := [c for c in ds.classes if not class_key(c) or class_key(c) not in {class_key(k) for k in classes}]:
            return f"its classes {unknown[:5]}{'...' if len(unknown) > 5 else ''} are none of the checkpoint's {list(classes)[:5]}..."
        return (f"its class folders {list(ds.classes)[:5]}... are spelled like the checkpoint's {list(classes)[:5]}... but not one "
                "for one (two folders spelled alike, or one spelled like two classes): rename the folders to the checkpoint's class names")
    if ds.num_classes != num_classes:
        return f"it has {ds.num_classes} classes, the model {num_classes}"
    return None


def as_model_labels(ds: ImageSet, num_classes: int, classes: Optional[list[str]]) -> Optional[ImageSet]:
    """A set holding a model's named classes in another order (folders sort by name), or some of them (a test folder
    without the rare class; some of ImageNet's synset folders for an ImageNet model): the same images labelled with the
    model's indices and names, the classes it lacks said on stderr. None when that is not the case (the model's order
    already, other names, or unnamed classes)."""
    if (imagenet := as_imagenet_labels(ds, num_classes, classes)) is not None:
        return imagenet
    if not classes or len(classes) != num_classes or numbered(classes) or numbered(ds.classes) or list(ds.classes) == list(classes):
        return None
    index = {c: i for i, c in enumerate(classes)}
    keys = collections.Counter(class_key(c) for c in classes)
    loose = {k: i for i, c in enumerate(classes) if keys[k := class_key(c)] == 1 and k}  # spelled alike by one class only
    as_ = {c: index[c] if c in index else loose.get(class_key(c)) for c in ds.classes}  # a folder cannot be named T-shirt/top
    if len(set(ds.classes)) != len(ds.classes) or None in as_.values() or len(set(as_.values())) != len(as_):
        return None
    if renamed := [f"{c!r} as {classes[i]!r}" for c, i in as_.items() if c != classes[i]]:
        print(f"note: {ds.name} [{ds.split}]: folders read as the model's classes spelled otherwise: {', '.join(renamed[:5])}"
              f"{' ...' if len(renamed) > 5 else ''}", file=sys.stderr)
    if lacks := [c for i, c in enumerate(classes) if i not in set(as_.values())]:
        print(f"note: {ds.name} [{ds.split}] holds {len(ds.classes)} of the model's {len(classes)} classes (none of "
              f"{', '.join(map(repr, lacks[:5]))}{' ...' if len(lacks) > 5 else ''}): its images are scored as the model's classes",
              file=sys.stderr)
    to_model = np.array([as_[c] for c in ds.classes], dtype=np.int64)
    return ImageSet(ds.name, ds.split, ds.images, to_model[ds.labels], list(classes), ds.preprocess, ds.preprocessed, ds.skipped,
                    ds.files, ds.split_size)


def as_imagenet_labels(ds: ImageSet, num_classes: int, classes: Optional[list[str]]) -> Optional[ImageSet]:
    """A folder of some of ImageNet-1k's synset folders (Imagenette, a few val classes) for a 1000-class ImageNet
    model (its classes ImageNet's, or unnamed): the same images labelled with ImageNet's indices and names. None
    when that is not the case (a full ImageNet folder already reads as ImageNet, see :func:`display_classes`)."""
    if num_classes != 1000 or len(ds.classes) >= 1000:
        return None
    synsets, names = imagenet1k()
    if classes and list(classes) != list(names):
        return None
    index = {s: i for i, s in enumerate(synsets)}
    if not all(c in index for c in ds.classes):
        return None
    to_imagenet = np.array([index[c] for c in ds.classes], dtype=np.int64)
    return ImageSet(ds.name, ds.split, ds.images, to_imagenet[ds.labels], list(names), ds.preprocess, ds.preprocessed, ds.skipped,
                    ds.files, ds.split_size)


def default_preprocess(in_chans: int, img_size: int) -> Preprocess:
    """The preprocessing a fresh model of this input shape is trained with."""
    if in_chans == 1:
        # Fashion-MNIST statistics
        return Preprocess(size=img_size, resize=img_size, channels="gray", mean=(0.2860,), std=(0.3530,), interpolation="area")
    # ImageNet (T2T-ViT / DeiT evaluation: resize to size/0.875, center crop, Pillow's bicubic)
    return Preprocess(
        size=img_size, resize=int(round(img_size / 0.875)), channels="rgb",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="pil-bicubic",
    )


def decode_image(data: np.ndarray, what: str) -> np.ndarray:
    """:func:`dvt_runtime.images.decode_image` (the one decoder, training and device alike), strict (a corrupt
    JPEG is refused, not trained on), its errors DataErrors."""
    try:
        return _images.decode_image(data, what, strict=True)
    except _images.ImageError as e:
        raise DataError(str(e)) from None


def read_image(path, strict: bool = True) -> np.ndarray:
    """:func:`dvt_runtime.images.read_image`, strict (a corrupt JPEG is refused) unless told, its errors DataErrors."""
    try:
        return _images.read_image(path, strict=strict)
    except _images.ImageError as e:
        raise DataError(str(e)) from None


IMAGENET1K_CLASSES = Path(__file__).parent / "assets" / "imagenet1k_classes.tsv"


@functools.lru_cache(maxsize=1)
def imagenet1k() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1k's 1000 WordNet synset IDs in class-index order (sorted, as its ``train/`` folders
    are) and a short name for each: the first WordNet lemma, the two cranes and two maillots told
    apart (from timm 1.0.31's ``imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``)."""
    rows = [line.split("\t") for line in IMAGENET1K_CLASSES.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1000 and all(len(r) == 2 for r in rows), IMAGENET1K_CLASSES
    synsets, names = zip(*rows)
    return tuple(synsets), tuple(names)


def odd_class_names(classes: list[str]) -> str:
    """What is unusual about class folder names, or "": a name with spaces around it (a class of its own, named as
    written: ``ship `` is not ``ship``), and names alike (:func:`dvt_runtime.checks.class_key`: two classes)."""
    said = []
    if padded := [c for c in classes if c != c.strip()]:
        said.append(f"{padded} begin or end with a space: each is a class of its own, named as written")
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(class_key(c) or c, []).append(c)  # a name without letters or digits is alike to no other
    if alike := [g for g in groups.values() if len(g) > 1]:
        said.append(f"{alike} differ only in case, spaces or punctuation: each folder is a class of its own")
    return "; ".join(said) + ("; rename or merge the folders if that is not meant" if said else "")


def class_counts(names: Sequence[str], counts: Sequence[int], show: int = 50) -> str:
    """Images per class, by name: every class up to ``show`` classes; beyond, the fewest, the most and the median (a
    1,000-class folder's every count had filled 18 KB of one warning, and unnamed counts hid which class was rare)."""
    from dvt_runtime.console import shown

    counts = [int(c) for c in counts]
    if len(names) <= show:
        return ", ".join(f"{shown(c)}: {n}" for c, n in zip(names, counts))
    order = np.argsort(counts, kind="stable")
    named = lambda idx: ", ".join(f"{shown(names[i])}: {counts[i]}" for i in idx)
    return f"fewest {named(order[:5])}; most {named(order[::-1][:3])}; median {np.median(counts):g}"


def display_classes(folders: list[str]) -> list[str]:
    """Class names for class folders: ImageNet-1k's synset folders (n01440764, ...) become its class
    names (tench, ...), as the published models' bundles name them; any other folders name themselves."""
    if len(folders) != 1000:  # not ImageNet-1k: the class list is not even read
        return list(folders)
    synsets, names = imagenet1k()
    return list(names) if tuple(folders) == synsets else list(folders)


def default_classes(num_classes: int, imagenet_layout: bool) -> list[str]:
    """Class names for a checkpoint that carries none: ImageNet-1k's for a 1000-class model of an
    ImageNet layout (the published checkpoints), else the output indices."""
    if imagenet_layout and num_classes == 1000:
        return list(imagenet1k()[1])
    return [str(i) for i in range(num_classes)]
