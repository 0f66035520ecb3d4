"""Datasets by spec, preprocessing, and data export."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from dvt_edge import cifar10 as C10
from dvt_edge import data as D
from dvt_edge import fashion_mnist as FM
from dvt_edge.data import DataError, export_npz, load_dataset
from dvt_runtime import preprocess as P
from dvt_runtime.preprocess import Preprocess


@pytest.fixture(scope="module")
def fmnist_test():
    return load_dataset("fashion-mnist", "test")


def test_fashion_mnist_splits(fmnist_test):
    train = load_dataset("fashion-mnist", "train")
    assert len(train) == 60000 and len(fmnist_test) == 10000
    assert fmnist_test.classes[0] == "T-shirt/top" and fmnist_test.num_classes == 10
    assert np.bincount(fmnist_test.labels).tolist() == [1000] * 10
    x, y = fmnist_test.arrays(8)
    assert x.shape == (8, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    # normalisation with the dataset's own statistics
    big, _ = train.arrays(5000, seed=0)
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1) < 0.05


def test_missing_fashion_mnist_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("DVT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DVT_OFFLINE", "1")
    monkeypatch.setattr(FM, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    FM._FMNIST_CACHE.clear()
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", "train")
    msg = str(e.value)
    for where in (tmp_path / "data", tmp_path / "debian", tmp_path / "cache"):
        assert str(where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_corrupted_fashion_mnist_fails_checksum(monkeypatch, tmp_path, fmnist_test):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    import gzip
    import shutil

    for name in D.FASHION_MNIST_FILES:
        shutil.copy(D.DEBIAN_FASHION_MNIST / name, d / name)
    raw = gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    monkeypatch.setenv("DVT_DATA", str(tmp_path))
    FM._FMNIST_CACHE.clear()
    with pytest.raises(DataError, match="checksum"):
        load_dataset("fashion-mnist", "test")
    FM._FMNIST_CACHE.clear()


def test_unknown_spec_and_split():
    with pytest.raises(DataError, match="valid"):
        load_dataset("mnist-fashion")
    with pytest.raises(DataError, match="valid"):
        load_dataset("fashion-mnist", "holdout")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("imagefolder:")


def _make_folder(root, images, labels, classes, ext=".png"):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (im, y) in enumerate(zip(images, labels)):
            cv2.imwrite(str(root / split / classes[y] / f"{i}{ext}"), im)


def test_hidden_files_in_class_folders_are_no_ones_images(tmp_path, fmnist_test):
    """macOS's ._photo.jpg (AppleDouble, beside every photo copied to exFAT or FAT) was counted as an unreadable photo, a
    hidden .png trained on and a .ipynb_checkpoints folder warned as nested; predict skips hidden files: so does training."""
    import warnings

    classes = ["bag", "boot"]
    _make_folder(tmp_path, [fmnist_test.raw(i) for i in range(4)], [0, 1, 0, 1], classes)
    (tmp_path / "train" / "bag" / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    cv2.imwrite(str(tmp_path / "train" / "boot" / ".hidden.png"), fmnist_test.raw(5))
    (tmp_path / "train" / "boot" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".thumbnails").mkdir()
    cv2.imwrite(str(tmp_path / "train" / ".thumbnails" / "t.png"), fmnist_test.raw(6))  # a hidden folder is no class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert ds.classes == classes and len(ds) == 4 and not ds.skipped


def test_a_resume_refused_over_hidden_files_says_they_stopped_counting(tmp_path, fmnist_test):
    """A folder with ._photo.jpg files, listed as images before: its holdout moved, and the refusal blamed the folder."""
    _make_folder(tmp_path, [fmnist_test.raw(i) for i in range(4)], [0, 1, 0, 1], ["bag", "boot"])
    (tmp_path / "train" / "bag" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    now = D.holdout_of(f"imagefolder:{tmp_path}")
    then = {**(now or {}), "sha256": "0" * 64}
    with pytest.raises(D.DataError, match=r"holds 1 hidden file\(s\) named like images \(e\.g\. \._0\.png\), which are no longer"):
        D.check_resumed_holdout(f"imagefolder:{tmp_path}", now, {"holdout": then})


def test_imagefolder_reads_generated_folder(tmp_path, fmnist_test):
    classes = ["bag", "boot", "shirt"]
    imgs = [fmnist_test.raw(i) for i in range(12)]
    labels = [i % 3 for i in range(12)]
    _make_folder(tmp_path, imgs, labels, classes)
    (tmp_path / "val" / "bag" / "broken.jpg").write_bytes(b"not a jpeg")
    ds_train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert ds_train.classes == classes and len(ds_train) == 12
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) .*\(1 unreadable; left out\).*broken\.jpg"):
        ds_val = load_dataset(f"imagefolder:{tmp_path}", "val", preprocess=fmnist_test.preprocess)
    assert len(ds_val) == 12 and ds_val.skipped[0].endswith("broken.jpg")
    # PNG round trip is lossless: the same network input as the in-memory image
    k = next(i for i in range(len(ds_val)) if ds_val.files[i].endswith("/0.png"))
    np.testing.assert_array_equal(ds_val.input(k), fmnist_test.preprocess.apply(imgs[0]))


def test_imagefolder_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "a" / "x.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"no readable image.*\['b'\]"):
        load_dataset(f"imagefolder:{tmp_path}", "train")
    cv2.imwrite(str(tmp_path / "train" / "b" / "y.png"), np.ones((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"no val/ folder and too few images \(2\) to hold out 10% for validation with one image of each of "
                                        r"its 2 classes: 15 or more are needed, or a val/ folder"):  # it said only "too few"
        load_dataset(f"imagefolder:{tmp_path}", "val")
    # the class folders themselves given (a split folder, or no split folders made): the error says what to give
    with pytest.raises(DataError, match=rf"no val/ folder in {tmp_path / 'train'}.*class folders \['a', 'b'\].*imagefolder:{tmp_path}$"):
        load_dataset(f"imagefolder:{tmp_path / 'train'}", "val")
    with pytest.raises(DataError, match=rf"no train/ folder in {tmp_path / 'train'}.*give its parent"):
        load_dataset(f"imagefolder:{tmp_path / 'train'}", "train")
    shutil.copytree(tmp_path / "train", tmp_path / "flat")
    with pytest.raises(DataError, match=rf"holds class folders \(\['a', 'b'\]\) directly: move them into {tmp_path / 'flat' / 'train'}/"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}", "train")


def test_imagefolder_warns_when_unbalanced(tmp_path):
    for c, n in (("a", 22), ("b", 2)):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "train" / c / f"{i}.png"), np.full((8, 8), i, np.uint8))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset(f"imagefolder:{tmp_path}", "train")
    assert any("unbalanced" in str(x.message) for x in w)


def test_imagefolder_says_class_folders_named_alike_or_with_spaces_around(tmp_path):
    """A folder `ship ` (a trailing space, from a script) beside `ship` trained as two classes, unsaid."""
    for c in ("ship", "ship ", "truck"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(12):
            cv2.imwrite(str(tmp_path / "train" / c / f"{i}.png"), np.full((8, 8), i, np.uint8))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    said = [str(x.message) for x in w if "class folders of" in str(x.message)]
    assert ds.classes == ["ship", "ship ", "truck"] and len(said) == 1, (ds.classes, said)
    assert "['ship '] begin or end with a space" in said[0] and "[['ship', 'ship ']] differ only in case" in said[0], said
    for c in ("ship", "ship ", "truck"):  # a val/ folder alike: said for train/'s names only, not again for val/'s
        shutil.copytree(tmp_path / "train" / c, tmp_path / "val" / c)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset(f"imagefolder:{tmp_path}", "val")
    assert not [x for x in w if "class folders of" in str(x.message)]
    shutil.rmtree(tmp_path / "val")
    shutil.rmtree(tmp_path / "train" / "ship ")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset(f"imagefolder:{tmp_path}", "train")
    assert not [x for x in w if "class folders of" in str(x.message)]


def test_npz_uint8_and_errors(tmp_path, fmnist_test):
    imgs = np.stack([fmnist_test.raw(i) for i in range(10)])
    np.savez(tmp_path / "a.npz", images=imgs, labels=fmnist_test.labels[:10], classes=np.array(fmnist_test.classes))
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}", "val")
    np.testing.assert_array_equal(ds.arrays()[0], fmnist_test.subset(np.arange(10)).arrays()[0])
    np.savez(tmp_path / "b.npz", images=imgs, labels=np.full(10, 12), classes=np.array(fmnist_test.classes))
    with pytest.raises(DataError, match="out of range"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}")
    np.savez(tmp_path / "c.npz", pixels=imgs)
    with pytest.raises(DataError, match="no 'images'"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}, f)
    ds = load_dataset(f"cifar10:{tmp_path}", "train")
    assert len(ds) == 20 and ds.classes[9] == "truck"
    assert ds.arrays(2)[0].shape == (2, 3, 32, 32)
    # a batch file that smuggles in a callable is refused
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, f)
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        load_dataset(f"cifar10:{tmp_path}", "val")


def test_data_export_for_a_checkpoint_says_a_size_only_arrays_have(micro_ckpt, tmp_path, capsys):
    """An image folder's photos are each resized: its default preprocessing (224 px for photos over 64 px) was said as the
    folder's size ("imagefolder:data is 3-channel 224 px") for the checkpoint's own training folder; arrays of another
    size and colour are still said."""
    from dvt_edge.data import main
    from dvt_edge.fashion_mnist import FASHION_MNIST_CLASSES

    rng = np.random.default_rng(0)
    classes = FASHION_MNIST_CLASSES[:2]
    _make_folder(tmp_path / "photos", [rng.integers(0, 256, (120, 100, 3), dtype=np.uint8) for _ in range(8)], [0, 1] * 4, classes)
    out = tmp_path / "f.npz"
    assert main(["export", "--data", f"imagefolder:{tmp_path / 'photos'}", "--split", "val", "--checkpoint", str(micro_ckpt),
                 "--out", str(out)]) == 0
    assert "px input;" not in capsys.readouterr().err and np.load(out)["images"].shape[1:] == (1, 28, 28)
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), labels=np.arange(8) % 2,
             classes=np.array(classes))
    assert main(["export", "--data", f"npz:{tmp_path / 'rgb.npz'}", "--split", "val", "--checkpoint", str(micro_ckpt),
                 "--out", str(tmp_path / "r.npz")]) == 0
    assert "takes 1-channel 28 px input; npz:" in capsys.readouterr().err


def test_data_export_refuses_an_unwritable_out_before_reading(tmp_path, monkeypatch, capsys):
    """A read-only --out failed after the whole set was read and preprocessed (a CI engineer's mount)."""
    from dvt_edge.data import main

    monkeypatch.setattr(D, "unwritable", lambda folder: "read-only file system" if Path(folder) == tmp_path else "")
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: pytest.fail("read before checking --out"))
    assert main(["export", "--data", "fashion-mnist", "--out", str(tmp_path / "v.npz")]) == 2
    assert f"--out {tmp_path / 'v.npz'}: cannot write in {tmp_path} (read-only file system)" in capsys.readouterr().err


