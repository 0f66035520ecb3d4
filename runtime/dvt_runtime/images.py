"""Image files to uint8 pixels, as OpenCV decodes them (numpy + OpenCV, torch-free).

One decoder for training data (``dvt_edge``'s image folders and JPEG packs) and for the device
(``dvt-runtime predict``): gray stays gray, colour is BGR, 16-bit images are scaled to 8 bits, alpha is
dropped, the EXIF orientation is applied, and a truncated JPEG is an error instead of a part-blank image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from dvt_runtime.checks import InputError

__all__ = ["IMAGE_EXTS", "IMREAD_FLAGS", "ImageError", "cv2_or_fail", "decode_image", "jpeg_end", "read_image", "to_uint8"]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})  # what image folders hold (by suffix, any case)


class ImageError(InputError):
    """An image file that cannot be read or decoded (or is truncated); the message names it and what to do."""


def cv2_or_fail():
    """OpenCV, or an ImageError naming the extra that installs it."""
    from dvt_runtime.preprocess import _cv2 as cv2_or_none

    cv2 = cv2_or_none()
    if cv2 is None:
        raise ImageError("reading image files needs OpenCV: pip install 'dvt-runtime[opencv]' (or opencv-python)")
    return cv2


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Decoded pixels as uint8 (16-bit PNGs are scaled down)."""
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    return img


#: How image files are decoded: gray stays gray, colour is BGR, 16 bits stay 16 (then scaled to uint8), alpha is
#: dropped, and the EXIF orientation is applied as ``cv2.imread`` applies it at inference (IMREAD_UNCHANGED trained
#: phone photos sideways).
IMREAD_FLAGS = 2 | 4  # cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR (no cv2 import at module load)


def jpeg_end(data: bytes) -> Optional[int]:
    """Offset just past a JPEG's end-of-image marker, found by walking its segments and entropy-coded
    scans (so data after the image, as motion photos append a video, is not taken for it, and an
    EXIF thumbnail's own marker inside a segment is skipped), or None when the data ends, or its
    structure breaks, before that marker: a truncated file, which OpenCV 4 would decode part blank.
    Stray bytes where a marker should start are skipped to the next FF, as libjpeg skips them."""
    n, pos = len(data), 2  # just after SOI (FF D8)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede a marker's code
            pos += 1
        if pos >= n:
            return None
        code, pos = data[pos], pos + 1
        if code == 0xD9:  # EOI
            return pos
        if code in (0x00, 0x01) or 0xD0 <= code <= 0xD7:  # stray FF00 (libjpeg skips it), TEM, RSTn: no length
            continue
        if code == 0xD8 or pos + 2 > n:
            return None
        length = (data[pos] << 8) | data[pos + 1]  # big-endian, counts its own two bytes
        pos += length
        if length < 2 or pos > n:
            return None
        if code == 0xDA:  # SOS: entropy-coded data runs to the next FF that is not FF00 (stuffing) or RSTn
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return None
                if data[pos + 1] != 0x00 and not 0xD0 <= data[pos + 1] <= 0xD7:
                    break  # a marker (or fill bytes before one): the loop above reads it
                pos += 2


def decode_image(data: np.ndarray, what: str) -> np.ndarray:
    """Encoded image bytes (uint8) -> uint8 pixels (BGR or gray) as OpenCV decodes them; a JPEG (known by
    its first bytes, whatever its name) must be whole. ``what`` names the image in the error."""
    cv2 = cv2_or_fail()
    if data.size == 0:
        raise ImageError(f"{what} is empty (0 bytes)")
    if data[:3].tobytes() == b"\xff\xd8\xff":
        end = jpeg_end(data.tobytes())
        if end is None:
            raise ImageError(f"{what} is a truncated or broken JPEG (it ends, or its structure breaks, before its end-of-image "
                            "marker): copy or download it again, or re-save it from its source")
        data = data[:end]  # what follows the image (a motion photo's video) is not decoded
    try:
        img = cv2.imdecode(data, IMREAD_FLAGS)
    except cv2.error:
        img = None
    if img is None:
        raise ImageError(f"cannot decode {what} (not an image OpenCV can decode)")
    return to_uint8(img)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file's uint8 pixels (BGR or gray) as OpenCV decodes them (EXIF orientation applied);
    a truncated JPEG is an error, bytes after a JPEG's end (a motion photo's video) are ignored."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror or e}") from None
    return decode_image(data, f"image {path}")
