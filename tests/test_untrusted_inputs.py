"""Images, data files and checkpoints from the public (a service's uploads, a shared data set): a few bytes must not make
the tools allocate gigabytes, and nothing in a file may reach the terminal as escape sequences."""

from __future__ import annotations

import io
import struct
import sys
import time
import zipfile
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dvt_runtime.images import ImageError, decode_image
from dvt_runtime.imagesize import DEFAULT_MAX_PIXELS, declared_size, max_pixels


def _encoded(fmt: str, w: int = 37, h: int = 23) -> bytes:
    """A real ``w`` x ``h`` colour image in ``fmt``, as an encoder writes it."""
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if fmt == "gif":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="GIF")
        return buf.getvalue()
    ok, data = cv2.imencode(f".{fmt}", img)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("fmt", ["jpg", "png", "bmp", "webp", "tiff", "gif"])
def test_the_declared_size_is_the_decoded_size(fmt):
    """The header reader (before any decoder allocates) reads every format's real files right: no good image refused."""
    data = _encoded(fmt)
    assert declared_size(data) == (37, 23)
    assert decode_image(np.frombuffer(data, np.uint8), fmt).shape[:2] == (23, 37)


def _bombs() -> dict[str, bytes]:
    """Headers that claim 32000 x 32000 pixels (1 GP) in a few bytes."""
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 32000, 32000, 8, 2, 0, 0, 0)
    png += struct.pack(">I", zlib.crc32(png[12:]))
    jpg = bytearray(_encoded("jpg"))
    sof = next(i for i in range(2, len(jpg) - 1) if jpg[i] == 0xFF and jpg[i + 1] in (0xC0, 0xC2))
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 32000, 32000)
    webp = bytearray(_encoded("webp"))
    return {"gif": b"GIF89a" + struct.pack("<HH", 32000, 32000) + b"\x00\x00\x00;",
            "bmp": b"BM" + bytes(12) + struct.pack("<Iii", 40, 32000, 32000) + bytes(28),
            "png": png, "jpg": bytes(jpg),
            "webp": bytes(webp[:12]) + b"VP8X" + struct.pack("<I", 10) + bytes(4) + (31999).to_bytes(3, "little") * 2,
            "tiff": b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 256, 4, 1, 32000) + struct.pack("<HHII", 257, 4, 1, 32000)}


@pytest.mark.parametrize("fmt", ["gif", "bmp", "png", "jpg", "webp", "tiff"])
def test_an_image_bomb_is_refused_before_it_is_decoded(fmt):
    """A 35-byte GIF had OpenCV allocate 8 GB; a 1 KB BMP 4 GB; a JPEG with its size field changed 6 GB (and the strict
    check 4 GB before OpenCV's own limit applied)."""
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"declares 32000 x 32000 pixels \(1024 MP\), more than the 134 MP .* DVT_MAX_IMAGE_PIXELS"):
        decode_image(np.frombuffer(_bombs()[fmt], np.uint8), f"the {fmt}", strict=True)
    assert time.perf_counter() - t0 < 2


def test_headers_far_into_the_file_repeated_or_netpbm_are_read(monkeypatch):
    """A JPEG's frame header after 1.1 MB of padding segments, a TIFF's directory after its pixels, and a TIFF naming its
    width twice (libtiff reads the first) had passed a check that read the first 1 MB and the last entry; PPM had none."""
    from dvt_runtime.images import TooLarge

    monkeypatch.setenv("DVT_MAX_IMAGE_PIXELS", "500")  # under 37 x 23
    jpg = _encoded("jpg")
    pad = (b"\xff\xee" + struct.pack(">H", 65535) + bytes(65533)) * 17  # APP14 segments, 1.1 MB before the frame header
    tiff_far = b"II*\x00" + struct.pack("<I", 8 + 1_200_000) + bytes(1_200_000) + struct.pack("<H", 2) + \
        struct.pack("<HHII", 256, 4, 1, 1000) + struct.pack("<HHII", 257, 4, 1, 400)
    tiff_twice = b"II*\x00" + struct.pack("<IH", 8, 3) + struct.pack("<HHII", 256, 4, 1, 200) + \
        struct.pack("<HHII", 256, 4, 1, 10) + struct.pack("<HHII", 257, 4, 1, 20)
    cases = {"jpg": jpg[:2] + pad + jpg[2:], "tiff_far": tiff_far, "tiff_twice": tiff_twice, "ppm": b"P6\n# made\n300 200\n255\n" + bytes(64)}
    assert [declared_size(d) for d in cases.values()] == [(37, 23), (1000, 400), (200, 20), (300, 200)]
    for name, data in cases.items():
        with pytest.raises(TooLarge, match="declares"):
            decode_image(np.frombuffer(data, np.uint8), name)


