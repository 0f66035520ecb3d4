"""Image preprocessing, defined once as data (it travels in checkpoints and manifests).

Training-time evaluation (``dvt_edge.data``) and device-time inference (``dvt_runtime``)
both call :meth:`Preprocess.apply`, so they see the same pixels. OpenCV does the resize
when it is installed; without it a numpy fallback does the same resize (area, nearest, linear or
cubic), which may differ from OpenCV by a rounding step (one gray level) for non-integer scale factors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from dvt_runtime.checks import InputError
from dvt_runtime.schema import checked_fields

__all__ = ["Preprocess", "INTERPOLATIONS"]

#: "pil-bicubic": Pillow's BICUBIC, bit for bit (the published DVT models' evaluation resized with it: it smooths when it
#: shrinks, OpenCV's INTER_CUBIC does not), in numpy whether or not OpenCV is installed
INTERPOLATIONS = ("area", "linear", "cubic", "nearest", "pil-bicubic")
CHANNELS = ("gray", "rgb", "bgr")
STD_RANGE = (1e-4, 1e3)  # of the [0, 1]-scaled pixels: outside it every input is (nearly) one value, or not finite in float32
MAX_ABS_MEAN = 1e3
MAX_SIDE = 4096  # pixels per side of the model input and of its resize: 224 for the published models; a 4096 px image is 200 MB in float32


@dataclass(frozen=True)
class Preprocess:
    """BGR/gray uint8 image -> float32 (C, size, size) network input.

    Steps: convert channels, resize so the shorter side is ``resize``, center-crop
    ``size`` x ``size``, scale to [0, 1], subtract ``mean``, divide by ``std``,
    HWC -> CHW (``layout`` is always NCHW for a batch).
    """

    size: int = 28
    resize: int = 28
    channels: str = "gray"
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    interpolation: str = "area"
    layout: str = "NCHW"
    invert: bool = False  # for dark-on-light photos of light-on-dark training data

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ValueError(f"unknown channels {self.channels!r}; valid: {list(CHANNELS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; valid: {list(INTERPOLATIONS)} (a bundle of a newer "
                             "dvt-edge: upgrade dvt-runtime)")
        if self.layout != "NCHW":
            raise ValueError(f"unsupported layout {self.layout!r}; valid: ['NCHW']")
        nc = self.num_channels
        if len(self.mean) != nc or len(self.std) != nc:
            raise ValueError(f"mean/std need {nc} value(s) for channels={self.channels!r}")
        for name, v in (("size", self.size), ("resize", self.resize)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIDE:  # 16384 px had one image preprocessed in 10 GB
                raise ValueError(f"preprocess {name} must be a whole number of pixels in 1..{MAX_SIDE}, got {v!r}")
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise ValueError(f"preprocess {name} must be finite numbers, got {list(vals)}")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"preprocess std must be positive (it divides the pixels), got {list(self.std)}")
        # pixels are scaled to [0, 1], then normalised in float32: a std of 1e39 made every input 0 (chance accuracy, said
        # nowhere), one of 1e-300 or a mean of 1e300 infinite (blamed on the weights)
        if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in self.std) or not all(abs(v) <= MAX_ABS_MEAN for v in self.mean):
            raise ValueError(f"preprocess mean {list(self.mean)} / std {list(self.std)} are out of range: pixels are scaled to [0, 1] "
                             f"and then normalised, so std must be within {STD_RANGE[0]:g}..{STD_RANGE[1]:g} and mean within "
                             f"+-{MAX_ABS_MEAN:g} (e.g. ImageNet's mean 0.485, 0.456, 0.406 and std 0.229, 0.224, 0.225)")
        if not isinstance(self.invert, bool):
            raise ValueError(f"preprocess invert must be true or false, got {self.invert!r}")
        if self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.size, self.size)

    @property
    def value_range(self) -> tuple[float, float]:
        """The lowest and highest value this preprocessing can produce (pixels 0 and 255, over every channel)."""
        ends = [((0.0 - m) / s, (1.0 - m) / s) for m, s in zip(self.mean, self.std)]
        return min(a for a, _ in ends), max(b for _, b in ends)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        if not isinstance(d, dict):
            raise ValueError(f"preprocess must be a JSON object, got {type(d).__name__}")
        d = checked_fields(cls, d, "preprocess", ValueError)
        missing = [k for k in ("size", "resize", "channels", "mean", "std", "interpolation") if k not in d]
        if missing:  # layout and invert may be absent (older files): the rest is never guessed
            raise ValueError(f"preprocess lacks required field(s) {missing}")
        for k in ("mean", "std"):
            if not isinstance(d.get(k), (list, tuple)):
                raise ValueError(f"preprocess {k} must be a list of numbers, got {d.get(k)!r}")
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    # ------------------------------------------------------------------ apply
    def apply(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image (H, W), (H, W, 1) or BGR (H, W, 3) -> float32 (C, size, size)."""
        img = np.asarray(image)
        if img.dtype != np.uint8:
            raise InputError(f"expected a uint8 image, got dtype {img.dtype}; pass raw pixels (0-255)")
        if img.ndim >= 2 and (img.shape[0] == 0 or img.shape[1] == 0):
            raise InputError(f"empty image of shape {img.shape}: nothing to classify (check the camera or file)")
        img = self._convert_channels(img)  # (H, W, C) uint8: gray, or the frame's own 1, 3 or 4 channels
        img = self._order_channels(self._resize_crop(img))  # (size, size, C): channels last, on the few pixels left
        x = img.astype(np.float32) * np.float32(1.0 / 255.0)
        if self.invert:
            x = 1.0 - x
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (C, size, size)

    def apply_batch(self, images) -> np.ndarray:
        """Sequence of uint8 images -> contiguous float32 (N, C, size, size)."""
        out = np.empty((len(images),) + self.input_shape, np.float32)
        for i, im in enumerate(images):
            out[i] = self.apply(im)
        return out

    def _convert_channels(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            hint = ("; uint8 images are (H, W, C) and a uint8 batch (N, H, W, C): a batch of gray images (N, H, W) is "
                    "x[..., None], a channels-first image (C, H, W) is x.transpose(1, 2, 0), a channels-first batch (N, C, H, W) "
                    "x.transpose(0, 2, 3, 1)" if img.ndim == 3 else "")
            raise InputError(f"expected a uint8 image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {img.shape}{hint}")
        if self.channels != "gray":  # BGR(A) reordered after the resize (_order_channels): the resize works per channel, so
            # OpenCV gives the same pixels and resizes the frame as it is instead of copying a reversed view first; a gray
            # frame is made 3 channels first (OpenCV's 1- and 3-channel cubic kernels round differently)
            return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        cv2 = _cv2()
        if cv2 is not None and img.shape[2] > 1:  # BGRA2GRAY reads the BGR part in place (no copy of the frame)
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)[:, :, None]
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 3:
            w = np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights (ITU-R 601)
            return np.clip(np.rint(img.astype(np.float32) @ w), 0, 255).astype(np.uint8)[:, :, None]
        return img

    def _order_channels(self, img: np.ndarray) -> np.ndarray:
        """A resized (H, W, 1|3|4) crop -> the model's channels: gray as it is, RGB or BGR without alpha."""
        if self.channels == "gray":
            return img
        return img[:, :, 2::-1] if self.channels == "rgb" else img[:, :, :3]  # input is BGR(A) (OpenCV)

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        """Resized height and width (shorter side -> ``resize``), then the crop's top and left, as the
        published models' evaluation computes them (torchvision ``Resize(resize)`` truncates the longer
        side, ``CenterCrop(size)`` rounds the offsets): the same pixels, not one column off."""
        if h <= w:
            nh, nw = self.resize, int(self.resize * w / h)
        else:
            nh, nw = int(self.resize * h / w), self.resize
        return nh, nw, int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The region (x0, y0, x1, y1) of a ``width`` x ``height`` image that :meth:`apply` feeds the model."""
        nh, nw, top, left = self._geometry(height, width)
        sy, sx = height / nh, width / nw
        return (int(round(left * sx)), int(round(top * sy)), int(round((left + self.size) * sx)), int(round((top + self.size) * sy)))

    def _resize_crop(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        nh, nw, top, left = self._geometry(h, w)
        if self.interpolation == "pil-bicubic":  # only the crop's pixels are computed (a 1080p frame: half the work)
            return _pil_resize_crop(img, nh, nw, top, left, self.size, self.size)
        if max(h, w) > MAX_ASPECT * min(h, w):  # the whole resize would be huge (1 x 10^6 px: 32 x 32 x 10^6), the crop is central
            k = MAX_ASPECT * min(h, w)  # the middle of the longer side, at nearly the same scale: the crop's pixels and a wide margin
            k += (max(h, w) - k) % 2  # cut evenly from both ends: an odd cut moved the crop half a source pixel
            img = img[:, (w - k) // 2 : (w - k) // 2 + k] if w > h else img[(h - k) // 2 : (h - k) // 2 + k]
            h, w = img.shape[:2]
            nh, nw, top, left = self._geometry(h, w)
        if (nh, nw) != (h, w):
            img = _resize(img, nh, nw, self.interpolation)
        return img[top : top + self.size, left : left + self.size]


_CV2: Optional[object] = None
_CV2_TRIED = False
_CV2_ERROR: Optional[BaseException] = None  # why cv2 did not import: missing, or installed for another numpy


def _cv2():
    global _CV2, _CV2_TRIED, _CV2_ERROR
    if not _CV2_TRIED:
        _CV2_TRIED = True
        try:
            import cv2  # noqa: PLC0415

            _CV2 = cv2
        except Exception as e:  # noqa: BLE001 - missing (the numpy fallback resizes), or built for another numpy
            _CV2, _CV2_ERROR = None, e
    return _CV2


def _resize(img: np.ndarray, nh: int, nw: int, interpolation: str) -> np.ndarray:
    if interpolation == "pil-bicubic":
        return _pil_resize_crop(img, nh, nw)
    cv2 = _cv2()
    if cv2 is not None:
        flag = {
            "area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
            "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
        }[interpolation]
        out = cv2.resize(img, (nw, nh), interpolation=flag)
        return out[:, :, None] if out.ndim == 2 else out
    return _np_resize(img, nh, nw, interpolation)


#: a longer side beyond this many times the shorter is cut to its middle before an OpenCV or numpy resize (the centre
#: crop keeps less than its middle 1/MAX_ASPECT), cut evenly: an image 1 px high and 10^6 wide took 26 s and 5.1 GB
MAX_ASPECT = 64
_PIL_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images (32 - 8 - 2): its fixed-point weights


def _pil_taps(src: int, n: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's resampling taps (ImagingResample's precompute_coeffs, BICUBIC, a = -0.5) of outputs ``first`` ..
    ``first + count - 1`` of ``src`` -> ``n`` pixels: source indices and fixed-point weights, (count, taps) each."""
    scale = src / n
    fs = max(scale, 1.0)  # shrinking widens the kernel: Pillow's antialiasing
    support = 2.0 * fs
    taps = np.arange(int(math.ceil(support)) * 2 + 1)
    center = (np.arange(first, first + count) + 0.5) * scale
    lo = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates
    span = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), src) - lo
    x = np.abs((taps[None, :] + lo[:, None] - center[:, None] + 0.5) * (1.0 / fs))
    w = np.where(x < 1.0, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))
    w = np.where(taps[None, :] < span[:, None], w, 0.0)
    total = w.sum(1, keepdims=True)
    w = np.divide(w, total, out=w.copy(), where=total != 0)
    k = np.where(w < 0, np.trunc(w * (1 << _PIL_BITS) - 0.5), np.trunc(w * (1 << _PIL_BITS) + 0.5)).astype(np.int64)
    return np.minimum(lo[:, None] + taps[None, :], src - 1), k