def test_data_export_round_trip(tmp_path, fmnist_test, capsys):
    from dvt_edge.data import main

    out = tmp_path / "val.npz"
    assert main(["export", "--data", "fashion-mnist", "--split", "val", "--n", "64", "--seed", "3", "--out", str(out)]) == 0
    z = np.load(out, allow_pickle=False)  # a device reads it with numpy alone
    x, y = fmnist_test.arrays(64, seed=3)
    np.testing.assert_array_equal(z["images"], x)
    np.testing.assert_array_equal(z["labels"], y)
    back = load_dataset(f"npz:{out}", "val")
    assert back.preprocessed and back.preprocess == fmnist_test.preprocess and back.classes == fmnist_test.classes
    np.testing.assert_array_equal(back.arrays()[0], x)
    assert main(["info", "--data", f"npz:{out}"]) == 0  # a file of one split: the other is said, not an error
    printed = capsys.readouterr().out
    assert f"npz:{out} [train]: none (npz: {out} holds only the 'val' split" in printed and "[val]: 64 images" in printed
    assert f"10 classes ({back.classes[0]}: " in printed  # named with their counts: a rare class is seen by its name
    # export_npz is atomic: no temp files
    export_npz(fmnist_test, tmp_path / "again.npz", n=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.npz", "val.npz"]
    # an existing file is replaced only with --force; a folder or a file in the way is one error line
    before = out.read_bytes()
    assert main(["export", "--data", "fashion-mnist", "--n", "8", "--out", str(out)]) == 2 and out.read_bytes() == before
    assert main(["export", "--data", "fashion-mnist", "--n", "8", "--out", str(out), "--force"]) == 0 and out.read_bytes() != before
    assert main(["export", "--data", "fashion-mnist", "--n", "8", "--out", str(tmp_path)]) == 2
    assert main(["export", "--data", "fashion-mnist", "--n", "8", "--out", str(out / "x.npz")]) == 2


@pytest.mark.parametrize("shape,pre", [
    ((28, 28), Preprocess()),
    ((56, 56), Preprocess()),  # integer downscale: area = box filter, exact in numpy too
    ((60, 40, 3), Preprocess(size=20, resize=20, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3)),
    ((20, 20), Preprocess()),  # enlarging: OpenCV's area weights (bilinear was 38 gray levels off)
    ((14, 14), Preprocess()),
    ((9, 13, 3), Preprocess(size=32, resize=32, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3)),
    # cubic (the published 224 px models'): it was bilinear without OpenCV, 62 gray levels off on a camera frame
    ((480, 640, 3), Preprocess(size=224, resize=256, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="cubic")),
    ((20, 20), Preprocess(size=32, resize=32, interpolation="cubic")),
])
def test_numpy_fallback_matches_opencv(monkeypatch, shape, pre):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with_cv = pre.apply(img)
    monkeypatch.setattr(P, "_CV2", None)
    monkeypatch.setattr(P, "_CV2_TRIED", True)
    without = pre.apply(img)
    assert with_cv.shape == without.shape == pre.input_shape
    # identical without a resize; otherwise at most one gray level apart (rounding of the average)
    tol = 0 if shape[:2] == (pre.size, pre.size) else 1.0 / 255 / min(pre.std)
    assert np.abs(with_cv - without).max() <= tol + 1e-6


@pytest.mark.parametrize("h,w", [(480, 640), (1080, 1920), (448, 600), (600, 448), (375, 500), (333, 500), (257, 300), (256, 256)])
def test_resize_and_crop_geometry_is_torchvisions(h, w):
    """The published models were evaluated with torchvision's Resize(256) (longer side truncated) and
    CenterCrop(224) (offsets rounded); the same arithmetic, written out, picks the same pixels."""
    pre = Preprocess(size=224, resize=256, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="cubic")
    short, long = min(h, w), max(h, w)
    new_long = int(256 * long / short)  # torchvision.transforms.functional._compute_resized_output_size
    nh, nw = (256, new_long) if h <= w else (new_long, 256)
    top, left = int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0))  # torchvision's center_crop
    assert pre._geometry(h, w) == (nh, nw, top, left)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)[top:top + 224, left:left + 224, ::-1]
    np.testing.assert_allclose(pre.apply(img), (ref.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 300_000, 3), (300_000, 1)])