def test_the_pixel_limit_is_the_users_to_set(monkeypatch):
    assert max_pixels() == DEFAULT_MAX_PIXELS == 1 << 27
    monkeypatch.setenv("DVT_MAX_IMAGE_PIXELS", "800")
    with pytest.raises(ImageError, match="declares 37 x 23 pixels"):
        decode_image(np.frombuffer(_encoded("png"), np.uint8), "x")
    monkeypatch.setenv("DVT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="DVT_MAX_IMAGE_PIXELS must be a whole number"):
        max_pixels()


def test_an_upload_without_a_nul_is_decoded_when_no_path_could_be_that_long(onnx_bundle):
    """A binary PPM has no NUL byte: it was refused as "a path", its first 120 bytes echoed in the error."""
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.checks import InputError

    img = np.full((48, 40, 3), 200, np.uint8)
    ppm = b"P6\n40 48\n255\n" + img.tobytes()
    assert b"\x00" not in ppm and len(ppm) > 4096
    b = Bundle.open(onnx_bundle)
    assert b.predict(ppm).label == b.predict(img).label
    with pytest.raises(InputError, match=r"got 30 bytes without a NUL byte, so a path") as e:
        b.predict(b"SECRET-TOKEN-abc123-not-a-path")
    assert "SECRET" not in str(e.value)


def test_a_data_file_cannot_make_a_small_file_allocate_gigabytes(tmp_path):
    """A label of 10**12 in a 31 KB npz built a list of 10**12 class names; a member nobody reads (a zip bomb) was inflated."""
    from dvt_edge.data import load_dataset
    from dvt_edge.imageset import DataError

    images = np.zeros((10, 8, 8), np.uint8)
    np.savez(tmp_path / "oob.npz", images=images, labels=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10**12]))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"labels skip class\(es\) \[9, 10, .*\] \(labels run 0..1000000000000, 10 images\)"):
        load_dataset(f"npz:{tmp_path / 'oob.npz'}", "val")
    assert time.perf_counter() - t0 < 5
    np.savez(tmp_path / "junk.npz", images=images, labels=np.arange(10) % 2, junk=np.zeros(10, np.float32))
    from dvt_runtime.io import read_npz

    z = read_npz(tmp_path / "junk.npz", ("images", "labels"), ValueError, "hint")
    assert "junk" in z and "nothing" not in z  # asked by name, not read
    assert sorted(z) == ["images", "junk", "labels"] and sorted(z._arrays) == ["images", "labels"]  # junk never read
    assert load_dataset(f"npz:{tmp_path / 'junk.npz'}", "val").labels.tolist() == (np.arange(10) % 2).tolist()


def test_a_checkpoint_that_inflates_or_prints_escapes_is_refused_plainly(tmp_path):
    from dvt_edge.checkpoint import CheckpointError, load_checkpoint

    torch.save({"w": torch.zeros(1 << 19)}, tmp_path / "ok.pt")  # 2 MB of zeros: compresses to nothing
    with zipfile.ZipFile(tmp_path / "ok.pt") as zin, zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i))
    with pytest.raises(CheckpointError, match=r"holds compressed records .* torch.save never writes"):
        load_checkpoint(str(tmp_path / "bomb.pt"))
    torch.save({f"t{i}": torch.zeros(1 << 16) for i in range(20)}, tmp_path / "many.pt")  # 20 records of 256 KB each
    with zipfile.ZipFile(tmp_path / "many.pt") as zin, zipfile.ZipFile(tmp_path / "bombs.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i))
    with pytest.raises(CheckpointError, match=r"holds compressed records \(2\d, "):  # each under 1 MB: counted in total
        load_checkpoint(str(tmp_path / "bombs.pt"))
    with zipfile.ZipFile(tmp_path / "ok.pt") as zin, zipfile.ZipFile(tmp_path / "ansi.pt", "w") as zout:
        for i in zin.infolist():
            data = b"\x80\x02cx\x1b[31mRED\x1b]0;TITLE\x07\ny\nq\x00." if i.filename.endswith("data.pkl") else zin.read(i)
            zout.writestr(i.filename, data)
    with pytest.raises(CheckpointError, match="needs arbitrary Python unpickling") as e:
        load_checkpoint(str(tmp_path / "ansi.pt"))
    assert "\x1b" not in str(e.value) and "\\x1b[31mRED" in str(e.value) and "add_safe_globals" not in str(e.value)


def test_a_folder_nested_past_pythons_recursion_limit_is_one_error(tmp_path, onnx_bundle, capsys, monkeypatch):
    """1,200 nested folders (deeper than a path can be written whole) ended predict in a RecursionError traceback."""
    import os

    from dvt_runtime.predict import main

    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    for _ in range(1200):  # one level at a time: the whole path is longer than PATH_MAX
        os.mkdir("a")
        os.chdir("a")
    cv2.imwrite("x.png", np.zeros((8, 8), np.uint8))
    os.chdir(tmp_path)
    try:
        rc = main(["--bundle", str(onnx_bundle), str(tmp_path / "d")])
        if sys.version_info < (3, 12):  # os.walk recursed until 3.12
            assert rc == 2 and "nests folders too deeply to walk" in capsys.readouterr().err
        else:
            assert rc == 0
    finally:  # removed here, a level at a time: pytest's own clean-up (shutil.rmtree, recursive until 3.12) ended in a RecursionError
        os.chdir(tmp_path / "d")
        for _ in range(1200):
            os.chdir("a")
        os.remove("x.png")
        for _ in range(1200):
            os.chdir("..")
            os.rmdir("a")
        os.chdir(tmp_path)


def test_names_from_a_data_file_reach_the_terminal_escaped(tmp_path, capsys):
    from dvt_edge.data import main as data_main
    from dvt_edge.evaluate import per_class, per_class_lines

    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 0, 1, 1]),
             classes=np.array(["cat\x1b]0;PWNED\x07", "dog\x1b[2J"]))
    assert data_main(["info", "--data", f"npz:{tmp_path / 'x.npz'}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "cat\\x1b]0;PWNED\\x07: " in out
    probs = np.zeros((1, 4, 2))
    probs[0, :, 0] = 1
    text = "\n".join(per_class_lines(per_class(probs.argmax(-1), np.array([0, 0, 1, 1]), ["cat", "dog\x1b[2J"])))
    assert "\x1b" not in text and "never predicts dog\\x1b[2J" in text
