"""The real images an export calibrates and verifies on: one labelled set split into calibration and verification
images (never the same ones while there are enough), checked against the checkpoint's preprocessing."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dvt_edge.data import DataError, load_dataset
from dvt_edge.export.common import ExportError
from dvt_edge.export.verify import IN_SAMPLE
from dvt_edge.imageset import SplitNotHeld, as_model_labels, label_mismatch, stratified_subset
from dvt_runtime.npzsets import check_not_blank, check_values, foreign_pixels
from dvt_runtime.preprocess import Preprocess

TRAIN_ONLY = ("it holds only a 'train' split: the export verifies and chooses the default thresholds on training images, "
              "in-sample (and too eager) where this model trained on them; give held-out images: python -m dvt_edge.data export "
              "--checkpoint CKPT --split val --out val.npz")
CALIB_SEED, VERIFY_SEED = 0, 1  # the class-stratified subsets' seeds, named in the data note (the manifest's parity.data)


@dataclass
class _Data:
    spec: Optional[str]
    calib: list[np.ndarray]  # (N, C, H, W) images for calibration
    verify_x: Optional[np.ndarray]  # (M, C, H, W) held-out real images for verification
    verify_y: Optional[np.ndarray]
    note: str = ""


def _same_images(a, b) -> bool:
    """Whether two splits are one set of images (an npz without a split serves both): same files, or the same
    labels and the same first and last pixels."""
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels):
        return False
    if a.files or b.files:
        return a.files == b.files
    return all(np.array_equal(np.asarray(a.images[i]), np.asarray(b.images[i])) for i in (0, len(a) - 1))


def _load_data(spec: Optional[str], pre: Preprocess, calib_n: int, verify_n: int, need_calib: bool, num_classes: int,
               classes: Optional[list[str]] = None, own: bool = False) -> _Data:
    """Calibration and verification images from ``spec``; ``own``: they are the checkpoint's own data set (its training
    data or holdout), never judged to look like another data set's."""
    if spec is None:
        if need_calib:
            raise ExportError("int8 needs calibration images and none are known for this checkpoint: "
                              "pass --calib-data SPEC (e.g. imagefolder:PATH or npz:PATH)")
        return _Data(None, [], None, None, "no real images (fixed inputs only); give images (export --calib-data, bench --data) to verify on real images")
    # image folders' splits are other files: only the images used are decoded (a limited load picks what arrays() would)
    lazy = spec.partition(":")[0] in ("imagefolder", "cifar10-jpeg")
    try:
        first = "train"
        try:
            train = _images(spec, "train", pre, num_classes, classes, calib_n if lazy else None, CALIB_SEED)
        except SplitNotHeld:  # a file of one split (an exported val .npz): calibration and verification share its images
            train, first = _images(spec, "val", pre, num_classes, classes), "val"
        if (mismatch := label_mismatch(train, num_classes, classes)) and need_calib:  # another data set's images set the int8 ranges
            print(f"warning: calibration images {spec} are not this model's classes ({mismatch}): static int8 calibrated on "
                  "another data set's images may lose accuracy; pass --calib-data with images like the model's own", file=sys.stderr)
        calib = (train.arrays() if lazy else train.arrays(calib_n, seed=CALIB_SEED))[0] if need_calib else []  # fp32, weight-only: none
        foreign = [] if own else _foreign(train, pre)
        try:
            val = _images(spec, "val", pre, num_classes, classes, verify_n if lazy else None, VERIFY_SEED)
        except SplitNotHeld:  # a file of training images only (data export --split train): verified and thresholds chosen on them
            val, foreign = None, [*foreign, TRAIN_ONLY]
        except DataError:
            val = None
        if val is not None and (lazy or not _same_images(val, train)):
            vx, vy = val.arrays() if lazy else val.arrays(min(verify_n, len(val)), seed=VERIFY_SEED)
            where = f"{spec}/val"
        else:  # one set of images (no val split, or an npz without one): verify on images calibration did not see
            train = _images(spec, first, pre, num_classes, classes) if lazy else train  # all of it
            held = stratified_subset(train.labels, calib_n, CALIB_SEED) if need_calib else []  # nothing calibrates: every image verifies
            rest = np.setdiff1d(np.arange(len(train)), held)
            pool = train.subset(rest) if len(rest) else train
            vx, vy = pool.arrays(min(verify_n, len(pool)), seed=VERIFY_SEED)
            where = (f"{spec}/{first}" if not need_calib else f"{spec}/{first}, none of them calibration images (no separate val split)"
                     if len(rest) else f"{spec}/{first}, {IN_SAMPLE} (too few images to hold any apart)")
    except DataError as e:
        raise ExportError(f"calibration data {spec!r}: {e}") from None
    for what, imgs in (("calibration", calib), ("verification", vx)):  # ranges, thresholds and checks on black frames: refused
        check_not_blank(imgs[:256], f"{what} images from {spec}", ExportError, pre)  # (<= 256, C, H, W) preprocessed
    seeds = f"class-stratified, seeds {CALIB_SEED} and {VERIFY_SEED}" if need_calib else f"class-stratified, seed {VERIFY_SEED}"
    note = ((f"{len(calib)} calibration images from {spec}/{first}, " if need_calib else "") + f"{len(vx)} verification images from {where}"
            + f" ({seeds})")
    if mismatch:
        vy, note = None, note + f"; their labels are not used ({mismatch}): no accuracy, no thresholds chosen on them"
    for said in foreign:  # said now, and in the manifest's parity.data
        print(f"warning: calibration data {spec}: {said}", file=sys.stderr)
        note += f"; warning: {said}"
    return _Data(spec, list(calib), vx, vy, note)


