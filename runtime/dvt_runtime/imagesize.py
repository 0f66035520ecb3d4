"""The pixel size an image file declares in its header, read before it is decoded: a few bytes can claim 32000 x 32000
pixels (a GIF of 35 bytes made OpenCV allocate 8 GB, a 1 KB BMP 4 GB, a JPEG with its size field changed 6 GB), so an
image over :func:`max_pixels` is refused before any decoder allocates it. JPEG, PNG, GIF, BMP, WebP and TIFF are read
here, and Netpbm; other formats keep OpenCV's own limit (2^30 pixels)."""

from __future__ import annotations

import os
import struct
from typing import Optional

__all__ = ["DEFAULT_MAX_PIXELS", "declared_size", "max_pixels"]

#: 134 megapixels: a 108 MP phone photo (12000 x 9000) decodes (about 0.3 GB as BGR); DVT_MAX_IMAGE_PIXELS changes it
DEFAULT_MAX_PIXELS = 1 << 27


def max_pixels() -> int:
    """The most pixels (width x height) an image may declare: ``DVT_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get("DVT_MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DVT_MAX_IMAGE_PIXELS must be a whole number of pixels >= 1 (e.g. 268435456), got {text!r}")
    return int(text)


def declared_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the header of a JPEG, PNG, GIF, BMP, WebP, TIFF or Netpbm file's bytes (all of them: a JPEG's
    frame header may follow megabytes of other segments, a TIFF's directory its pixels); None for another format or a
    header too short to say (the decoder then judges the file)."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)  # a negative height: rows stored top-down
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(data)
        if data[:1] == b"P" and data[1:2] in b"1234567f" and data[2:3].isspace():
            return _pnm(data)
    except struct.error:  # too short: the decoder says so
        return None
    return None


def _jpeg(data: bytes) -> Optional[tuple[int, int]]:
    """The frame header's size (SOF0..SOF15 but DHT, JPG and DAC), walking the segments before the first scan."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)  # stray bytes: to the next marker, as libjpeg skips them
            if pos < 0:
                return None
            continue
        code = data[pos + 1]
        if code == 0xFF:  # fill bytes
            pos += 1
            continue
        if code in (0x01, 0x00) or 0xD0 <= code <= 0xD8:
            pos += 2
            continue
        if code == 0xDA or code == 0xD9:  # the first scan or the end, with no frame header before it
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])  # after the length and the sample precision
            return w, h
        pos += 2 + length
    return None


def _webp(data: bytes) -> Optional[tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8X":  # the canvas: 24-bit width - 1 and height - 1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after the signature byte
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff(data: bytes) -> Optional[tuple[int, int]]:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", data[4:8])[0]
    count = struct.unpack(e + "H", data[ifd:ifd + 2])[0]
    size: dict[int, int] = {}
    for i in range(min(count, 4096)):
        tag, kind, _, value = struct.unpack(e + "HHI4s", data[ifd + 2 + 12 * i:ifd + 14 + 12 * i])
        if tag in (256, 257):
            size.setdefault(tag, struct.unpack(e + ("H" if kind == 3 else "I"), value[:2] if kind == 3 else value)[0])  # libtiff: the first
    return (size[256], size[257]) if len(size) == 2 else None


def _pnm(data: bytes) -> Optional[tuple[int, int]]:
    """Netpbm (P1-P6, PFM): width and height, the header's first two numbers after the magic (comments skipped); P7 (PAM)
    names them WIDTH and HEIGHT."""
    head = data[:4096].split(b"ENDHDR")[0] if data[1:2] == b"7" else data[:4096]
    words = [w for line in head.split(b"\n") for w in line.split(b"#")[0].split()]
    if data[1:2] == b"7":
        keys = dict(zip(words[1::2], words[2::2]))
        return (int(keys[b"WIDTH"]), int(keys[b"HEIGHT"])) if b"WIDTH" in keys and b"HEIGHT" in keys else None
    return (int(words[1]), int(words[2])) if len(words) >= 3 and words[1].isdigit() and words[2].isdigit() else None
