"""Image files to uint8 pixels, as OpenCV decodes them (numpy + OpenCV, torch-free).

One decoder for training data (``dvt_edge``'s image folders and JPEG packs) and for the device
(``dvt-runtime predict``): gray stays gray, colour is BGR, 16-bit images are scaled to 8 bits, alpha is
dropped, the EXIF orientation is applied, and a truncated JPEG is an error instead of a part-blank image.
Training data is read ``strict``: a JPEG whose coded data libjpeg finds corrupt is an error too (OpenCV decodes
it to wrong pixels and only prints libjpeg's warning).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dvt_runtime.checks import InputError
from dvt_runtime.imagesize import declared_size, max_pixels

__all__ = ["IMAGE_EXTS", "IMREAD_FLAGS", "CorruptImage", "TooLarge", "DecoderMissing", "ImageError", "TruncatedImage", "UnsupportedPixels", "can_check_jpegs", "cv2_or_fail",
           "decode_image", "encoded_image", "from_pil", "is_pil_image", "jpeg_corruption", "jpeg_end", "read_image", "to_uint8"]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".avif"})  # what image folders hold (by suffix, any case)


class ImageError(InputError):
    """An image file that cannot be read or decoded (or is truncated); the message names it and what to do."""

    kind = "unreadable"


class TruncatedImage(ImageError):
    """A JPEG that ends, or whose structure breaks, before its end-of-image marker."""

    kind = "truncated"


class TooLarge(ImageError):
    """An image whose header declares more pixels than :func:`dvt_runtime.imagesize.max_pixels` allows."""

    kind = "over the pixel limit (DVT_MAX_IMAGE_PIXELS)"


class CorruptImage(ImageError):
    """A whole-looking JPEG whose coded data libjpeg finds corrupt (it decodes, to wrong pixels)."""

    kind = "corrupt"


def cv2_or_fail():
    """OpenCV, or an ImageError naming the extra that installs it."""
    from dvt_runtime.preprocess import _cv2 as cv2_or_none

    cv2 = cv2_or_none()
    if cv2 is None:
        from dvt_runtime import preprocess
        from dvt_runtime.backends import install_hint, installed_but_broken
        from dvt_runtime.builds import rebuild_fix

        err = preprocess._CV2_ERROR
        if err is not None and installed_but_broken(err, "cv2"):  # "pip install opencv..." would change nothing
            raise ImageError(f"reading image files needs OpenCV, which is installed but fails to import ({type(err).__name__}: "
                             f"{str(err) or 'no message'}); it may be built for another numpy than this environment's ({np.__version__}). "
                             f"{rebuild_fix('cv2', err, install_hint('opencv', '-U'))}, and check: python -c 'import cv2'")
        raise ImageError(f"reading image files needs OpenCV: {install_hint('opencv')} (or opencv-python)")
    return cv2


class UnsupportedPixels(ImageError):
    """Decoded pixels this cannot turn into 8 bits without guessing (NaN, HDR floats, 32-bit integers)."""

    kind = "unsupported"


def to_uint8(img: np.ndarray, what: str = "the image") -> np.ndarray:
    """Decoded pixels as uint8: 16-bit images scaled down, float images (a float TIFF) read as 0-1 (a little overshoot
    clipped); NaN or infinite pixels, floats far above 1 (HDR) and other integer depths are refused (a cast made them black)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:  # the high byte, as cv2.imread gives it (x / 257 truncated: 63% of pixels a level darker)
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise UnsupportedPixels(f"{what} holds NaN or infinite pixel values (a float image): re-save it as 8- or 16-bit")
        if img.size and (hi := float(img.max())) > 1.5:
            raise UnsupportedPixels(f"{what} is a float image with values up to {hi:g}, not 0-1 (HDR?): re-save it as 8- or 16-bit")
        return np.clip(np.rint(img.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    raise UnsupportedPixels(f"{what}'s pixels are {img.dtype} (a {img.dtype.itemsize * 8}-bit image): re-save it as 8- or 16-bit")


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


#: the starts of libjpeg's complaints that mean a JPEG's data is damaged: its warnings (jerror.h: JWRN_EXTRANEOUS_DATA,
#: JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC, JWRN_JPEG_EOF), which OpenCV only prints, and the errors that
#: OpenCV may still return part of an image for (a later scan's bad Huffman table); not an unknown JFIF revision, not an
#: unsupported feature (OpenCV's own decode judges those)
JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file", "Bogus", "Huffman table", "Quantization table", "Invalid",
               "DCT coefficient out of range", "Didn't expect more than one scan", "Unsupported marker type")


class DecoderMissing(ImageError):
    """simplejpeg, which the strict check needs, cannot be imported: not the image's fault (never counted as unreadable)."""

    kind = "missing"


def can_check_jpegs() -> bool:
    """Whether :func:`jpeg_corruption` can run here (simplejpeg imports: dvt-edge and the runtime's ``opencv`` extra install it).
    Installed but broken (built for another numpy) is warned: the check the user installed it for is off."""
    try:
        import simplejpeg  # noqa: F401 - imported when asked, never at module load
    except Exception as e:  # noqa: BLE001 - missing, or built against another numpy: either way not usable
        from dvt_runtime.backends import installed_but_broken

        if installed_but_broken(e, "simplejpeg"):
            warnings.warn(f"simplejpeg {_simplejpeg_problem(e)}: JPEGs with corrupt data cannot be told apart and are answered",
                          stacklevel=2)
        return False
    return True


def _simplejpeg_problem(e: BaseException) -> str:
    """Why simplejpeg did not import, and the fix: missing, or installed for another numpy (a reinstall of the same changes nothing)."""
    from dvt_runtime.backends import install_hint, installed_but_broken

    if installed_but_broken(e, "simplejpeg"):
        return (f"is installed but fails to import ({type(e).__name__}: {str(e)[:200] or 'no message'}); install a build that "
                f"matches this numpy ({np.__version__}), e.g. {install_hint('opencv', '-U')}")
    return (f"is not installed ({e}): {install_hint('opencv')} (dvt-edge depends on it too: a dvt-edge install older than "
            "that dependency needs pip install -e . again)")


def _libjpeg_complaint(data: bytes) -> Optional[str]:
    """What libjpeg (through simplejpeg, strict) says of decoding ``data``: a warning or an error, or None."""
    try:
        import simplejpeg
    except Exception as e:  # noqa: BLE001 - missing, or a broken build
        raise DecoderMissing(f"checking JPEGs for corrupt data needs simplejpeg, which {_simplejpeg_problem(e)}") from None
    try:  # gray, fast IDCT: every component's coded data is still read, the colour work skipped
        simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=True, fastupsample=True, strict=True)
    except Exception as e:  # noqa: BLE001 - simplejpeg raises ValueError for warnings, others for errors
        return str(e).strip() or type(e).__name__
    return None


