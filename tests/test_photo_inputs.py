"""Photos as apps hold them: Pillow images, an upload's bytes, EXIF-rotated files, HEIC and AppleDouble files, broken links
and thumbnails, read as the file itself would be (one decoder for training, ``predict``, the Python API and the webcam)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dvt_runtime.bundle import Bundle
from dvt_runtime.checks import InputError
from dvt_runtime.images import from_pil, read_image


def _picture(h: int = 40, w: int = 56) -> np.ndarray:
    """An asymmetric colour picture (H, W, 3) RGB: a rotation or a channel swap changes it."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + 2 * y) % 97) * 2], -1).astype(np.uint8)
    rgb[: h // 3, : w // 4] = (250, 30, 10)  # a red corner: top left
    return rgb


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """The same picture in the modes Pillow hands out: EXIF-rotated JPEG, palette, RGBA, CMYK, gray, gray+alpha, 16-bit."""
    d = tmp_path_factory.mktemp("modes")
    rgb = _picture()
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(d / "exif6.jpg", exif=exif, quality=95)
    im.save(d / "rgb.png")
    im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(d / "palette.png")
    im.convert("RGBA").save(d / "rgba.png")
    im.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    im.convert("L").save(d / "gray.png")
    im.convert("LA").save(d / "gray_alpha.png")
    cv2.imwrite(str(d / "gray16.png"), np.asarray(im.convert("L")).astype(np.uint16) * 257)
    return d


MODES = ["exif6.jpg", "rgb.png", "palette.png", "rgba.png", "cmyk.jpg", "gray.png", "gray_alpha.png", "gray16.png"]


@pytest.mark.parametrize("name", MODES)
def test_a_pillow_image_is_read_as_its_file(photo_files, name):
    """np.asarray of a Pillow image is RGB, RGBA, CMYK or palette indices (and not EXIF-rotated), which the runtime read
    as BGR: a CIFAR car came out "airplane", 70.8% against 94.0% on 500 images. Now it is its file's pixels."""
    f = photo_files / name
    want, got = read_image(f), from_pil(Image.open(f))
    if got.ndim == 2 and want.ndim == 3:  # OpenCV gives gray+alpha as colour with equal channels
        assert (want == want[..., :1]).all()
        want = want[..., 0]
    assert got.shape == want.shape and got.dtype == np.uint8
    # a CMYK JPEG too: converted as OpenCV converts it (Pillow's own conversion was a gray level off: 2 of 200 answers changed)
    assert int(np.abs(got.astype(int) - want).max()) == 0


def test_pillow_images_and_an_uploads_bytes_are_answered_as_the_files_are(onnx_bundle, photo_files):
    """``predict`` on Pillow images (one, or a list) and on a file's bytes answers as on the decoded file."""
    b = Bundle.open(onnx_bundle)
    files = [photo_files / n for n in MODES]
    want = b.predict([read_image(f) for f in files])
    for got in (b.predict([Image.open(f) for f in files]), b.predict([f.read_bytes() for f in files])):
        assert [p.label for p in got] == [p.label for p in want]
        assert np.allclose([p.confidence for p in got], [p.confidence for p in want], atol=0.02)
    one = b.predict(Image.open(files[0]))
    assert one.label == want[0].label and np.isfinite(one.confidence) and abs(one.confidence - want[0].confidence) < 1e-6
    assert np.array_equal(b.preprocess(Image.open(files[0])), b.preprocess(read_image(files[0])))


def test_a_path_is_refused_in_a_short_message_and_broken_bytes_are_named(onnx_bundle, photo_files):
    """A path (str or bytes) is not pixels; an upload's bytes were called "a path" in a 2.7 KB message."""
    b = Bundle.open(onnx_bundle)
    with pytest.raises(InputError, match="got a path") as e:
        b.predict(str(photo_files / "rgb.png") * 40)
    assert len(str(e.value)) < 500 and "a Pillow image, an image file's bytes" in str(e.value)
    with pytest.raises(InputError, match="got a path|so a path"):
        b.predict(os.fsencode(photo_files / "rgb.png"))
    data = (photo_files / "rgb.png").read_bytes()
    with pytest.raises(InputError, match=r"cannot decode the encoded image \(\d+ bytes\)") as e:
        b.predict(data[:8] + b"\x00" * 64)
    assert len(str(e.value)) < 500


def test_the_webcam_reads_a_photo_upright(photo_files):
    """``--video photo.jpg`` went through OpenCV's video reader, which ignores the EXIF orientation (``predict`` applies it):
    the phone photo was classified sideways."""
    from apps.sources import open_source

    f = photo_files / "exif6.jpg"
    cap, what = open_source(video=str(f))
    ok, frame = cap.read()
    assert ok and what == f"image {f}" and np.array_equal(frame, read_image(f))
    assert cap.read() == (False, None)
    gray_cap, _ = open_source(video=str(photo_files / "gray.png"))
    assert gray_cap.read()[1].shape == (40, 56, 3)  # BGR, as the app draws on it
    video = cv2.VideoCapture(str(f))
    ok, sideways = video.read()
    video.release()
    assert not ok or sideways.shape != frame.shape  # what it got before: the stored, sideways pixels


def test_a_folder_of_heic_photos_and_a_broken_link_are_said_with_the_way_out(onnx_bundle, photo_files, tmp_path, capsys):
    """A folder holding only files predict does not read was "holds no images" with nothing on what it held; a broken link
    named on the command line stopped the whole run; a HEIC photo or AppleDouble file named was "not an image"."""
    from dvt_runtime.predict import main

    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "IMG_0001.HEIC").write_bytes(heic)
    (tmp_path / "phone" / "notes.txt").write_text("x")
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "phone")]) == 2
    err = capsys.readouterr().err
    assert "it holds 2 other file(s): .heic: 1, .txt: 1" in err and "convert HEIC photos to JPEG" in err
    (tmp_path / "IMG_0002.heic").write_bytes(heic)
    (tmp_path / "._rgb.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(64))
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dead.jpg")
    (tmp_path / "x.jfif").write_bytes((photo_files / "exif6.jpg").read_bytes())
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "IMG_0002.heic"), str(tmp_path / "._rgb.jpg"), str(tmp_path / "dead.jpg"),
                 str(tmp_path / "x.jfif"), str(photo_files / "rgb.png")]) == 1  # some unreadable: answered, then exit 1
    out = capsys.readouterr().out  # the unreadable ones are listed under the table
    assert "x.jfif" in out and "rgb.png" in out
    assert "a HEIC/HEIF photo, which OpenCV does not decode: convert it to JPEG" in out
    assert "a macOS AppleDouble file" in out
    assert f"a broken link to {tmp_path / 'gone.jpg'}" in out
    (tmp_path / "phone" / "y.jfif").write_bytes((photo_files / "exif6.jpg").read_bytes())
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "phone")]) == 0  # a .jfif in a folder is read (Chrome's name for a JPEG)
    assert "y.jfif" in capsys.readouterr().out


