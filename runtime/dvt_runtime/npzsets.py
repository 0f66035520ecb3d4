"""Image sets in .npz files, as the device-side commands read them (numpy only).

``calibrate --data`` reads labelled images (:func:`load_npz`), ``profile --data`` unlabelled ones
(:func:`load_images`). ``images`` are either uint8 pixels, (N, H, W[, C]) BGR as OpenCV reads them,
preprocessed here by the bundle's own rules, or float32 (N, C, H, W) already preprocessed
(``python -m dvt_edge.data export`` writes those, with the preprocessing it used).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from dvt_runtime.calibration import CalibrationError
from dvt_runtime.checks import InputError, check_finite, numbered, same_classes
from dvt_runtime.io import check_labels, read_npz
from dvt_runtime.preprocess import Preprocess

__all__ = ["BLANK_SHARE", "UNIFORM_STD", "all_gray", "blank_share", "check_not_blank", "is_blank", "foreign_pixels", "check_npz_preprocess", "load_npz", "load_images", "bgr_pixels"]


def check_npz_preprocess(z: dict, preprocess: Preprocess, path: Path, error: Callable[[str], Exception]) -> None:
    """Images preprocessed otherwise than the bundle's manifest says (another mean/std, resize or size) are refused:
    the accuracies measured on them are not the bundle's (only files that record their preprocessing are checked)."""
    if "preprocess" not in z:
        return
    try:
        stored = Preprocess.from_dict(json.loads(str(z["preprocess"])))
    except ValueError as e:
        raise error(f"{path}: its 'preprocess' entry is unreadable ({e})") from None
    if stored != preprocess:
        want = preprocess.to_dict()
        diff = {k: (v, want[k]) for k, v in stored.to_dict().items() if v != want[k]}
        raise error(f"{path} was preprocessed otherwise than this bundle expects ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in diff.items())}): "
                    "write it with the checkpoint's own preprocessing: python -m dvt_edge.data export --checkpoint CKPT --data ... --out val.npz")