_PIL_BLOCK = 16  # outputs per matrix product: their taps span a short window of the source


def _pil_pass(img: np.ndarray, idx: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    """One of Pillow's passes along ``axis``: fixed-point sums, rounded, clipped to uint8.

    Each block of ``_PIL_BLOCK`` outputs is one float64 matrix product over the source window its taps span: every
    product (a uint8 times a weight below 2**23) and every partial sum is a whole number below 2**53, so float64 holds
    them exactly in any order and the result is Pillow's integer arithmetic bit for bit (a 12-megapixel photo took
    0.75 s tap by tap)."""
    src = np.moveaxis(img, axis, 0)
    rest = src.shape[1:]
    src = src.reshape(src.shape[0], -1)  # (source pixels along axis, everything else)
    out = np.empty((len(idx), src.shape[1]), np.uint8)
    for j0 in range(0, len(idx), _PIL_BLOCK):
        bi, bk = idx[j0:j0 + _PIL_BLOCK], k[j0:j0 + _PIL_BLOCK]
        s0 = int(bi.min())
        m = np.zeros((len(bi), int(bi.max()) + 1 - s0))  # (outputs, window) weights; a clamped tap repeats with weight 0
        np.add.at(m, (np.arange(len(bi))[:, None], bi - s0), bk.astype(np.float64))
        acc = (m @ src[s0:s0 + m.shape[1]].astype(np.float64)).astype(np.int64)  # exact: see above
        out[j0:j0 + len(bi)] = np.clip((acc + (1 << (_PIL_BITS - 1))) >> _PIL_BITS, 0, 255)
    return np.moveaxis(out.reshape((len(idx),) + rest), 0, axis)


def _pil_resize_crop(img: np.ndarray, nh: int, nw: int, top: int = 0, left: int = 0, ch: Optional[int] = None,
                     cw: Optional[int] = None) -> np.ndarray:
    """``PIL.Image.resize((nw, nh), BICUBIC)`` then its ``ch`` x ``cw`` crop at (top, left) (default: all), bit for bit:
    Pillow's horizontal pass, then its vertical one, each only over the pixels the crop needs."""
    h, w = img.shape[:2]
    ch, cw = nh if ch is None else ch, nw if cw is None else cw
    if nw != w:  # Pillow skips a pass that keeps the size
        idx, k = _pil_taps(w, nw, left, cw)
        c0 = int(idx.min())  # only the input columns the horizontal taps of the crop read (a 1080p frame's: half its width)
        img, idx = img[:, c0 : int(idx.max()) + 1], idx - c0
        if nh != h:  # only the input rows the vertical taps of the crop read
            vi, vk = _pil_taps(h, nh, top, ch)
            lo, hi = int(vi.min()), int(vi.max()) + 1
            return _pil_pass(_pil_pass(img[lo:hi], idx, k, 1), vi - lo, vk, 0)
        return _pil_pass(img[top : top + ch], idx, k, 1)
    img = img[:, left : left + cw]
    return _pil_pass(img, *_pil_taps(h, nh, top, ch), 0) if nh != h else img[top : top + ch]


def _np_resize(img: np.ndarray, nh: int, nw: int, interpolation: str) -> np.ndarray:
    """numpy fallback: box filter for 'area' downscaling, OpenCV's area weights for enlarging, OpenCV's
    cubic kernel for 'cubic', else bilinear (half-pixel centers)."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    if interpolation == "nearest":
        # OpenCV's INTER_NEAREST: floor(x * scale) with scale = 1 / (dst / src) in double precision (x * src / dst
        # rounds differently where it is a whole number)
        ys = np.minimum(np.floor(np.arange(nh) * (1.0 / (nh / h))).astype(int), h - 1)
        xs = np.minimum(np.floor(np.arange(nw) * (1.0 / (nw / w))).astype(int), w - 1)
        return img[ys][:, xs]
    if interpolation == "area" and nh <= h and nw <= w:
        x = _area_axis(x, nh, 0)
        x = _area_axis(x, nw, 1)
    elif interpolation == "area":  # enlarging: OpenCV's INTER_AREA interpolates with its own weights
        x = _area_up_axis(x, nh, 0)
        x = _area_up_axis(x, nw, 1)
    elif interpolation == "cubic":
        x = _cubic_axis(x, nh, 0)
        x = _cubic_axis(x, nw, 1)
    else:
        x = _linear_axis(x, nh, 0)
        x = _linear_axis(x, nw, 1)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _cubic_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """OpenCV's INTER_CUBIC along one axis: 4 taps of the A = -0.75 kernel around the half-pixel-centred
    source position, border pixels repeated."""
    src = x.shape[axis]
    pos = (np.arange(n) + 0.5) * src / n - 0.5
    base = np.floor(pos).astype(int)
    t = pos - base
    a = -0.75
    w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
         ((a + 2) * t - (a + 3)) * t * t + 1,
         ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    w.append(1 - w[0] - w[1] - w[2])
    shape = [1] * x.ndim
    shape[axis] = n
    out = np.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], np.float32)
    for k in range(4):
        idx = np.clip(base + k - 1, 0, src - 1)
        out += np.take(x, idx, axis=axis) * w[k].astype(np.float32).reshape(shape)
    return out


def _area_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    src = x.shape[axis]
    m = np.zeros((n, src), np.float32)
    for i in range(n):
        a, b = i * src / n, (i + 1) * src / n
        for j in range(int(np.floor(a)), min(int(np.ceil(b)), src)):
            m[i, j] = min(b, j + 1) - max(a, j)
    m /= m.sum(axis=1, keepdims=True)
    return np.moveaxis(np.tensordot(m, np.moveaxis(x, axis, 0), axes=1), 0, axis)


def _area_up_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """OpenCV's INTER_AREA weights when an image is enlarged: output ``i`` blends source ``sx`` and
    ``sx + 1`` by the part of ``[i, i + 1)`` (in output pixels) past source pixel ``sx``'s end."""
    src = x.shape[axis]
    i = np.arange(n)
    inv = n / src  # OpenCV's own arithmetic: scale 1 / (n / src) can land one lower than i * src / n where that is whole
    sx = np.floor(i * (1.0 / inv)).astype(int)
    f = ((i + 1) - (sx + 1) * inv).astype(np.float32)  # a float, as OpenCV keeps it: 0.9999999999 is 1 and blends nothing
    f = np.where(f <= 0, 0.0, f - np.floor(f))
    f = np.where(sx >= src - 1, 0.0, f)
    sx = np.clip(sx, 0, src - 1)
    hi = np.minimum(sx + 1, src - 1)
    shape = [1] * x.ndim
    shape[axis] = n
    t = f.astype(np.float32).reshape(shape)
    return np.take(x, sx, axis=axis) * (1 - t) + np.take(x, hi, axis=axis) * t


def _linear_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    src = x.shape[axis]
    pos = np.clip((np.arange(n) + 0.5) * src / n - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    t = (pos - lo).astype(np.float32)
    xa, xb = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n
    t = t.reshape(shape)
    return xa * (1 - t) + xb * t
