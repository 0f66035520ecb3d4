"""What a bundle takes as input: images and arrays turned into checked (N, C, H, W) float32, and the checks of a direct
``run_exit`` call. A mixin of :class:`dvt_runtime.bundle.Bundle` (it reads ``manifest``, ``input_shape``, ``num_exits`` and
``_value_range``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np

from dvt_runtime.checks import InputError, check_finite
from dvt_runtime.images import can_check_jpegs, decode_image, encoded_image, from_pil, is_pil_image
from dvt_runtime.manifest import Manifest

__all__ = ["BundleInputs", "Encoded", "ImageInput", "PILImage"]


class PILImage(Protocol):
    """A Pillow image, as the type checker sees one (Pillow is not a dependency)."""

    @property
    def mode(self) -> str: ...

    def getexif(self) -> Any: ...


Encoded = Union[bytes, bytearray]  # an image file's bytes (an upload)
ImageInput = Union[np.ndarray, PILImage, Encoded]  # one image as predict, preprocess and run_exits take it

CARRY = ("features_out", "relations_out")  # what a later exit takes from the one before (its features and relations)


def _short(x: object, most: int = 120) -> str:
    """``repr(x)`` cut to ``most`` characters (an error message, not a dump of what was passed)."""
    r = repr(x)
    return r if len(r) <= most else f"{r[:most]}... ({len(x) if hasattr(x, '__len__') else '?'} long)"


def _pixels(x: Any) -> np.ndarray:
    """An input as an array: a Pillow image converted as its file would be decoded (EXIF orientation, BGR), an image
    file's bytes decoded, anything else ``np.asarray`` (checked by the caller)."""
    if is_pil_image(x):
        return from_pil(x)
    if encoded_image(x):
        data = np.frombuffer(bytes(x), np.uint8)  # a JPEG whose coded data libjpeg finds corrupt: refused, as predict refuses it
        return decode_image(data, f"the encoded image ({data.size} bytes)", strict=can_check_jpegs())
    return np.asarray(x)