def load_npz(path: str, preprocess: Optional[Preprocess] = None, classes: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """A labelled validation set -> float32 images (N, C, H, W), labels (N,). ``images``: preprocessed float32
    (``python -m dvt_edge.data export``), or, with ``preprocess`` (the bundle's), uint8 pixels (N, H, W[, C], BGR as
    OpenCV reads them, or RGB with ``channel_order="rgb"``) preprocessed here. With ``preprocess``, a file that records another preprocessing, images of
    another shape and floats outside its value range (raw 0-255 pixels) are refused; with ``classes`` (the bundle's), a
    file that names other classes (another data set's labels) and labels outside them are refused."""
    p = Path(str(path).removeprefix("npz:"))  # the host's spec for the same file (one DATA= for both sides of a Makefile)
    hint = ("calibration measures accuracy on labelled images: 'images' uint8 (N, H, W[, C], BGR) and 'labels' (N,) class "
            "indices, e.g. np.savez('val.npz', images=..., labels=...), or on the host: python -m dvt_edge.data export --checkpoint CKPT --split val --out val.npz")
    z = read_npz(p, ("images", "labels"), CalibrationError, hint)
    if preprocess is not None and z["images"].dtype != np.uint8:  # raw pixels are preprocessed here: a stored recipe is moot
        check_npz_preprocess(z, preprocess, p, CalibrationError)
    theirs = [str(c) for c in z["classes"].reshape(-1)] if "classes" in z else None
    ours = None if classes is None else [str(c) for c in classes]
    if theirs is not None and ours is not None and not numbered(theirs) and not numbered(ours) and not same_classes(theirs, ours):
        raise CalibrationError(f"{p} is labelled with classes {theirs[:5]}{'...' if len(theirs) > 5 else ''}, this bundle answers "
                               f"{ours[:5]}{'...' if len(ours) > 5 else ''}: accuracy on it means nothing; export the bundle's "
                               "own data set: python -m dvt_edge.data export --checkpoint CKPT --data SPEC --split val --out val.npz")
    x, y = z["images"], check_labels(z["labels"], str(p), CalibrationError)
    if "split" in z and str(z["split"]) == "train":  # python -m dvt_edge.data export --split train: thresholds chosen on them run eager
        src = f" ({z['source']})" if "source" in z else ""
        warnings.warn(f"{p} holds a 'train' split{src}: accuracies and thresholds on images the model trained on are in-sample (too "
                      "eager on new images); calibrate on held-out ones: python -m dvt_edge.data export --checkpoint CKPT --split val", stacklevel=2)
    if len(x) != len(y):
        raise CalibrationError(f"{p}: {len(x)} images but {len(y)} labels")
    if classes is not None and len(out := np.flatnonzero((y < 0) | (y >= len(classes)))):
        raise CalibrationError(f"{p}: {len(out)} label(s) outside 0..{len(classes) - 1} (this bundle's {len(classes)} classes), "
                               f"e.g. label {int(y[out[0]])} of image {int(out[0])}: labels are class indices in the bundle's order")
    if x.dtype == np.uint8 and x.ndim in (3, 4):  # raw pixels: the bundle's own preprocessing
        if preprocess is None:
            raise CalibrationError(f"{p}: uint8 pixels need the bundle's preprocessing: load_npz(path, bundle.manifest.preprocess)")
        try:
            out = preprocess.apply_batch(bgr_pixels(z, x, p, CalibrationError))
        except ValueError as e:  # InputError: a shape that is no image
            raise CalibrationError(f"{p}: {e}") from None
        check_not_blank(x, str(p), CalibrationError)
        _say_foreign_pixels(x, preprocess, p)  # images, now known: whose images?
        return out, y
    want = "" if preprocess is None else f" of shape (N, {', '.join(map(str, preprocess.input_shape))})"
    if x.dtype != np.float32 or x.ndim != 4 or (preprocess is not None and x.shape[1:] != preprocess.input_shape):
        raise CalibrationError(f"{p}: images must be preprocessed float32 (N, C, H, W){want} or uint8 pixels (N, H, W[, C]); got "
                               f"{x.dtype} {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        raise CalibrationError(f"{p}: {bad.size} image(s) hold NaN or infinite values (first: image {int(bad[0])}): "
                               "re-export the file, or drop those images")
    if preprocess is not None:
        check_values(x, preprocess, p)
        check_not_blank(x, str(p), CalibrationError, preprocess)
    return x, y


def check_values(x: np.ndarray, preprocess: Preprocess, p: Union[Path, str]) -> None:
    """Floats the bundle's preprocessing cannot produce (raw 0-255 pixels) are refused, and so is a set without one
    negative value (0-1 pixels never normalized): thresholds, budgets and int8 ranges would be chosen on them."""
    try:
        check_finite(x, preprocess.value_range, str(p), "store uint8 pixels (N, H, W, C) instead: the bundle preprocesses them")
    except InputError as e:
        raise CalibrationError(str(e)) from None
    lo = preprocess.value_range[0]
    if len(x) >= 16 and lo <= -0.5 and float(x.min()) >= 0:  # normalized, a pixel darker than the mean is negative
        said = (f"{p}: not one negative value in {len(x)} images, though this bundle's preprocessing maps pixels darker than its "
                f"mean below 0 (down to {lo:.3g}): were they normalized with its mean {list(preprocess.mean)} and std "
                f"{list(preprocess.std)}? Store uint8 pixels and the bundle preprocesses them.")
        raise CalibrationError(f"{said} Refused: thresholds, budgets and int8 ranges would be chosen on them")


def _say_foreign_pixels(x: np.ndarray, preprocess: Preprocess, p: Path) -> None:
    """A warning for each way the pixels look like another model's data set (:func:`foreign_pixels`). They are
    still used: the bundle preprocesses them."""
    for said in foreign_pixels(x, preprocess):
        warnings.warn(f"{p}: {said}", stacklevel=3)


def foreign_pixels(images: Union[np.ndarray, Sequence[np.ndarray]], preprocess: Preprocess) -> list[str]:
    """How uint8 images ((H, W[, C]) each) look like another data set's: the median image far smaller than the model
    resizes to (at least 2x upscaled: 32 px images for a 224 px model, 8 px ones for a 32 px model), or every one
    grayscale for a colour model. Accuracy, thresholds and int8 ranges on them are not the model's on its own images."""
    sides = sorted((min(np.asarray(im).shape[:2]), np.asarray(im).shape[:2]) for im in images)
    said = []
    if sides and 0 < 2 * sides[len(sides) // 2][0] <= preprocess.resize:
        side, (h, w) = sides[len(sides) // 2]
        said.append(f"the images are {h}x{w}{' (the median)' if len({s for s, _ in sides}) > 1 else ''}, this model resizes them to "
                    f"{preprocess.resize} px ({preprocess.resize / side:.1f}x upscaled): another data set's images? use images like "
                    "the ones the device will see")
    if preprocess.channels != "gray" and (shown := [im for im in images if not is_blank(im)]) and all_gray(shown):
        said.append(GRAY_FOR_COLOUR)  # a blank image is neither gray nor colour (a black one had been called grayscale)
    return said


GRAY_FOR_COLOUR = ("grayscale images for a colour model (one channel, repeated to three, or three equal ones): its accuracy on them "
                   "is not its accuracy on colour images; use images like the ones the device will see (if the model was trained on "
                   "such images, they are)")
GRAY_TOLERANCE = 3  # a gray picture stored in colour (JPEG): its channels differ by rounding only


UNIFORM_STD = 2.0  # gray levels: an image whose every channel varies less is blank (JPEG noise on a wall is about 1)
BLANK_SHARE = 0.5  # a set this share of whose images are blank is refused for calibration: ranges and thresholds set on nothing


def is_blank(im: np.ndarray) -> bool:
    """Whether a uint8 image ((H, W[, C])) is blank: each channel's pixels vary by less than :data:`UNIFORM_STD` gray
    levels (a lens cap, a wall, a black frame; a coloured wall too), judged on at most about 256 x 256 of them."""
    im = np.asarray(im)
    few = im[:: max(1, im.shape[0] // 256), :: max(1, im.shape[1] // 256)]  # (<= ~256, <= ~256[, C]): enough to judge
    spread = few.reshape(-1, few.shape[2]).std(axis=0).max() if few.ndim == 3 else few.std()
    return bool(float(spread) < UNIFORM_STD)


def blank_share(images: Union[np.ndarray, Sequence[np.ndarray]], preprocess: Optional[Preprocess] = None) -> float:
    """The share of blank images (:func:`is_blank`) among uint8 ones ((H, W[, C]) each) or, with ``preprocess``, among
    preprocessed float32 ones ((N, C, H, W), their spread taken back to gray levels through its std); 0.0 for none."""
    if len(images) == 0:
        return 0.0
    if preprocess is None:
        return sum(is_blank(im) for im in images) / len(images)
    x = np.asarray(images, dtype=np.float32)
    levels = x.reshape(len(x), x.shape[1], -1).std(axis=2) * (255 * np.asarray(preprocess.std, np.float32))[None, :]  # (N, C)
    return float(np.mean(levels.max(axis=1) < UNIFORM_STD))


def _some(x: Union[np.ndarray, Sequence[np.ndarray]], n: int = 256) -> np.ndarray:
    """At most ``n`` of ``x``'s images as one array, a seeded random sample (every k-th of a set whose classes come in
    turn had judged one class alone: a blank class of a third read as a blank set)."""
    if len(x) <= n:
        return np.asarray(x)
    return np.asarray([x[i] for i in np.sort(np.random.default_rng(0).choice(len(x), n, replace=False))])


def check_not_blank(images: Union[np.ndarray, Sequence[np.ndarray]], where: str, error: Callable[[str], Exception],
                    preprocess: Optional[Preprocess] = None) -> None:
    """Refuse a set of images most of which are blank (:func:`blank_share` of at most 256 of them; ``preprocess``: they
    are preprocessed float32 ones): int8 ranges, thresholds and accuracy set on them say nothing of real images (a set of
    black images had exported an int8 bundle 12 to 22 points down, its checks passed on the same black images)."""
    few = _some(images)
    share = blank_share(few, preprocess)
    if share >= BLANK_SHARE:
        raise error(f"{where}: {round(share * len(few))} of {len(few)} images looked at are blank (every channel varies by less than "
                    f"{UNIFORM_STD:g} gray levels: black or single-colour frames): int8 ranges, thresholds and accuracy set or "
                    "measured on them say nothing of real images; use images like the ones the device will see")


def all_gray(images: Union[np.ndarray, Sequence[np.ndarray]]) -> bool:
    """Whether every image (uint8, (H, W[, C]) each) is grayscale: one channel, or three that differ by at most
    ``GRAY_TOLERANCE`` (a gray picture saved in colour). An alpha channel is not looked at."""
    for im in images:
        im = np.asarray(im)
        if im.ndim == 3 and im.shape[2] >= 3:
            c = im[..., :3].astype(np.int16)  # (H, W, 3)
            if int(np.abs(c[..., 0] - c[..., 1]).max()) > GRAY_TOLERANCE or int(np.abs(c[..., 1] - c[..., 2]).max()) > GRAY_TOLERANCE:
                return False
    return len(images) > 0


def bgr_pixels(z, images: np.ndarray, where, error: Callable[[str], Exception]) -> np.ndarray:
    """uint8 pixels in OpenCV's BGR order, which preprocessing reads: a file of RGB pixels (PIL, torchvision) says
    so with an entry ``channel_order`` = ``"rgb"`` (an alpha channel stays last)."""
    order = str(z["channel_order"]).lower() if "channel_order" in z else "bgr"
    if order not in ("bgr", "rgb"):
        raise error(f"{where}: channel_order must be 'bgr' or 'rgb', got {order!r}")
    if order == "rgb" and images.ndim == 4 and images.shape[3] >= 3:
        images = np.ascontiguousarray(np.concatenate([images[..., 2::-1], images[..., 3:]], axis=-1))
    return images


def load_images(path: str, bundle) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
    """``profile --data``: preprocessed float32 images (N, C, H, W) and, for uint8 files, the raw images (to time the
    preprocessing on); a ValueError naming the file and the fix otherwise."""
    p = Path(str(path).removeprefix("npz:"))  # the host's spec for the same file
    hint = "'images' must be float32 (N, C, H, W) preprocessed or uint8 (N, H, W[, C])"
    z = read_npz(p, ("images",), lambda m: ValueError(f"--data {m}"), hint)
    if z["images"].dtype == np.float32:  # raw uint8 images are preprocessed here, by the bundle's own rules
        check_npz_preprocess(z, bundle.manifest.preprocess, p, lambda m: ValueError(f"--data {m}"))
    images = z["images"]
    if len(images) == 0:
        raise ValueError(f"--data {p}: 'images' is empty")
    if images.dtype == np.uint8:
        raw = list(bgr_pixels(z, images, p, lambda m: ValueError(f"--data {m}")))
        return np.concatenate([bundle.preprocess(im) for im in raw]), raw
    want = bundle.input_shape
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(f"--data {p}: 'images' must be float32 (N, {', '.join(map(str, want))}) or uint8 (N, H, W[, C]); got "
                         f"{images.dtype} {images.shape}")
    return images, None