def _without_stray_header_bytes(data: bytes) -> bytes:
    """``data`` with the stray bytes between its header segments (before the first scan) left out."""
    out, n, pos = [data[:2]], len(data), 2  # SOI
    while pos < n:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            break
        start = pos
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        code, pos = data[pos], pos + 1
        if code == 0xDA or code == 0xD9:  # the first scan (or the end): the rest as it is
            out.append(data[start:])
            break
        if code in (0x00, 0x01) or 0xD0 <= code <= 0xD7 or pos + 2 > n:  # stray: left out
            continue
        pos += (data[pos] << 8) | data[pos + 1]
        out.append(data[start:pos])
    return b"".join(out)


def jpeg_corruption(data: bytes) -> Optional[str]:
    """libjpeg's complaint when a JPEG's data is damaged ('Corrupt JPEG data: bad Huffman code', '... N
    extraneous bytes before marker 0xd9'), or None when libjpeg finds nothing wrong. Stray bytes between header
    segments are not damage (libjpeg skips them; the pixels are right); bytes left over after a scan are. Needs
    simplejpeg (dvt-edge installs it): OpenCV only prints libjpeg's warnings."""
    said = _libjpeg_complaint(data)
    if said and said.startswith("Corrupt JPEG data") and "extraneous bytes" in said:
        clean = _without_stray_header_bytes(data)
        said = _libjpeg_complaint(clean) if len(clean) < len(data) else said
    return said if said and said.startswith(JPEG_DAMAGE) else None


def decode_image(data: np.ndarray, what: str, strict: bool = False) -> np.ndarray:
    """Encoded image bytes (uint8) -> uint8 pixels (BGR or gray) as OpenCV decodes them; a JPEG (known by
    its first bytes, whatever its name) must be whole, and with ``strict`` its coded data free of what libjpeg
    calls corrupt (:func:`jpeg_corruption`). ``what`` names the image in the error."""
    cv2 = cv2_or_fail()
    if data.size == 0:
        raise ImageError(f"{what} is empty (0 bytes)")
    raw = data.tobytes()  # once: the size check and the JPEG walk both read the whole file
    size = declared_size(raw)  # the whole file: a JPEG's frame header can follow 1 MB of other segments
    if size is not None and size[0] * size[1] > (most := max_pixels()):  # before any decoder allocates it
        raise TooLarge(f"{what} declares {size[0]} x {size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP), more than the "
                         f"{most / 1e6:.0f} MP an image may have here (an image bomb, or a huge scan: resize it, or raise "
                         "DVT_MAX_IMAGE_PIXELS)")
    if raw[:3] == b"\xff\xd8\xff":
        end = jpeg_end(raw)
        if end is None:
            raise TruncatedImage(f"{what} is a truncated or broken JPEG (it ends, or its structure breaks, before its end-of-image "
                            "marker): copy or download it again, or re-save it from its source")
        data = data[:end]  # what follows the image (a motion photo's video) is not decoded
        if strict and (warning := jpeg_corruption(raw[:end])):
            raise CorruptImage(f"{what} has corrupt JPEG data (libjpeg: {warning!r}): its pixels cannot be trusted; copy or "
                               "download it again, or re-save it from its source")
    why = "not an image OpenCV can decode"
    try:
        img = cv2.imdecode(data, IMREAD_FLAGS)
    except cv2.error as e:  # e.g. over OpenCV's 2**30-pixel limit: said, not called undecodable
        img, why = None, f"OpenCV: {str(e).strip().splitlines()[-1][:300]}"
    if img is None:
        raise ImageError(f"cannot decode {what} ({_not_decodable(data[:16].tobytes(), why)})")
    return to_uint8(img, what)