def test_a_thin_image_is_preprocessed_in_little_memory(shape):
    """A 1 x 1,000,000 image took 26 s and 5.1 GB: the whole image was resized (to 32 x 32,000,000) before the centre crop.
    Beyond MAX_ASPECT only the middle of the longer side is resized, at the same scale."""
    import tracemalloc

    pre = Preprocess(size=32, resize=32, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="area")
    img = np.full(shape, 200, np.uint8)
    img[(slice(None), slice(shape[1] // 2 - 5, shape[1] // 2 + 5)) if shape[1] > 1 else slice(shape[0] // 2 - 5, shape[0] // 2 + 5)] = 0
    tracemalloc.start()
    try:
        x = pre.apply(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (3, 32, 32) and peak < 20e6, peak
    assert x.min() < (200 / 255 - 0.5) / 0.25 - 0.1  # the dark middle is in the crop
    # cut evenly from both ends (an odd cut had moved the crop half a source pixel: up to 3.4 apart on a 13 x 1001 image)
    img = np.random.default_rng(0).integers(0, 256, (13, 1001, 3), dtype=np.uint8)
    cut = pre.apply(img)
    P.MAX_ASPECT, limit = 10**9, P.MAX_ASPECT
    try:
        whole = pre.apply(img)
    finally:
        P.MAX_ASPECT = limit
    assert np.abs(cut - whole).max() <= 1 / 255 / 0.25 + 1e-6  # a gray level at most


@pytest.mark.parametrize("interp", ["area", "linear", "cubic", "nearest"])
@pytest.mark.parametrize("channels", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("c", [0, 1, 3, 4])
def test_channels_of_any_frame_are_the_written_out_conversion(channels, c, interp):
    """Gray, BGR and BGRA frames become the model's channels as written out here (convert the whole frame, then
    resize): reordering after the resize, as ``apply`` does to spare a copy of the frame, changes no pixel."""
    img = np.random.default_rng(c).integers(0, 256, (48, 60) if c == 0 else (48, 60, c), dtype=np.uint8)
    n = 1 if channels == "gray" else 3
    pre = Preprocess(size=16, resize=20, channels=channels, mean=(0.5,) * n, std=(0.25,) * n, interpolation=interp)
    bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if c in (0, 1) else img[:, :, :3].copy()
    full = {"rgb": bgr[:, :, ::-1].copy(), "bgr": bgr, "gray": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)}[channels]
    if c in (0, 1) and channels == "gray":
        full = img.reshape(48, 60)
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}[interp]
    ref = cv2.resize(full, (25, 20), interpolation=flag).reshape(20, 25, n)[2:18, 4:20]
    np.testing.assert_allclose(pre.apply(img), (ref.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, rtol=0, atol=1e-5)  # a gray level: 0.016


def _pillow_h_then_v(Image, img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """Pillow's BICUBIC resize as Pillow up to 12 runs it (the published evaluation's): the horizontal pass, then the
    vertical one (Pillow 13 runs the vertical pass first for an image shrinking about twice as much in height)."""
    im = Image.fromarray(np.ascontiguousarray(img))
    return np.asarray(im.resize((nw, im.height), Image.BICUBIC).resize((nw, nh), Image.BICUBIC))


def test_pil_bicubic_crops_of_any_geometry_are_pillows_pixels():
    """Only the crop's rows and columns are read (a 1080p frame's horizontal pass copied its whole width: 15.4 ms, now
    11.7): any crop of any resize is still Pillow's, bit for bit (its horizontal pass, then its vertical one)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w, nh, nw = (int(v) for v in rng.integers(3, 400, 4))
        ch, cw = int(rng.integers(1, nh + 1)), int(rng.integers(1, nw + 1))
        top, left = int(rng.integers(0, nh - ch + 1)), int(rng.integers(0, nw - cw + 1))
        img = rng.integers(0, 256, (h, w, 3), np.uint8)
        np.testing.assert_array_equal(P._pil_resize_crop(img, nh, nw, top, left, ch, cw),
                                      _pillow_h_then_v(Image, img, nh, nw)[top : top + ch, left : left + cw], err_msg=str((h, w, nh, nw)))


@pytest.mark.parametrize("h,w", [(480, 640), (375, 500), (1080, 1920), (100, 100), (300, 257), (224, 224), (600, 256), (12, 700),
                                 (606, 300), (2172, 1080)])
def test_pil_bicubic_is_pillows_resize_bit_for_bit(h, w):
    """The published models were evaluated after PIL's BICUBIC resize, which smooths when it shrinks; OpenCV's INTER_CUBIC
    does not (mean |difference| 0.17 to 0.27 in normalised units on camera-sized frames): 'pil-bicubic' is Pillow's own
    arithmetic, with or without OpenCV, computing only the crop's pixels (in Pillow 12's pass order: tall images too)."""
    Image = pytest.importorskip("PIL.Image")
    from dvt_edge.models import PREPROCESS_PRESETS

    pre = Preprocess(**PREPROCESS_PRESETS["imagenet"])
    assert pre.interpolation == "pil-bicubic"
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    nh, nw, top, left = pre._geometry(h, w)
    ref = _pillow_h_then_v(Image, img[:, :, ::-1], nh, nw)
    x = pre.apply(img) * np.asarray(pre.std, np.float32)[:, None, None] + np.asarray(pre.mean, np.float32)[:, None, None]
    np.testing.assert_array_equal(np.rint(x * 255).astype(int), ref[top : top + 224, left : left + 224].transpose(2, 0, 1))
    np.testing.assert_array_equal(P._resize(img, nh, nw, "pil-bicubic"), _pillow_h_then_v(Image, img, nh, nw))
    if h < 2 * w:  # one call of Pillow 13 too, where it keeps that order
        np.testing.assert_array_equal(P._resize(img, nh, nw, "pil-bicubic"), np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC)))


def test_preprocess_validation_and_round_trip():
    p = Preprocess(size=224, resize=256, channels="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="cubic")
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="valid"):
        Preprocess(channels="yuv")
    with pytest.raises(ValueError, match="mean/std"):
        Preprocess(channels="rgb")
    with pytest.raises(ValueError, match="uint8"):
        Preprocess().apply(np.zeros((28, 28), np.float32))
    d = p.to_dict()
    with pytest.raises(ValueError, match="invert must be true or false"):  # a string "false" inverted every image
        Preprocess.from_dict({**d, "invert": "false"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bogus'\]; valid"):
        Preprocess.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['size'\]"):  # not the Fashion-MNIST default
        Preprocess.from_dict({k: v for k, v in d.items() if k != "size"})
    assert Preprocess.from_dict({k: v for k, v in d.items() if k not in ("invert", "layout")}) == p  # older files


# ----------------------------------------------------------------------------- subsets, holdout, CIFAR-10


def test_stratified_subset_covers_every_class_in_random_order():
    labels = np.repeat(np.arange(10), [500] * 9 + [50])  # class-sorted, like an image folder; class 9 is small
    idx = D.stratified_subset(labels, 1000, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 1000
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [110] * 8 + [109, 11], counts  # 1000 * share (109.9, 10.99), leftovers to the largest remainders
    assert not (np.diff(idx) > 0).all(), "the subset must come in random order (halves and prefixes are random samples)"
    np.testing.assert_array_equal(idx, D.stratified_subset(labels, 1000, seed=0))
    assert set(idx.tolist()) != set(D.stratified_subset(labels, 1000, seed=1).tolist())
    for bad in (0, -5, 2.5, True):
        with pytest.raises(DataError, match="positive whole number"):
            D.stratified_subset(labels, bad, seed=0)


def _class_sorted_folder(root, n_per_class=20, classes=("a", "b", "c", "d"), val=False):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        for split in ("train", "val") if val else ("train",):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                img = np.clip(rng.normal(40 * ci + 30, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / split / c / f"{i:04d}.png"), img)


def test_train_limit_takes_a_stratified_random_subset(tmp_path):
    """--train-limit / --val-limit on class-sorted folders: every class, not the first one's files."""
    from dvt_edge.train import build_parser, train

    _class_sorted_folder(tmp_path, val=True)
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    sub = ds.limit(8, seed=0)
    assert np.bincount(sub.labels, minlength=4).tolist() == [2, 2, 2, 2]
    assert sub.files == [ds.files[i] for i in D.stratified_subset(ds.labels, 8, seed=0)]
    x, y = ds.arrays(8, seed=3)  # every other subset option is stratified too
    assert np.bincount(y, minlength=4).tolist() == [2, 2, 2, 2]
    out = tmp_path / "run"
    r = train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path}", "--epochs", "1",
                                         "--train-limit", "8", "--val-limit", "4", "--batch-size", "4", "--threads", "1",
                                         "--quiet", "--out", str(out)]))
    acc = r["history"][0]["val_acc"]
    assert all(a in (0.0, 25.0, 50.0, 75.0, 100.0) for a in acc)  # 4 validation images, one per class