class BundleInputs:
    """Input handling for :class:`~dvt_runtime.bundle.Bundle`."""

    manifest: Manifest
    input_shape: tuple[int, ...]
    _value_range: Any

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """BGR/gray uint8 image -> (1, C, H, W) float32 per the manifest; a uint8 batch (N, H, W, C)
        -> (N, C, H, W); float32 arrays are checked and passed."""
        a = _pixels(image)
        if a.dtype == np.uint8:
            if a.ndim == 4:
                return self.manifest.preprocess.apply_batch(a)
            return self.manifest.preprocess.apply(a)[None]
        return self._check_input(a)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        want, given = self.input_shape, x.shape
        if x.dtype.kind in "uib" and x.dtype != np.uint8:  # a 16-bit or bool image is neither pixels read here nor preprocessed
            raise InputError(f"got a {x.dtype} array {given}: images are read as uint8 (8 bits per channel) and preprocessed inside, "
                             "arrays of any other kind must be preprocessed float32; convert a 16-bit image to 8 bits first, e.g. "
                             "(img >> 8).astype(np.uint8), or read the file with cv2.imread (8-bit by default)")
        if x.ndim == len(want):
            x = x[None]
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            hint = (" (channels last? a float array must be the preprocessing's output, (N, C, H, W) and normalized: pass uint8 pixels, "
                    "or bundle.preprocess of them)") if x.ndim == 4 and x.shape[-1] == want[0] and x.shape[1:3] == want[1:] else ""
            raise InputError(f"input must be preprocessed float32 of shape (N, {', '.join(map(str, want))}) or a uint8 image; got {given} "
                             f"{x.dtype}{hint}")
        if x.dtype != np.float32:
            raise InputError(f"input must be float32 (got {x.dtype}): convert preprocessed arrays with x.astype(np.float32); "
                             "pass uint8 images as they are (they are preprocessed inside)")
        check_finite(x, self._value_range, warn_unnormalized=True)
        return np.ascontiguousarray(x)

    def _as_array(self, x) -> np.ndarray:
        """One array from an array (never silently converted)."""
        if x is None or (isinstance(x, (str, bytes, Path)) and not encoded_image(x)):  # a failed cv2.imread is None; a path is not pixels
            what = ("None (cv2.imread returns None for a file it cannot read)" if x is None else f"a path {_short(x)}" if not
                    isinstance(x, bytes) else f"{len(x)} bytes without a NUL byte, so a path, not an image file's bytes")  # not echoed
            raise InputError(f"got {what}: pass the decoded image (a uint8 HxW or HxWxC array, e.g. cv2.imread(path)), "
                             "a Pillow image, an image file's bytes, or preprocessed float32 of shape (N, "
                             + ", ".join(map(str, self.input_shape)) + ")")
        a = _pixels(x)
        if a.dtype == object:
            raise InputError("predict takes one image or one array of images; a list of arrays of different sizes or dtypes "
                             "is ambiguous: preprocess each image (bundle.preprocess) and stack them")
        return a

    def _batch(self, x) -> tuple[np.ndarray, bool]:
        """What ``predict`` takes -> ((N, C, H, W) float32, whether it was one image)."""
        if isinstance(x, (list, tuple)):  # one entry per image
            return self._from_list(x), False
        a = self._as_array(x)
        single = a.ndim == len(self.input_shape) or (a.dtype == np.uint8 and a.ndim < 4)
        return (self.preprocess(a) if a.dtype == np.uint8 else self._check_input(a)), single

    def _from_list(self, x: Sequence) -> np.ndarray:
        """A list of images -> (N, C, H, W) float32: uint8 images (any sizes, each preprocessed) or
        preprocessed float32 arrays ((C, H, W) or (n, C, H, W), as ``bundle.preprocess`` returns)."""
        if not len(x):
            raise InputError("got an empty list of images (0 images); pass at least one image")
        arrs: list = []
        first: Any = None
        for v in x:  # each image preprocessed as it is decoded: a list of uploads is never held decoded all at once
            a = _pixels(v)
            if arrs and a.dtype != first:
                raise InputError(f"a list of images must share one dtype, got {sorted({str(first), str(a.dtype)})}: pass all uint8 "
                                 "images, or all float32 arrays already preprocessed (bundle.preprocess)")
            first = a.dtype
            arrs.append(self.manifest.preprocess.apply(a) if a.dtype == np.uint8 else a)  # (C, H, W) float32
        if first == np.uint8:
            return np.stack(arrs)  # (N, C, H, W)
        d = len(self.input_shape)
        bad = [a.shape for a in arrs if a.ndim not in (d, d + 1) or tuple(a.shape[-d:]) != self.input_shape]
        if bad:
            raise InputError(f"preprocessed images must be float32 of shape {self.input_shape} or (n, {', '.join(map(str, self.input_shape))}); "
                             f"got {bad[:3]}: pass uint8 images or the output of bundle.preprocess")
        return self._check_input(np.concatenate([a[None] if a.ndim == d else a for a in arrs]))

    def _check_exit_call(self, e: Any, image: Any, carry: Optional[dict]) -> None:
        """A direct ``run_exit`` call: an exit that exists, preprocessed float32 (n, C, H, W), and for a later exit the
        previous exit's outputs for the same n images (an IndexError, a KeyError or the backend's own error otherwise)."""
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= e < self.num_exits:
            raise ValueError(f"exit index must be 0..{self.num_exits - 1} (0-based: exit 1 is index 0), got {e!r}")
        shape = getattr(image, "shape", None)
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or shape is None or tuple(shape[1:]) != self.input_shape:
            raise InputError(f"run_exit takes preprocessed float32 of shape (n, {', '.join(map(str, self.input_shape))}), got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {shape}: pass images through bundle.preprocess, "
                             "or call predict / run_exits, which take uint8 images")
        most = self.batch_limit()  # type: ignore[attr-defined]
        if not 1 <= len(image) <= most:
            raise InputError(f"run_exit got {len(image)} images; this bundle's artifacts take 1 to {most} a call: run_stage or "
                             "run_exits split a larger batch")
        if e == 0:
            return
        if not isinstance(carry, dict) or any(k not in carry for k in CARRY):
            got = sorted(carry) if isinstance(carry, dict) else type(carry).__name__
            raise ValueError(f"exit {e + 1} needs exit {e}'s outputs ({', '.join(CARRY)}; run_exit({e - 1}, ...) returns them), "
                             f"got {got}")
        if any(len(carry[k]) != len(image) for k in CARRY):
            raise ValueError(f"exit {e + 1} got {len(image)} images but exit {e}'s outputs for {len(carry['features_out'])}: "
                             "pass the outputs of the same images")