def _images(spec: str, split: str, pre: Preprocess, num_classes: int, classes: Optional[list[str]], limit: Optional[int] = None,
            seed: int = 0):
    """``spec``'s ``split`` (a seeded stratified ``limit`` of it) as the checkpoint's model sees it: preprocessed as it
    expects, and some of ImageNet's synset folders labelled with ImageNet's indices for an ImageNet model."""
    ds = load_dataset(spec, split, preprocess=pre, limit=limit, seed=seed)
    _check_preprocessed(ds, spec, pre)
    return as_model_labels(ds, num_classes, classes) or ds


def _foreign(ds, pre: Preprocess, n: int = 64) -> list[str]:
    """How a set's images look like another data set's (:func:`foreign_pixels`: far smaller than the model's input, or
    grayscale for a colour model), judged on ``n`` of them spread over the set. Its accuracy, thresholds and int8 ranges
    on them are not those of the images a device sees: the CIFAR reference scores 63.70 / 73.26 / 76.24% top-1 on its
    held-out images made gray, against 76.70 / 82.88 / 85.16%."""
    if ds.preprocessed or not len(ds):
        return []
    return foreign_pixels([ds.raw(int(i)) for i in np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int))], pre)


def _check_preprocessed(ds, spec: str, pre: Preprocess) -> None:
    """Images stored preprocessed must have been preprocessed as the checkpoint's model expects."""
    if ds.preprocessed and ds.preprocess != pre:
        raise ExportError(f"calibration data {spec!r} holds images already preprocessed as {ds.preprocess.to_dict()}, but the "
                          f"checkpoint's model expects {pre.to_dict()}: write the set again with the checkpoint's preprocessing, "
                          "or pass the images as pixels (uint8 npz, imagefolder:PATH)")
    if ds.preprocessed:  # floats the preprocessing cannot give (0-255) refused, and 0-1 floats never normalized (a bundle
        try:  # had been written "passed", its default thresholds chosen at 27% top-1)
            check_values(np.asarray(ds.images), pre, f"calibration data {spec!r}")
        except ValueError as e:
            raise ExportError(str(e)) from None