def test_a_limited_image_folder_decodes_only_its_subset(tmp_path, monkeypatch):
    """``limit`` on an image folder: the subset ``ImageSet.limit`` takes, in its order, chosen from the file listing
    (``--train-limit 1000`` decoded all 50,000 CIFAR JPEGs first); an unreadable file outside it goes unnoticed,
    one inside it is left out and said."""
    import dvt_edge.imagefolder as F

    read = F._try_read
    _class_sorted_folder(tmp_path, n_per_class=30)  # no val/: the holdout is drawn from train/'s listing
    spec = f"imagefolder:{tmp_path}"
    full = {split: load_dataset(spec, split) for split in ("train", "val")}
    decoded = []
    monkeypatch.setattr(F, "_try_read", lambda p: decoded.append(p) or read(p))
    monkeypatch.setattr(F, "_LISTINGS", {})
    monkeypatch.setattr(F, "_DECODED", {})
    for split, n, seed in (("train", 9, 3), ("val", 5, 0), ("train", 500, 1)):
        decoded.clear()
        sub, want = load_dataset(spec, split, full[split].preprocess, limit=n, seed=seed), full[split].limit(n, seed)
        assert sub.files == want.files and np.array_equal(sub.labels, want.labels) and np.array_equal(sub.images, want.images)
        assert len(decoded) == len(want) and sub.whole == len(full[split])
    # without a preprocessing to apply, a subset's default also looks at a fixed sample of the split: a color image
    # among gray ones makes the set color, whether or not the subset drew it
    gray = tmp_path / "gray"
    for c in "ab":
        (gray / "train" / c).mkdir(parents=True)
        for i in range(20):
            cv2.imwrite(str(gray / "train" / c / f"{i:02d}.png"), np.full((8, 8), 9 * i, np.uint8))
    cv2.imwrite(str(gray / "train" / "b" / "19.png"), np.full((8, 8, 3), (0, 0, 200), np.uint8))
    whole = load_dataset(f"imagefolder:{gray}", "train")
    assert whole.preprocess.channels == "rgb"
    subsets = [load_dataset(f"imagefolder:{gray}", "train", limit=2, seed=s) for s in range(6)]
    assert any(str(gray / "train" / "b" / "19.png") not in d.files for d in subsets)  # some drew only gray images
    assert all(d.preprocess == whole.preprocess for d in subsets)
    assert np.bincount(load_dataset(spec, "train", limit=8).labels).tolist() == [2, 2, 2, 2]
    from dvt_edge.export import _load_data

    pre = D.default_preprocess(3, 8)
    monkeypatch.setattr(F, "_DECODED", {})
    decoded.clear()
    got = _load_data(spec, pre, 6, 5, True, 4, None)  # an int8 export's calibration and verification images
    assert len(decoded) == 6 + 5 and "6 calibration images" in got.note and "5 verification images" in got.note
    want_x, _ = load_dataset(spec, "train", preprocess=pre).arrays(6, seed=0)
    want_vx, want_vy = load_dataset(spec, "val", preprocess=pre).arrays(5, seed=1)
    assert np.array_equal(np.stack(got.calib), want_x) and np.array_equal(got.verify_x, want_vx) and np.array_equal(got.verify_y, want_vy)
    bad = tmp_path / full["train"].files[0]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    picks = [load_dataset(spec, "train", limit=8, seed=s) for s in range(40)]
    assert any(str(bad) not in p.files and len(p) == 8 and not p.skipped for p in picks)
    hit = next(p for p in picks if str(bad) in p.skipped)
    assert len(hit) == 7 and hit.whole == len(full["train"])
    with pytest.raises(DataError, match=r"none of the chosen images of class\(es\) \['a'\] in .* can be read"):
        [load_dataset(spec, "train", limit=4, seed=s) for s in range(40)]  # a class's only pick unreadable: no class left
    # the holdout's val side needs no image of every class (3 of a 3-image class go nowhere): not warned
    (tmp_path / "small" / "train").mkdir(parents=True)
    shutil.copytree(tmp_path / "train" / "b", tmp_path / "small" / "train" / "b")
    (tmp_path / "small" / "train" / "c").mkdir()
    for f in sorted((tmp_path / "train" / "c").iterdir())[:3]:
        shutil.copy(f, tmp_path / "small" / "train" / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(load_dataset(f"imagefolder:{tmp_path / 'small'}", "val").labels.tolist()) == {0}


def test_quiet_training_prints_no_progress_bar_at_all(tmp_path, capsys):
    """``train --quiet``: no bar from decoding a large folder or preprocessing either, only the log
    lines; the switch is scoped to the run."""
    from dvt_edge.train import build_parser, train
    from dvt_runtime.console import progress, silenced_progress

    _class_sorted_folder(tmp_path, n_per_class=520)  # over 2,000 files: decoding shows a bar unless quiet
    train(build_parser().parse_args(["--model", "dvt_micro_fmnist", "--data", f"imagefolder:{tmp_path}", "--epochs", "1",
                                     "--train-limit", "8", "--val-limit", "4", "--batch-size", "4", "--threads", "1",
                                     "--quiet", "--out", str(tmp_path / "run")]))
    out = capsys.readouterr()
    assert "epoch 1/1" in out.out, out.out[-2000:]
    assert "decode" not in out.err and "img/s" not in out.err and "%|" not in out.err, out.err[-2000:]
    items = [1, 2]
    with silenced_progress():
        with silenced_progress(False):  # an inner block does not turn bars back on
            assert progress(items) is items
    bar = progress(items)
    assert bar is not items  # on again after the block
    bar.close()


def test_quiet_silences_the_download_bar_too(tmp_path, http_server, capsys, monkeypatch):
    """A download's byte-counting bar (its own tqdm) follows ``silenced_progress`` like ``progress`` does."""
    import hashlib

    from dvt_edge.downloads import download
    from dvt_runtime import console
    from dvt_runtime.console import silenced_progress

    monkeypatch.setattr(console, "LOG_BAR_SECONDS", 0.0)  # stderr is not a terminal here: a log's bar, from the start
    www, base = http_server
    blob = bytes(range(256)) * (6 << 10)  # 1.5 MiB: over the size that shows a bar
    (www / "big.bin").write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    with silenced_progress():
        download(f"{base}/big.bin", tmp_path / "quiet.bin", md5)
    err = capsys.readouterr().err
    assert "downloading" in err and "%|" not in err and "B/s" not in err, err
    download(f"{base}/big.bin", tmp_path / "loud.bin", md5)
    assert "B/s" in capsys.readouterr().err  # the bar itself, outside the block
    assert (tmp_path / "quiet.bin").read_bytes() == blob


def test_folder_without_val_holds_out_a_stratified_tenth(tmp_path):
    _class_sorted_folder(tmp_path, n_per_class=30)
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    val = load_dataset(f"imagefolder:{tmp_path}", "val")
    assert len(train) == 108 and len(val) == 12
    assert np.bincount(val.labels).tolist() == [3, 3, 3, 3]
    assert not set(train.files) & set(val.files), "a held-out image must never be trained on"
    again = load_dataset(f"imagefolder:{tmp_path}", "val")
    assert again.files == val.files  # seeded: the same holdout every time
    # decoded once into memory (compute-bound training), pixel-identical to the files
    assert isinstance(val.images, np.ndarray) and val.images.shape == (12, 8, 8, 3)
    np.testing.assert_array_equal(val.images[0], cv2.imread(val.files[0], cv2.IMREAD_UNCHANGED))


def test_truncated_jpeg_and_nested_folders_are_reported(tmp_path):
    _class_sorted_folder(tmp_path, n_per_class=10, val=True)
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    (tmp_path / "val" / "a" / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    (tmp_path / "val" / "b" / "more").mkdir()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{tmp_path}", "val")
    msgs = " | ".join(str(x.message) for x in w)
    assert "truncated" in msgs and "cut.jpg" in msgs and "nested" in msgs and "more" in msgs, msgs
    assert len(ds) == 40 and not any(f.endswith("cut.jpg") for f in ds.files)


def test_jpeg_pack_round_trip_and_split_guard(tmp_path):
    _class_sorted_folder(tmp_path / "f", n_per_class=10, val=True)
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", "val")
    D.write_jpeg_pack(ds, tmp_path / "p.npz", split="val")
    z = load_dataset(f"npz:{tmp_path / 'p.npz'}", "val")
    np.testing.assert_array_equal(z.images, ds.images)
    np.testing.assert_array_equal(z.labels, ds.labels)
    assert z.classes == ds.classes
    with pytest.raises(DataError, match="holds only the 'val' split"):
        load_dataset(f"npz:{tmp_path / 'p.npz'}", "train")


def test_shipped_cifar10_reference_data():
    """cifar10-ref: the reference's 5,000 held-out images and 1,000 training images travel with the package."""
    val, train = load_dataset("cifar10-ref", "val"), load_dataset("cifar10-ref", "train")
    assert len(val) == 5000 and len(train) == 1000
    assert np.bincount(val.labels).tolist() == [500] * 10 and np.bincount(train.labels).tolist() == [100] * 10
    assert val.classes == D.CIFAR10_CLASSES and val.images.shape == (5000, 32, 32, 3)
    names = lambda p: set(np.load(p)["names"].tolist())
    assert not names(D.CIFAR10_REF["val"]) & names(D.CIFAR10_REF["train"])


def _tiny_cifar_tarball(path) -> str:
    """A CIFAR-10-shaped python tarball (2 images per batch); returns its md5."""
    import hashlib
    import io
    import tarfile

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [3, 7]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def http_server(tmp_path):
    """A file server on 127.0.0.1 (loopback only) serving tmp_path/www; yields its base URL."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_cifar10_downloads_verifies_and_extracts(monkeypatch, tmp_path, http_server):
    www, base = http_server
    md5 = _tiny_cifar_tarball(www / "cifar-10-python.tar.gz")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DVT_DATA", raising=False)
    monkeypatch.delenv("DVT_OFFLINE", raising=False)
    monkeypatch.setattr(C10, "CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    # a wrong checksum is refused and nothing is kept
    monkeypatch.setattr(C10, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", "train")
    assert not (tmp_path / "cache" / "dvt-edge" / "cifar10" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setattr(C10, "CIFAR10_MD5", md5)
    train = load_dataset("cifar10", "train")
    test = load_dataset("cifar10", "val")
    assert len(train) == 10 and len(test) == 2 and train.labels.tolist()[:2] == [3, 7]
    assert (tmp_path / "cache" / "dvt-edge" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    (www / "cifar-10-python.tar.gz").unlink()  # found in the cache now: no second download
    assert len(load_dataset("cifar10", "train")) == 10


def test_no_home_folder_or_an_unwritable_cache_is_said_before_any_download(monkeypatch, tmp_path, http_server):
    """HOME unset and no passwd entry (``env -i``, a container): Path.home() raised RuntimeError from every command that
    looked for Fashion-MNIST, though Debian's copy needs no cache. A cache folder that cannot be written was found only
    after the whole download (170 MB for CIFAR-10), blamed on the download."""
    import dvt_edge.downloads as DL

    www, base = http_server
    _tiny_cifar_tarball(www / "cifar-10-python.tar.gz")
    monkeypatch.setattr(C10, "CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.delenv("DVT_DATA", raising=False)
    monkeypatch.delenv("DVT_OFFLINE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(DL.Path, "home", staticmethod(no_home))
    assert DL.cache_candidates("x") == [] and C10.cifar10_dirs() == []
    with pytest.raises(DataError, match="no cache folder: HOME is not set.*set XDG_CACHE_HOME"):
        load_dataset("cifar10", "train")
    with pytest.raises(DataError, match=r"(?s)JPEG copy.*Looked nowhere: DVT_DATA is not set.*\"\$\{DVT_DATA:\?set DVT_DATA first\}/cifar10-jpeg\""):
        load_dataset("cifar10-jpeg", "train")
    fetched = []
    monkeypatch.setattr(DL.urllib.request, "urlopen", lambda *a, **k: fetched.append(a) or pytest.fail("fetched"))
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "afile" / "cache"))  # a folder that cannot be made (for root too)
    with pytest.raises(DataError, match=r"cannot be written \(.*\), so http.* was not downloaded: set XDG_CACHE_HOME"):
        load_dataset("cifar10", "train")
    monkeypatch.setattr(FM, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")  # Fashion-MNIST made its folder first: "download failed"
    with pytest.raises(DataError, match=r"cannot be written \(.*\), so http.* was not downloaded: set XDG_CACHE_HOME"):
        load_dataset("fashion-mnist", "train")
    assert not fetched


def test_cifar10_offline_and_missing_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("DVT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DVT_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train")
    msg = str(e.value)
    assert str(tmp_path / "data" / "cifar10") in msg and str(tmp_path / "cache" / "dvt-edge" / "cifar10") in msg
    assert C10.CIFAR10_URL in msg and C10.CIFAR10_MD5 in msg
    with pytest.raises(DataError, match="JPEG copy"):
        load_dataset("cifar10-jpeg", "train")


def test_val_class_folders_that_differ_from_train_are_an_error(tmp_path):
    """train/ has a, b, c, d; val/ names one of them otherwise ("B") and adds "e": refused, listing both sides
    (before: val used train's class list and its images under B and e were dropped with at most a warning)."""
    _class_sorted_folder(tmp_path, n_per_class=3, val=True)
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "B")
    (tmp_path / "val" / "e").mkdir()
    with pytest.raises(DataError, match=r"only in val/: \['B', 'e'\], only in train/: \['b'\]"):
        load_dataset(f"imagefolder:{tmp_path}", "val")
    assert len(load_dataset(f"imagefolder:{tmp_path}", "train")) == 12  # train alone is fine
    shutil.rmtree(tmp_path / "val" / "e")
    (tmp_path / "val" / "B").rename(tmp_path / "val" / ".ipynb_checkpoints")  # hidden: not a class; b now missing
    with pytest.warns(UserWarning, match=r"no images for class\(es\) \['b'\]"):  # a missing val class: warned, as before
        assert len(load_dataset(f"imagefolder:{tmp_path}", "val")) == 9


def test_cifar10_jpeg_never_trains_on_the_shipped_holdout(monkeypatch, tmp_path):
    """The cifar10-jpeg holdout is drawn by position: a folder that differs from the official copy must not
    silently train on cifar10-ref's images (named in the shipped pack) nor call other images its val split."""
    root = tmp_path / "data" / "cifar10-jpeg"
    held = [str(n) for n in np.load(C10.CIFAR10_REF["val"])["names"][:40]]  # e.g. train/dog/3986.jpg
    for name in held + [f"train/{c}/x{i}.jpg" for c in C10.CIFAR10_CLASSES for i in range(12)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((32, 32, 3), 100, np.uint8))
    monkeypatch.setenv("DVT_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"of the 5,000 images held out .* would be trained on"):
        load_dataset("cifar10-jpeg", "train")
    with pytest.raises(DataError, match="val split differs from the 5,000 held-out images"):
        load_dataset("cifar10-jpeg", "val")
    for split in ("train", "val"):  # a subset (--val-limit) is checked against the whole split's listing
        with pytest.raises(DataError, match="of the 5,000 images held out .* would be trained on|val split differs from the 5,000"):
            load_dataset("cifar10-jpeg", split, limit=3)
    monkeypatch.setattr("dvt_edge.data.check_reference_holdout", lambda *a: None)
    assert load_dataset("cifar10-jpeg", "train").preprocess == C10.cifar10_preprocess()  # the reference's, not ImageNet's


def test_imagenet_class_names_are_the_published_index_order():
    """ImageNet-1k's class names in class-index order: the synsets sorted (its train/ folders), a unique short
    name each (well-known anchors: 0 tench, 1 goldfish, 999 toilet tissue; the two cranes told apart)."""
    from dvt_edge.imageset import default_classes, imagenet1k
    from dvt_edge.models import imagenet_layout

    synsets, names = imagenet1k()
    assert len(synsets) == len(set(synsets)) == 1000 and list(synsets) == sorted(synsets)
    assert all(len(s) == 9 and s[0] == "n" and s[1:].isdigit() for s in synsets)
    assert len(set(names)) == 1000 and all(n and n == n.strip() for n in names)
    assert (synsets[0], names[0]) == ("n01440764", "tench") and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
    # a published layout with 1000 outputs and no class names of its own gets these; anything else its indices
    assert imagenet_layout("dvt_deit_small") and imagenet_layout("dvt_t2t_vit_12") and not imagenet_layout("dvt_small_cifar")
    assert default_classes(1000, True) == list(names)
    assert default_classes(1000, False) == [str(i) for i in range(1000)] and default_classes(10, True) == [str(i) for i in range(10)]


def test_imagenet_synset_folders_are_named_as_the_published_bundles_name_them(tmp_path):
    """An ImageNet folder (n01440764/, ...) gives the classes the names a published model's bundle carries, so
    evaluating a bundle on it compares names with names (it compared '0'.. with 'n01440764'.. and refused)."""
    from dvt_edge.imageset import imagenet1k

    synsets, names = imagenet1k()
    img = np.zeros((4, 4, 3), np.uint8)
    for s in synsets:
        for split in ("train", "val"):
            (tmp_path / "in1k" / split / s).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / "in1k" / split / s / "a.png"), img)
    ds = load_dataset(f"imagefolder:{tmp_path / 'in1k'}", "val")
    assert ds.classes == list(names) and ds.num_classes == 1000 and sorted(ds.labels) == list(range(1000))
    for s in synsets[:3]:  # a subset of ImageNet is not ImageNet: its folders name themselves
        for split in ("train", "val"):
            (tmp_path / "sub" / split / s).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / "sub" / split / s / "a.png"), img)
    assert load_dataset(f"imagefolder:{tmp_path / 'sub'}", "val").classes == list(synsets[:3])