def test_thumbnails_among_training_photos_are_warned_about(tmp_path):
    """A 1x1 px image in a class folder was trained on, upscaled 28x, with nothing said (predict marks it)."""
    from dvt_edge.imagefolder import load_imagefolder

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                cv2.imwrite(str(tmp_path / split / c / f"{i}.png"), np.full((28, 28), 40 * i, np.uint8))
    cv2.imwrite(str(tmp_path / "train" / "b" / "icon.png"), np.full((2, 3), 9, np.uint8))
    with pytest.warns(UserWarning, match=r"1 image\(s\) in .* upscaled 4x or more, e\.g\. .*icon\.png \(2 px\)"):
        load_imagefolder(str(tmp_path), "train", None)


def test_type_checkers_see_pillow_images_and_uploads_as_one_prediction():
    """The README's own ``bundle.predict(Image.open(...))`` and ``bundle.predict(request_body)`` failed mypy and pyright:
    the overloads knew arrays and lists of arrays only (a typed service's helper, mypy --strict and pyright strict)."""
    import typing

    from dvt_runtime.bundle import Encoded, ImageInput, PILImage, Prediction

    first, listed, _ = typing.get_overloads(Bundle.predict)
    hints = typing.get_type_hints(first)
    assert set(typing.get_args(hints["x"])) >= {PILImage, bytes, bytearray} and hints["return"] is Prediction
    assert typing.get_type_hints(listed)["x"] == typing.Sequence[ImageInput]
    assert typing.get_type_hints(Bundle.preprocess)["image"] == ImageInput and Encoded == typing.Union[bytes, bytearray]


def test_plots_under_a_home_that_cannot_be_written_say_nothing(tmp_path):
    """A CI job with a read-only home: matplotlib printed several lines asking for MPLCONFIGDIR on every train/evaluate/bench."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME="/proc/self", PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "runtime"), str(Path(__file__).parents[1])]))
    code = "from dvt_edge.logs import pyplot; plt = pyplot(); fig = plt.figure(); print('drawn')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "drawn" and "MPLCONFIGDIR" not in r.stderr and "mkdir" not in r.stderr, r.stderr
