"""JPEG files as users have them: whole, cut short, or with data after the image (motion photos)."""

from __future__ import annotations

import struct
import sys
import warnings

import cv2
import numpy as np
import pytest

from dvt_edge.data import DataError, load_dataset
from dvt_edge.imageset import decode_image, jpeg_end, read_image
from dvt_edge.npzdata import write_jpeg_pack
from dvt_runtime import images

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)
# a phone's motion photo: an MP4 appended after the JPEG's end-of-image marker
VIDEO_TRAILER = b"\x00\x00\x00\x18ftypmp42" + RNG.bytes(2000)


def _variants() -> dict[str, bytes]:
    """JPEGs in the layouts a walker must get through: baseline, progressive, restart markers, gray, an EXIF
    thumbnail (a whole JPEG, end marker included, inside a segment) and fill bytes before the end marker."""
    base = cv2.imencode(".jpg", IMG)[1].tobytes()
    thumb = cv2.imencode(".jpg", IMG[:8, :8])[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 8) + b"Exif\x00\x00" + thumb
    end, dqt, sos = base.rindex(b"\xff\xd9"), base.index(b"\xff\xdb"), base.index(b"\xff\xda")
    return {
        "baseline": base,
        "progressive": cv2.imencode(".jpg", IMG, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "restart markers": cv2.imencode(".jpg", IMG, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes(),
        "gray": cv2.imencode(".jpg", IMG[:, :, 0])[1].tobytes(),
        "exif thumbnail": base[:2] + app1 + base[2:],
        "fill bytes": base[:end] + b"\xff\xff" + base[end:],
        "fill bytes before a header marker": base[:dqt] + b"\xff\xff" + base[dqt:],
        # stray bytes where a marker should start: libjpeg skips them to the next FF and decodes the image
        "stray bytes": base[:dqt] + b"\r\n" + base[dqt:sos] + b"\x00\xff\x00" + base[sos:],
        "restart marker outside a scan": base[:sos] + b"\xff\xd0" + base[sos:],
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_the_end_marker_is_found_by_walking_and_every_cut_is_truncated(name):
    data = _variants()[name]
    assert jpeg_end(data) == len(data)
    assert jpeg_end(data + VIDEO_TRAILER) == len(data)  # the trailer is not the image
    cut_but_found = [k for k in range(len(data)) if jpeg_end(data[:k]) is not None]
    assert not cut_but_found, f"{name}: cut at {cut_but_found[:5]} still looks whole"
    pixels = decode_image(np.frombuffer(data + VIDEO_TRAILER, np.uint8), name)  # decoded as OpenCV decodes the file alone
    np.testing.assert_array_equal(pixels, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR))


def _folder(root, extra: dict[str, bytes]):
    """Two classes of 24x40 JPEGs, plus ``extra`` files (name -> bytes) in class a of val."""
    for split in ("train", "val"):
        for ci, c in enumerate(("a", "b")):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                cv2.imwrite(str(root / split / c / f"{i}.jpg"), np.clip(IMG.astype(int) + 40 * ci + i, 0, 255).astype(np.uint8))
    for name, data in extra.items():
        (root / "val" / "a" / name).write_bytes(data)


def _load_val(root) -> tuple:
    """(the folder's val split, every warning its loading gave, joined)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{root}", "val")
    return ds, " | ".join(str(x.message) for x in w)


def test_a_motion_photo_is_read_and_a_cut_jpeg_is_skipped_whatever_its_name(tmp_path):
    """Data after the end marker (a motion photo's video) used to get the photo skipped as truncated; a cut
    JPEG named .png was decoded part blank by OpenCV 4 (which the project allows) and trained on (OpenCV 5
    refuses it; both seen with the old check, OpenCV 4.10 and 5.1)."""
    jpg = _variants()["baseline"]
    _folder(tmp_path, {"motion.jpg": jpg + VIDEO_TRAILER, "cut.png": jpg[: len(jpg) * 2 // 3]})
    ds, msgs = _load_val(tmp_path)
    assert "skipped 1 " in msgs and "cut.png" in msgs and "motion.jpg" not in msgs, msgs
    i = next(k for k, f in enumerate(ds.files) if f.endswith("motion.jpg"))
    np.testing.assert_array_equal(ds.raw(i), cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR))
    assert len(ds) == 9 and not any(f.endswith("cut.png") for f in ds.files)


def test_read_image_names_a_truncated_or_empty_file(tmp_path):
    jpg = _variants()["progressive"]
    (tmp_path / "cut.jpg").write_bytes(jpg[:-40])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "motion.jpg").write_bytes(jpg + VIDEO_TRAILER)
    with pytest.raises(DataError, match=r"cut\.jpg is a truncated or broken JPEG.*download it again"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match=r"empty\.jpg is empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "missing.jpg")
    np.testing.assert_array_equal(read_image(tmp_path / "motion.jpg"), cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR))


def test_a_jpeg_pack_with_a_cut_image_is_refused(tmp_path):
    _folder(tmp_path / "f", {})
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", "val")
    pack = write_jpeg_pack(ds, tmp_path / "p.npz", split="val")
    with np.load(pack) as z:
        arrays = {k: z[k] for k in z.files}
    start, stop = int(arrays["offsets"][2]), int(arrays["offsets"][3])  # image 2's bytes lose their last 30
    arrays["jpeg"] = np.concatenate([arrays["jpeg"][: stop - 30], arrays["jpeg"][stop:]])
    arrays["offsets"] = np.concatenate([arrays["offsets"][:3], arrays["offsets"][3:] - 30])
    assert stop - 30 > start
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(DataError, match=r"image 2 of the JPEG pack is a truncated or broken JPEG"):
        load_dataset(f"npz:{tmp_path / 'cut.npz'}", "val")


def _damaged(data: bytes, scan: int = 0) -> bytes:
    """``data`` with 30 bytes of scan ``scan``'s coded data scrambled (no FF made: the structure stays whole)."""
    c, sos = bytearray(data), -1
    for _ in range(scan + 1):
        sos = c.index(b"\xff\xda", sos + 1)
    start = sos + 2 + ((c[sos + 2] << 8) | c[sos + 3])
    for i in range(start + 10, start + 40):
        c[i] = (c[i] * 7 + 13) & 0x7F
    return bytes(c)


@pytest.mark.parametrize("name,scan", [("baseline", 0), ("gray", 0), ("restart markers", 0), ("progressive", 1)])
def test_a_jpeg_whose_coded_data_is_corrupt_is_refused_for_training(name, scan):
    """OpenCV decodes such a file to wrong pixels and only prints libjpeg's warning: it was trained on."""
    data = _variants()[name]
    bad = _damaged(data, scan)
    assert jpeg_end(bad) == len(bad)  # whole, as far as the structure goes
    wrong = cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_ANYCOLOR)
    right = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR)
    assert wrong is not None and np.abs(wrong.astype(int) - right).mean() > 5
    with pytest.raises(DataError, match=r"bad\.jpg has corrupt JPEG data \(libjpeg: 'Corrupt JPEG data: .*cannot be trusted.*download it again"):
        decode_image(np.frombuffer(bad, np.uint8), "bad.jpg")
    np.testing.assert_array_equal(images.decode_image(np.frombuffer(bad, np.uint8), "x"), wrong)  # the device's predict: as OpenCV


def test_stray_bytes_between_header_segments_are_not_damage():
    """libjpeg warns about them too ('extraneous bytes before marker 0xdb') but skips them: the pixels are right."""
    data = _variants()["stray bytes"]
    assert images._libjpeg_complaint(data) and images.jpeg_corruption(data) is None
    assert images.jpeg_corruption(_damaged(data)) is not None  # the same file with damaged coded data still is


def test_corrupt_and_truncated_files_are_skipped_and_counted_by_kind(tmp_path):
    jpg = _variants()["baseline"]
    _folder(tmp_path, {"bad.jpg": _damaged(jpg), "cut.jpg": jpg[: len(jpg) // 2], "junk.jpg": b"not an image at all"})
    ds, msgs = _load_val(tmp_path)
    assert "skipped 3 image(s)" in msgs and "(1 corrupt, 1 truncated, 1 unreadable; left out)" in msgs, msgs
    assert len(ds) == 8 and not any(f.endswith(("bad.jpg", "cut.jpg", "junk.jpg")) for f in ds.files)


def test_a_jpeg_pack_with_a_corrupt_image_is_refused(tmp_path):
    _folder(tmp_path / "f", {})
    pack = write_jpeg_pack(load_dataset(f"imagefolder:{tmp_path / 'f'}", "val"), tmp_path / "p.npz", split="val")
    with np.load(pack) as z:
        arrays = {k: z[k] for k in z.files}
    start, stop = int(arrays["offsets"][2]), int(arrays["offsets"][3])
    arrays["jpeg"] = arrays["jpeg"].copy()
    arrays["jpeg"][start:stop] = np.frombuffer(_damaged(arrays["jpeg"][start:stop].tobytes()), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=r"image 2 of the JPEG pack has corrupt JPEG data"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", "val")


def test_without_simplejpeg_the_strict_check_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import fails
    with pytest.raises(DataError, match=r"needs simplejpeg, which is not installed .*: pip install .*'simplejpeg>=1\.7\.4' \(dvt-runtime's "
                                        r"\[opencv\] extra"):  # the runtime's extra: a device has no dvt-edge
        decode_image(np.frombuffer(_variants()["baseline"], np.uint8), "x.jpg")
    images.decode_image(np.frombuffer(_variants()["baseline"], np.uint8), "x.jpg")  # not strict: not needed
    # an image folder: every JPEG was counted "unreadable" and the error named no package
    _folder(tmp_path, {})
    with pytest.raises(DataError, match=r"needs simplejpeg, which is not installed .*pip install .*'simplejpeg>=1\.7\.4'"):
        load_dataset(f"imagefolder:{tmp_path}", "val")
    assert not images.can_check_jpegs()


def test_a_simplejpeg_that_fails_to_import_is_not_usable(monkeypatch):
    """find_spec saw a simplejpeg built against another numpy, and predict then listed every JPEG as unreadable."""
    import importlib.abc

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "simplejpeg":
                raise RuntimeError("module compiled against ABI version 0x1000009 but this version of numpy is 0x2000000")

    monkeypatch.delitem(sys.modules, "simplejpeg", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.warns(UserWarning, match=r"simplejpeg is installed but fails to import \(RuntimeError: .*: JPEGs with corrupt data cannot"):
        assert not images.can_check_jpegs()
    with pytest.raises(DataError, match=r"needs simplejpeg, which is installed but fails to import \(RuntimeError: module compiled against "
                                        r"ABI .*pip install -U "):
        decode_image(np.frombuffer(_variants()["baseline"], np.uint8), "x.jpg")


def test_tiff_is_read_and_other_files_in_class_folders_are_said(tmp_path):
    """.tif files and HEIC photos in class folders were left out without a word (predict read a .tif named on its own)."""
    _folder(tmp_path, {"scan.tif": cv2.imencode(".tif", IMG)[1].tobytes(), "IMG_1.HEIC": b"\x00\x00\x00\x18ftypheic",
                       "IMG_2.heic": b"\x00\x00\x00\x18ftypheic", "notes.txt": b"x", ".DS_Store": b"\x00"})
    ds, msgs = _load_val(tmp_path)
    assert "ignoring 3 file(s) in class folders of" in msgs and "(.heic: 2, .txt: 1;" in msgs and "DS_Store" not in msgs, msgs
    i = next(k for k, f in enumerate(ds.files) if f.endswith("scan.tif"))
    np.testing.assert_array_equal(ds.raw(i), IMG)


def test_a_float_tiff_is_scaled_not_cast_to_black(tmp_path):
    """OpenCV decodes a float TIFF as float32 0-1; a cast to uint8 made every pixel 0."""
    f = IMG.astype(np.float32) / 255
    cv2.imwrite(str(tmp_path / "f.tif"), f)
    assert cv2.imread(str(tmp_path / "f.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), IMG)
    f[0, 0, 0] = 1.0001  # a resampled float image's overshoot is clipped, not read as 0-255 (all but black)
    cv2.imwrite(str(tmp_path / "over.tif"), f)
    assert read_image(tmp_path / "over.tif")[0, 0, 0] == 255 and np.array_equal(read_image(tmp_path / "over.tif")[1:], IMG[1:])
    f[0, 0, 0] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tif"), f)
    with pytest.raises(DataError, match=r"nan\.tif holds NaN or infinite pixel values"):
        read_image(tmp_path / "nan.tif")
    cv2.imwrite(str(tmp_path / "hdr.tif"), IMG.astype(np.float32) / 10)  # 0-25.5: HDR-like, refused rather than guessed
    with pytest.raises(DataError, match=r"hdr\.tif is a float image with values up to 25\.5, not 0-1"):
        read_image(tmp_path / "hdr.tif")
    _folder(tmp_path / "f", {"hdr.tif": (tmp_path / "hdr.tif").read_bytes()})  # in a folder: counted as what it is
    assert "(1 unsupported; left out)" in _load_val(tmp_path / "f")[1]