def test_some_imagenet_synset_folders_score_an_imagenet_model(tmp_path):
    """Imagenette-style folders (10 of ImageNet's synsets) were refused for a published model: "it has 10 classes,
    the model 1000"; scored, they carry ImageNet's indices. Other folders are still refused, pointing at --finetune."""
    from dvt_edge.imageset import imagenet1k

    synsets, names = imagenet1k()
    picked = [synsets[0], synsets[417], synsets[999]]
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # not blank (a blank set is refused)
    for s in [*picked, "n99999999"]:
        for split in ("train", "val"):
            (tmp_path / ("sub" if s in picked else "odd") / split / s).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / ("sub" if s in picked else "odd") / split / s / "a.png"), img)
    for s in picked[:2]:
        cv2.imwrite(str(tmp_path / "odd" / "val" / s / "a.png"), img)
        (tmp_path / "odd" / "train" / s).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "odd" / "train" / s / "a.png"), img)
    spec = f"imagefolder:{tmp_path / 'sub'}"
    for classes in (list(names), None):
        ds = D.scoring_set(spec, "val", None, 1000, classes, "score")
        assert ds.classes == list(names) and sorted(ds.labels.tolist()) == [0, 417, 999]
    from dvt_edge.export import _load_data

    got = _load_data(spec, D.default_preprocess(3, 32), 2, 3, True, 1000, list(names))  # export's real-image verification
    assert "labels are not used" not in got.note and sorted(got.verify_y.tolist()) == [0, 417, 999]
    with pytest.raises(DataError, match="cannot score this model: its classes"):
        D.scoring_set(spec, "val", None, 1000, [f"c{i}" for i in range(1000)], "score")  # not an ImageNet model
    # data export --checkpoint labels them as the model's bundles answer (the runtime's calibrate refused 0..2 + synsets)
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.models import create_model

    ckpt = save_checkpoint(tmp_path / "in1k.pt", create_model("dvt_t2t_micro", num_classes=1000), classes=list(names))
    assert D.main(["export", "--data", spec, "--split", "val", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.npz")]) == 0
    z = np.load(tmp_path / "c.npz", allow_pickle=False)
    assert sorted(z["labels"].tolist()) == [0, 417, 999] and len(z["classes"]) == 1000
    with pytest.raises(DataError, match=r"cannot score this model: .*train --finetune CHECKPOINT --data imagefolder:"):
        D.scoring_set(f"imagefolder:{tmp_path / 'odd'}", "val", None, 1000, list(names), "score")  # a folder that is no synset
    with pytest.raises(DataError, match=r"train --finetune runs/in1k\.pt --data imagefolder:\S+ --out runs/NAME\)"):  # the model's own file, when known
        D.scoring_set(f"imagefolder:{tmp_path / 'odd'}", "val", None, 1000, list(names), "score", checkpoint="runs/in1k.pt")


def test_hidden_folders_are_not_classes_and_any_color_image_makes_a_color_set(tmp_path):
    """``train/.ipynb_checkpoints`` is no class; a grayscale picture sorted first in a color set does not
    make the default preprocessing grayscale."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "train" / c / "0.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))  # gray first
        for i in range(1, 12):
            cv2.imwrite(str(tmp_path / "train" / c / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(tmp_path / "train" / ".ipynb_checkpoints" / "x.png"), np.zeros((32, 32, 3), np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert ds.classes == ["cat", "dog"]
    assert ds.preprocess.num_channels == 3 and ds.preprocess.size == 32
    assert ds.input(0).shape == (3, 32, 32)
    # one thumbnail among photos: the photos decide the default size
    (tmp_path / "p" / "train" / "a").mkdir(parents=True)
    for i in range(9):
        cv2.imwrite(str(tmp_path / "p" / "train" / "a" / f"{i}.png"), np.zeros((100 + i, 120, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "p" / "train" / "a" / "thumb.png"), np.zeros((20, 20, 3), np.uint8))
    assert load_dataset(f"imagefolder:{tmp_path / 'p'}", "train").preprocess.size == 224


def test_a_checkpoints_own_data_comes_first_and_a_stand_in_is_said(tmp_path, fmnist_test):
    import json

    from dvt_edge.data import checkpoint_data

    run = {"train": {"args": json.dumps({"data": f"imagefolder:{tmp_path / 'gone'}"})}}
    spec, note = checkpoint_data("dvt_micro_fmnist", run)
    assert spec == "fashion-mnist" and f"imagefolder:{tmp_path / 'gone'}: imagefolder: " in note and "is not a directory" in note
    _make_folder(tmp_path / "here", [fmnist_test.raw(i) for i in range(20)], [i % 2 for i in range(20)], ["a", "b"])
    here = {"train": {"args": json.dumps({"data": f"imagefolder:{tmp_path / 'here'}"})}}
    assert checkpoint_data("dvt_micro_fmnist", here) == (f"imagefolder:{tmp_path / 'here'}", "")


def test_cifar10_ref_never_stands_in_to_evaluate_a_model_trained_on_all_of_cifar10s_training_images(monkeypatch, tmp_path, capsys):
    """A model trained on the official CIFAR-10 (all 50,000 training images) was scored on cifar10-ref's val, 5,000 of those
    training images, when its own data was not here: in-sample figures said only as 'a stand-in'. Calibration may use it."""
    import json

    from dvt_edge.data import checkpoint_data, data_for_checkpoint

    monkeypatch.setenv("DVT_DATA", str(tmp_path))  # no official CIFAR-10 here
    monkeypatch.setenv("DVT_OFFLINE", "1")
    extras = {"train": {"args": json.dumps({"data": "cifar10"})}}
    spec, note = checkpoint_data("dvt_small_cifar", extras, split="val")
    assert spec != "cifar10-ref" and "every one of which cifar10 trained on" in note, (spec, note)
    assert checkpoint_data("dvt_small_cifar", extras, split="train")[0] == "cifar10-ref"  # its 1,000 calibration images
    recorded = {**extras, "eval_data": "cifar10-ref"}  # recorded first (a card published before the check): never handed back
    assert checkpoint_data("dvt_small_cifar", recorded, split="val")[0] != "cifar10-ref"
    data_for_checkpoint("cifar10-ref", "dvt_small_cifar", extras)  # given by hand: warned, as in-sample
    assert "its accuracies there are in-sample" in capsys.readouterr().err
    gone = {"train": {"args": json.dumps({"data": f"imagefolder:{tmp_path / 'gone'}"})}}  # nothing says it trained on them
    assert checkpoint_data("dvt_small_cifar", gone, split="val")[0] == "cifar10-ref"


def test_an_npz_run_from_before_the_holdout_is_said_to_be_scored_in_sample(tmp_path, capsys):
    """A run recorded as npz:PATH before npz files had a held-out 10% trained on the whole file; evaluating it there (by
    default, or naming the file) scored its training images as '[val]' without a word."""
    import json

    from dvt_edge.data import data_for_checkpoint

    f = tmp_path / "set.npz"
    np.savez(f, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 10)
    old = {"train": {"args": json.dumps({"data": f"npz:{f}"})}}
    said = "holds one set of images (no 'split' entry), and the run, recorded before npz files had a held-out 10%, trained on all of it"
    for given in (f"npz:{f}", None):  # named, or by default: scored as before (its own classes; no other set has them), said
        data, note = data_for_checkpoint(given, "dvt_micro_fmnist", old, split="val")
        assert data == f"npz:{f}" and note == "" and f"{said}: its accuracies there are in-sample" in capsys.readouterr().err
    data_for_checkpoint(None, "dvt_micro_fmnist", old, split="train")  # threshold or calibration images: nothing to say
    assert "in-sample" not in capsys.readouterr().err
    data_for_checkpoint(f"npz:{f}#holdout", "dvt_micro_fmnist", old, split="val")  # that 10% too was trained on then
    assert f"npz:{f}#holdout {said}: its accuracies there are in-sample" in capsys.readouterr().err
    (tmp_path / "cut.npz").write_bytes(f.read_bytes()[:100])  # a recorded training file truncated since: another set is still
    cut = {"train": {"args": json.dumps({"data": f"npz:{tmp_path / 'cut.npz'}"})}}  # scored (it raised BadZipFile)
    assert data_for_checkpoint(f"npz:{f}", "dvt_micro_fmnist", cut, split="val")[0] == f"npz:{f}"
    new = {"train": {"args": json.dumps({"data": f"npz:{f}#holdout"})}}  # a run since: its held-out 10% is scored
    data, _ = data_for_checkpoint(f"npz:{f}", "dvt_micro_fmnist", new, split="val")
    assert data.endswith("#holdout") and "in-sample" not in capsys.readouterr().err


def test_a_download_cut_off_midway_is_the_not_found_message(monkeypatch, tmp_path):
    """A server that closes the connection before Content-Length bytes: said as such (it read as a checksum
    mismatch), in the data set's not-found message, and nothing is kept."""
    import http.server
    import threading

    class CutOff(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)  # then the connection closes

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.delenv("DVT_DATA", raising=False)
        monkeypatch.delenv("DVT_OFFLINE", raising=False)
        monkeypatch.setattr(C10, "CIFAR10_URL", f"http://127.0.0.1:{srv.server_port}/cifar-10-python.tar.gz")
        with pytest.raises(DataError, match=r"CIFAR-10 not found(.|\n)*was cut off: 10 of 100000 bytes"):
            load_dataset("cifar10", "train")
        assert not (tmp_path / "cache" / "dvt-edge" / "cifar10" / "cifar-10-python.tar.gz").exists()
    finally:
        srv.shutdown()


def test_loader_corners_from_a_reader(tmp_path):
    """RGB npz pixels said as such; NHWC float and 2-D pixel arrays refused; a subset smaller than the class
    count follows the seed; a holdout that takes a class's only image is an error; nearest resize is OpenCV's."""
    red = np.zeros((4, 8, 8, 3), np.uint8)
    red[..., 0] = 255  # red in RGB order
    np.savez(tmp_path / "rgb.npz", images=red, labels=np.array([0, 1, 0, 1]), channel_order=np.array("rgb"))
    x = load_dataset(f"npz:{tmp_path / 'rgb.npz'}", "val").input(0).reshape(3, -1).mean(1)
    assert x[0] > 2 and x[1] < 0 and x[2] < 0  # the model's red channel is the bright one
    np.savez(tmp_path / "nhwc.npz", images=np.zeros((4, 8, 8, 3), np.float32), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"preprocessed images must be float32 \(N, C, H, W\)"):
        load_dataset(f"npz:{tmp_path / 'nhwc.npz'}", "val")
    np.savez(tmp_path / "flat.npz", images=np.zeros((4, 64), np.uint8), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="must be uint8 pixels"):
        load_dataset(f"npz:{tmp_path / 'flat.npz'}", "val")
    labels = np.repeat(np.arange(10), 50)
    picks = {tuple(sorted(set(labels[D.stratified_subset(labels, 3, s)].tolist()))) for s in range(6)}
    assert len(picks) > 1  # it was always classes 0, 1, 2
    for c, n in [(f"c{i:02d}", 11) for i in range(20)] + [("z", 1)]:
        (tmp_path / "f" / "train" / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "f" / "train" / c / f"{i}.png"), np.full((8, 8), i, np.uint8))
    # a class of one image whose image the holdout drew (an ImageNet-sized folder failed every command): trained on instead,
    # said; the other classes' holdout as it was
    with pytest.warns(UserWarning, match=r"class\(es\) \['z'\] hold one image, kept for training \(none held out to validate them\)"):
        tr = load_dataset(f"imagefolder:{tmp_path / 'f'}", "train")
    va = load_dataset(f"imagefolder:{tmp_path / 'f'}", "val")
    z = tr.classes.index("z")
    assert (tr.labels == z).sum() == 1 and (va.labels == z).sum() == 0 and len(tr) + len(va) == 221 and len(va) == 22
    for i in (1, 2):  # enough of class z now
        cv2.imwrite(str(tmp_path / "f" / "train" / "z" / f"{i}.png"), np.full((8, 8), i, np.uint8))
    (tmp_path / "f" / "train" / "c00" / "link.png").symlink_to(tmp_path / "gone.png")  # a broken link is a skipped file, said
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) (.|\n)*\(1 unreadable; left out\)(.|\n)*link\.png"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}", "train")
    img = np.random.default_rng(0).integers(0, 256, (100, 1000), dtype=np.uint8)
    np.testing.assert_array_equal(P._np_resize(img, 28, 280, "nearest"), cv2.resize(img, (280, 28), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("src,n", [(68, 96), (102, 112), (100, 108), (36, 112), (20, 32)])
def test_numpy_area_enlargement_picks_opencvs_source_pixels(src, n):
    """Enlarging by area without OpenCV took whole rows from the neighbouring source pixel at some sizes (252 gray
    levels off): i * src / n where OpenCV computes i * (1 / (n / src)), and its blend weight kept as a float."""
    img = np.random.default_rng(src).integers(0, 256, (src, 7), dtype=np.uint8)
    want = cv2.resize(img, (7, n), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(P._area_up_axis(img.astype(np.float32), n, 0) - want).max() <= 1.0


def test_exif_orientation_is_applied_as_cv2_imread_applies_it(tmp_path):
    """A phone photo stored sideways with an EXIF orientation: training reads it as inference's cv2.imread does."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(10):
            im = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
            exif = im.getexif()
            exif[0x0112] = 6  # rotate 90 degrees clockwise to display
            im.save(tmp_path / "train" / c / f"{i}.jpg", exif=exif)
    ds = load_dataset(f"imagefolder:{tmp_path}", "train")
    path = ds.files[0]
    assert ds.raw(0).shape == cv2.imread(path).shape == (60, 40, 3)
    np.testing.assert_array_equal(ds.raw(0), cv2.imread(path))


def test_a_recorded_evaluation_set_of_one_split_is_found_for_that_split(tmp_path):
    """A checkpoint's eval_data holding only its val split was tried on train, judged missing, and the training
    set stood in for it without a word."""
    from dvt_edge.data import checkpoint_data

    imgs, labels = np.zeros((6, 8, 8), np.uint8), np.array([0, 1] * 3)
    np.savez(tmp_path / "val.npz", images=imgs, labels=labels, split=np.array("val"))
    np.savez(tmp_path / "train.npz", images=imgs, labels=labels)
    extras = {"eval_data": f"npz:{tmp_path / 'val.npz'}", "data": f"npz:{tmp_path / 'train.npz'}"}
    assert checkpoint_data("dvt_micro_fmnist", extras, split="val") == (f"npz:{tmp_path / 'val.npz'}", "")
    spec, note = checkpoint_data("dvt_micro_fmnist", extras, split="train")  # that set has no train split: said
    assert spec == f"npz:{tmp_path / 'train.npz'}" and "holds only the 'val' split" in note


def test_same_data_compares_folders_by_path(tmp_path, monkeypatch):
    """Evaluate's threshold note said "records training on imagefolder:~/photos, not imagefolder:/home/me/photos"."""
    from dvt_edge.batches import eval_batch_size

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "photos").mkdir()
    assert D.same_data("imagefolder:~/photos", f"imagefolder:{tmp_path}/photos/")
    assert not D.same_data("imagefolder:~/photos", f"npz:{tmp_path}/photos") and not D.same_data("imagefolder:/a", "imagefolder:/b")
    assert D.same_data("fashion-mnist", "fashion-mnist") and D.same_data(None, None)
    assert not D.same_data(None, "fashion-mnist") and not D.same_data("fashion-mnist", None)
    assert [eval_batch_size(s) for s in (28, 32, 64, 224)] == [500, 500, 125, 10]


def test_colour_pictures_read_for_a_grayscale_model_are_said(tmp_path):
    """A grayscale checkpoint's data export (or fine-tune) from a folder of colour photos converted them to gray without a
    word; gray pictures saved as colour files are not colour."""
    import warnings

    _class_sorted_folder(tmp_path / "colour", n_per_class=10, classes=("a", "b"))
    gray = tmp_path / "gray" / "train" / "a"
    gray.mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(gray / f"{i}.png"), np.repeat(np.full((8, 8, 1), 20 * i, np.uint8), 3, axis=2))  # R = G = B
    shutil.copytree(gray, tmp_path / "gray" / "train" / "b")
    pre = D.default_preprocess(1, 8)
    with pytest.warns(UserWarning, match=r"colour.train holds colour pictures \(e.g. .*\.png\) and the preprocessing given takes 1 channel"):
        load_dataset(f"imagefolder:{tmp_path / 'colour'}", "train", preprocess=pre)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(f"imagefolder:{tmp_path / 'gray'}", "train", preprocess=pre)  # 3-channel files of gray pictures
        load_dataset(f"imagefolder:{tmp_path / 'colour'}", "train", preprocess=D.default_preprocess(3, 8))  # a colour model's


def test_16_bit_images_decode_as_cv2_imread_gives_them_and_a_folder_is_looked_at_without_holding_it(tmp_path):
    """16-bit pixels were scaled by x / 257, truncated: 63% of a photo's pixels one level darker than cv2.imread (what
    Bundle.predict(cv2.imread(p)) gets). A --train-limit run decoded 256 files to look at their colour and size and held
    every one at once (36 MB a phone photo: 9 GB for a folder of them); it keeps two numbers an image now."""
    import tracemalloc

    import dvt_edge.imagefolder as F
    from dvt_runtime.images import read_image

    px = np.random.default_rng(1).integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), px)
    assert np.array_equal(read_image(tmp_path / "deep.png"), cv2.imread(str(tmp_path / "deep.png")))
    for c in ("a", "b"):
        (tmp_path / "big" / "train" / c).mkdir(parents=True)
        for i in range(12):  # 1.44 MB each decoded (compressed to almost nothing)
            cv2.imwrite(str(tmp_path / "big" / "train" / c / f"{i}.png"), np.full((600, 800, 3), 20 * i, np.uint8))
    tracemalloc.start()
    try:
        look = F._sample_look(F._split(str(tmp_path / "big"), "train"), "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert look == (True, 600) and peak < 8e6, peak  # a few images' worth, not 24 (35 MB)


def test_data_info_counts_a_big_folder_from_its_listing_and_names_its_rare_classes(tmp_path, monkeypatch, capsys):
    """``data info`` on 500,000 files decoded every image to count them (62 s, 3.2 GB); past 50 classes it printed bare
    counts, and the unbalanced warning listed every class (18 KB on one line for 1,000 classes)."""
    from dvt_edge import imagefolder as IF

    for k in range(60):
        c = tmp_path / "train" / f"c{k:02d}"
        c.mkdir(parents=True)
        for i in range(1 if k == 7 else 12):
            cv2.imwrite(str(c / f"{i}.png"), np.full((8, 8, 3), 4 * k + i, np.uint8))
    (tmp_path / "train" / "c03" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # listed, not read
    monkeypatch.setattr(IF, "_decode", lambda *a, **k: pytest.fail("data info decoded the images"))
    with pytest.warns(UserWarning, match=r"very unbalanced \(image files per class: fewest c07: 1, c00: 12, .*; most c03: 13, .*median 12\); "
                                         r"to train on it: --class-weight balanced") as w:
        assert D.main(["info", "--data", f"imagefolder:{tmp_path}"]) == 0
    assert max(len(str(x.message)) for x in w) < 600
    out = capsys.readouterr().out
    assert f"imagefolder:{tmp_path} [train]: 639 image files (listed: unreadable ones are left out when read), 60 classes (fewest c07: 1, " \
           "c00: 10, c01: 10, c02: 10, c04: 10; most c59: 11, c58: 11, c57: 11; median 11)" in out
    assert "[val]: 71 image files" in out and "'channels': 'rgb'" in out and "'size': 8" in out
    assert D.main(["info", "--data", f"imagefolder:{tmp_path}", "--json"]) == 0  # for scripts: every class's count, named, versioned
    info = json.loads(capsys.readouterr().out)
    assert (info["schema"], info["schema_version"], info["preprocess_sampled"]) == ("dvt-edge/data-info/1", 1, True)
    tr = info["splits"]["train"]
    assert tr["n"] == 639 and tr["listed"] and len(tr["classes"]) == 60 and tr["counts"][tr["classes"].index("c07")] == 1