def _not_decodable(head: bytes, why: str) -> str:
    """Why OpenCV decoded nothing, with the way out where the first bytes tell the kind of file."""
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "a HEIC/HEIF photo, which OpenCV does not decode: convert it to JPEG (e.g. with pillow-heif, or sips -s format jpeg on macOS)"
    if head.startswith(b"\x00\x05\x16\x07"):
        return "a macOS AppleDouble file (._name, metadata beside a copied file), not an image: delete it or leave it out"
    return why


def read_image(path: Union[str, Path], strict: bool = False) -> np.ndarray:
    """An image file's uint8 pixels (BGR or gray) as OpenCV decodes them (EXIF orientation applied);
    a truncated JPEG is an error (with ``strict``, a corrupt one too), bytes after a JPEG's end (a motion
    photo's video) are ignored."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO named .jpg had blocked the read forever; a device reads forever
            raise ImageError(f"cannot read image {path}: not a regular file (a pipe, socket or device)")
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, FileNotFoundError) and os.path.islink(path):  # ls shows it; "no such file" alone puzzled
            why = f"a broken link to {os.readlink(path)}"
        raise ImageError(f"cannot read image {path}: {why}") from None
    return decode_image(data, f"image {path}", strict)


def encoded_image(x: object) -> bool:
    """Whether ``x`` is an encoded image file's bytes (an upload, ``open(f, 'rb').read()``), not a path given as bytes:
    ``bytes`` or a ``bytearray`` holding a NUL byte, which no path holds and every JPEG, PNG, GIF, BMP, TIFF and WebP header
    does, or longer than a path can be (a PPM has no NUL); a memoryview is left alone: one of a pixel array is pixels."""
    return isinstance(x, (bytes, bytearray)) and (b"\x00" in x or len(x) > 4096)  # longer than any path (PATH_MAX): a file


def is_pil_image(x: object) -> bool:
    """Whether ``x`` is a Pillow image (known by its class's module: Pillow is not imported here)."""
    return any(c.__module__.split(".")[0] == "PIL" and c.__name__ == "Image" for c in type(x).__mro__)


def from_pil(img, what: str = "the Pillow image") -> np.ndarray:
    """A Pillow image -> uint8 pixels as :func:`decode_image` gives its file: EXIF orientation applied, colour as
    BGR (palette, CMYK, YCbCr and the like converted), gray kept gray, alpha dropped, 16 bits scaled to 8.
    np.asarray of a Pillow image is RGB, RGBA, CMYK or palette indices, which read as BGR would be wrong pixels."""
    from PIL import ImageOps

    jpeg_cmyk = img.mode == "CMYK" and getattr(img, "format", None) == "JPEG"  # (a transposed copy keeps no format)
    try:
        return _from_pil(ImageOps.exif_transpose(img), what, jpeg_cmyk)  # a copy, upright as OpenCV decodes the file
    except (OSError, ValueError, SyntaxError) as e:  # Pillow decodes lazily: a truncated file fails here (SyntaxError: its
        if isinstance(e, ImageError):  # parsers' own)
            raise
        raise ImageError(f"cannot decode {what} ({type(e).__name__}: {e})") from None


def _from_pil(img, what: str, jpeg_cmyk: bool = False) -> np.ndarray:
    mode = img.mode
    if jpeg_cmyk and mode == "CMYK":  # converted as OpenCV converts the file (Pillow's rounding was a gray level off)
        raw = 255 - np.asarray(img, dtype=np.int32)  # (H, W, 4) libjpeg's Adobe CMYK (Pillow inverts it on reading)
        k = raw[..., 3]
        bgr = [k - (((255 - raw[..., i]) * k) >> 8) for i in (2, 1, 0)]  # OpenCV's icvCvt_CMYK2BGR_8u_C4C3R: y, m, c
        return np.ascontiguousarray(np.stack(bgr, axis=-1).astype(np.uint8))
    if mode in ("L", "LA", "1"):  # gray (with alpha: dropped)
        return np.ascontiguousarray(np.asarray(img.convert("L")))
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit or 32-bit gray
        a = np.asarray(img)
        if mode == "I":
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise UnsupportedPixels(f"{what} is a 32-bit integer image with values outside 0-65535: convert it to 8 or 16 bits")
            a = a.astype(np.uint16)
        return to_uint8(a.astype(a.dtype.newbyteorder("=")), what)
    rgb = np.asarray(img.convert("RGB"))  # (H, W, 3) RGB
    return np.ascontiguousarray(rgb[..., ::-1])  # -> BGR, the runtime's channel order
