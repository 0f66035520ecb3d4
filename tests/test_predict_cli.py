"""``dvt-runtime predict``: the cascade on image files from the command line, as the Python API answers them."""

from __future__ import annotations

import collections
import json
import sys
import warnings

import cv2
import numpy as np
import pytest

from dvt_edge.data import load_dataset
from dvt_runtime.bundle import Bundle
from dvt_runtime.cli import main as runtime_main
from dvt_runtime.predict import main
from tests.test_runtime_torch_free import run_without_torch


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 Fashion-MNIST images as PNG files in a folder tree, a truncated JPEG, and a hidden folder's image."""
    d = tmp_path_factory.mktemp("photos")
    ds = load_dataset("fashion-mnist", "val", limit=12, seed=3)
    imgs = [ds.images[i] for i in range(len(ds))]
    for i, img in enumerate(imgs):
        (d / "sub" / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / "sub" / f"{i % 3}" / f"{i:02d}.png"), img)
    ok, jpg = cv2.imencode(".jpg", imgs[0])
    (d / "sub" / "cut.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (d / ".thumbs").mkdir()
    cv2.imwrite(str(d / ".thumbs" / "x.png"), imgs[0])
    return d


def test_predict_answers_every_image_as_the_api_does(onnx_bundle, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds.json"
    assert main(["--bundle", str(onnx_bundle), str(photos), "--out", str(out), "--no-progress"]) == 1  # one unreadable
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["schema"] == "dvt-predictions" and r["schema_version"] == 1 and r["n_images"] == 12
    assert [u["file"] for u in r["unreadable"]] == [str(photos / "sub" / "cut.jpg")] and "truncated" in r["unreadable"][0]["error"]
    assert sum(r["exit_counts"]) == 12 and ".thumbs" not in json.dumps(r["images"])
    b = Bundle.open(onnx_bundle)
    for row in r["images"]:
        p = b.predict(cv2.imread(row["file"], cv2.IMREAD_UNCHANGED))
        assert (row["label"], row["class_name"], row["exit"]) == (p.label, p.class_name, p.exit + 1)
        assert np.isclose(row["confidence"], p.confidence, atol=1e-6) and row["total_ms"] > 0 and row["preprocess_ms"] > 0
    assert r["thresholds_from"].startswith("the manifest's") and r["mode"] == "thresholds"
    for given in ("0.9,0.8", "0.9,0.8,0.5"):  # one entry per exit, the last None (it always answers), however they were given
        assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--thresholds", given, "--out", str(tmp_path / "t.json"),
                     "--no-progress"]) == 0
        assert json.loads((tmp_path / "t.json").read_text())["thresholds"] == [0.9, 0.8, None]
    capsys.readouterr()
    # a dashboard reads the thresholds, device and threads as values, and every mode writes the same keys
    b1 = Bundle.open(onnx_bundle, device_name="")
    assert r["thresholds"] == [float(v) for v in b1.manifest.thresholds[:2]] + [None] and r["threads"] == 1 and r["device_name"] is None
    assert r["budget_metric"] is None and r["budget_headroom"] is None and r["deadline_missed"] is None
    assert f"12 images (1 unreadable): exits 1-3 answered {' / '.join(map(str, r['exit_counts']))}" in printed
    assert "unreadable: image" in printed and f"wrote {out}" in printed
    assert all(f"{k % 3}/{k:02d}.png " in printed for k in range(12)), printed  # under the common folder: names alone repeat
    # fixed thresholds, through the dvt-runtime command: none never stops, so every image reaches exit 3
    argv = list(sys.argv)
    assert runtime_main(["predict", "--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--thresholds", "none,none", "--no-progress"]) == 0
    assert sys.argv == argv  # restored: a calibrate run later in this process had recorded its command as "dvt-runtime predict ..."
    assert "exits 1-3 answered 0 / 0 / 4" in capsys.readouterr().out
    # --out -: the JSON alone on stdout for a pipeline, the table on stderr (it had written a file named "-")
    monkeypatch.chdir(tmp_path)
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--out", "-", "--no-progress"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["n_images"] == 4 and "exits 1-3 answered" in got.err and not (tmp_path / "-").exists()


@pytest.mark.parametrize("args,match", [
    (["MISSING"], "no such file or folder"),
    (["EMPTY"], "holds no images"),
    (["PHOTOS", "--thresholds", "2"], r"--thresholds: 2 is outside \[0, 1\]"),
    (["PHOTOS", "--thresholds", "0.5,0.5,0.5,0.5"], r"--thresholds: need 2 \(or 3\) thresholds for 3 exits, got 4"),
    (["PHOTOS", "--thresholds", "0.9", "--budget-ms", "1"], "not allowed with argument"),
    (["PHOTOS", "--budget-ms", "nan"], "--budget-ms must be a finite positive"),
    (["PHOTOS", "--profile", "p.json"], "--profile gives the p90s --deadline-ms needs"),
    (["PHOTOS", "--deadline-ms", "5", "--profile", "phone.csv"], "raw measurements: make a profile of it first with .*import --csv"),
    (["PHOTOS", "--deadline-ms", "5"], "--deadline-ms needs each stage's p90 latency: pass --profile PROFILE.json"),
    (["PHOTOS", "--budget-ms", "1"], r"--budget-ms needs a calibration of this device \(none usable at .*\): dvt-runtime calibrate --bundle"),
])
def test_predict_bad_requests_are_one_clear_error(onnx_bundle, photos, tmp_path, capsys, args, match):
    (tmp_path / "empty").mkdir()
    subst = {"MISSING": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty"), "PHOTOS": str(photos / "sub" / "1")}
    argv = ["--bundle", str(onnx_bundle), *[subst.get(a, a) for a in args], "--no-progress"]
    if "not allowed" in match:  # argparse's own refusal
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), err
    assert "Traceback" not in err


def test_predict_runs_with_torch_unimportable(onnx_bundle, photos):
    r = run_without_torch(f"""
        from dvt_runtime.predict import main
        rc = main(["--bundle", {str(onnx_bundle)!r}, {str(photos / "sub" / "2")!r}, "--no-progress"])
        assert rc == 0 and "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "4 images (0 unreadable)" in r.stdout


def test_deadline_from_a_profile_file(onnx_bundle, photos, tmp_path, capsys):
    """--deadline-ms with --profile: the profile's p90s decide which later stages are skipped (a 0.001 ms deadline
    leaves only exit 1, which always runs)."""
    from dvt_runtime.profile import profile_bundle

    b = Bundle.open(onnx_bundle)
    profile_bundle(b, warmup=2, runs=10, progress=False).save(tmp_path / "prof.json")
    out = tmp_path / "p.json"
    with pytest.warns(UserWarning, match=r"a deadline_ms below exit 1's p90 .* most images overrun it"):  # never said
        assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--deadline-ms", "0.001", "--profile", str(tmp_path / "prof.json"),
                     "--thresholds", "none,none", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "deadline" and r["exit_counts"] == [4, 0, 0] and all(x["deadline_skipped"] for x in r["images"])
    assert r["deadline_missed"] == 4 and "4 of 4 over the 0.001 ms deadline" in capsys.readouterr().out  # every image, counted


def test_a_deadline_counts_the_images_preprocessing(onnx_bundle, tmp_path):
    """The CLI preprocessed each image itself and passed float32 to predict, so its deadline left the preprocessing out
    (a 24-megapixel photo took far longer than a 2 ms deadline and still ran every exit); Bundle.predict of the uint8
    image counted it."""
    from dvt_runtime.latency import LatencyProfile

    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "big.jpg"), rng.integers(0, 256, (4000, 6000), dtype=np.uint8))
    LatencyProfile.from_samples([[1e-6] * 4] * 3).save(tmp_path / "prof.json")  # every stage "free": only the time spent can stop it
    out = tmp_path / "p.json"
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "big.jpg"), "--deadline-ms", "2", "--profile", str(tmp_path / "prof.json"),
                 "--thresholds", "none,none", "--out", str(out), "--no-progress"]) == 0
    (row,) = json.loads(out.read_text())["images"]
    assert row["preprocess_ms"] > 2 and row["exit"] == 1 and row["deadline_skipped"], row
    b = Bundle.open(onnx_bundle)
    b.use_profile([1e-6, 5.0, 5.0])
    x = np.zeros(b.input_shape, np.float32)
    assert b.predict(x, thresholds=[None, None], deadline_ms=50).exit == 2  # the stages fit
    p = b.predict(x, thresholds=[None, None], deadline_ms=50, spent_ms=46)  # ... not after 46 ms spent before the call
    assert p.exit == 0 and p.deadline_skipped
    with pytest.raises(ValueError, match="spent_ms"):
        b.predict(x, deadline_ms=50, spent_ms=float("nan"))


def test_an_image_whose_exit_answers_nan_is_listed_and_the_others_answered(onnx_bundle, photos, tmp_path, capsys, monkeypatch):
    """One image whose exit-1 logits came out NaN (an int8 artifact on an odd frame) ended the whole run with exit code 2,
    nothing answered and the file not named."""
    import dvt_runtime.predict as P

    opened = P.open_here

    def open_nan_on_fourth(*a, **kw):
        b = opened(*a, **kw)
        run, calls = b.sessions[0].run, [0]

        def nan_once(inputs):
            out, calls[0] = run(inputs), calls[0] + 1
            return {k: np.full_like(v, np.nan) for k, v in out.items()} if calls[0] == 5 else out  # the 4th image, after the warm-up
        b.sessions[0].run = nan_once
        return b

    monkeypatch.setattr(P, "open_here", open_nan_on_fourth)
    out = tmp_path / "p.json"
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--thresholds", "0,0", "--out", str(out), "--no-progress"]) == 1
    r = json.loads(out.read_text())
    assert r["n_images"] == 3 and len(r["failed"]) == 1 and "NaN or infinite logits" in r["failed"][0]["error"], r["failed"]
    assert r["failed"][0]["file"] not in {x["file"] for x in r["images"]} and len(r["latency_ms"]["preprocess"]) and r["unreadable"] == []
    printed = capsys.readouterr().out
    assert f"failed: {r['failed'][0]['file']}: exit 1" in printed and "3 images (0 unreadable, 1 failed)" in printed


def test_without_opencv_it_is_one_error_naming_the_extra(onnx_bundle, photos, monkeypatch, capsys):
    """Without OpenCV every image was "unreadable" (one line each) and the exit code said "some images unreadable"."""
    import dvt_runtime.preprocess as P

    monkeypatch.setattr(P, "_CV2", None)
    monkeypatch.setattr(P, "_CV2_TRIED", True)
    assert main(["--bundle", str(onnx_bundle), str(photos), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.count("needs OpenCV: pip install 'opencv-python-headless>=4.10' 'simplejpeg>=1.7.4' (dvt-runtime's [opencv] extra; "
                     "from a dvt-edge checkout: pip install './runtime[opencv]')") == 1 and "unreadable" not in out + err
    # onnxruntime missing too (a fresh device): both in one pip command, not one and then the other
    import dvt_runtime.predict as PR
    from dvt_runtime.backends import _missing

    def no_ort(backend, *a, **k):
        raise _missing(backend, ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"))

    monkeypatch.setattr(PR, "import_backend", no_ort)
    assert main(["--bundle", str(onnx_bundle), str(photos), "--no-progress"]) == 2
    assert capsys.readouterr().err == ("error: reading image files needs OpenCV, and this onnxruntime bundle needs its library: pip install "
                                       "'onnxruntime>=1.18' 'opencv-python-headless>=4.10' 'simplejpeg>=1.7.4' (dvt-runtime's [onnx,opencv] "
                                       "extras; from a dvt-edge checkout: pip install './runtime[onnx,opencv]')\n")


def test_opencv_or_simplejpeg_installed_for_another_numpy_is_said_as_such(onnx_bundle, photos, tmp_path, monkeypatch, capsys):
    """OpenCV 4.8 under numpy 2 was told to 'pip install opencv-python-headless>=4.8' (installed already: nothing changed), and
    simplejpeg 1.7.1 under numpy 2 turned the corrupt-JPEG check off without a word (a damaged photo was answered, exit 0)."""
    import dvt_runtime.preprocess as P
    from dvt_runtime.images import can_check_jpegs

    monkeypatch.setattr(P, "_CV2", None)
    monkeypatch.setattr(P, "_CV2_TRIED", True)
    monkeypatch.setattr(P, "_CV2_ERROR", ImportError("numpy.core.multiarray failed to import"))
    assert main(["--bundle", str(onnx_bundle), str(photos), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs OpenCV, which is installed but fails to import (ImportError: numpy.core.multiarray failed to import); it may be " \
           f"built for another numpy than this environment's ({np.__version__}). Install a build that matches, e.g. pip install " \
           "-U 'opencv-python-headless>=4.10'" in err
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "simplejpeg.py").write_text("raise ValueError('numpy.dtype size changed, may indicate binary incompatibility')\n")
    monkeypatch.delitem(sys.modules, "simplejpeg", raising=False)
    monkeypatch.syspath_prepend(str(fake))
    with pytest.warns(UserWarning, match=r"simplejpeg is installed but fails to import \(ValueError: numpy\.dtype size changed.*\); install "
                                         r"a build that matches this numpy .*: JPEGs with corrupt data cannot be told apart and are answered"):
        assert can_check_jpegs() is False
    from dvt_runtime.images import DecoderMissing, jpeg_corruption

    with pytest.raises(DecoderMissing, match=r"needs simplejpeg, which is installed but fails to import .* pip install -U "):
        jpeg_corruption(b"\xff\xd8\xff\xd9")  # training's check says the same (it said: pip install simplejpeg)
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed: the documented fallback, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert can_check_jpegs() is False


def test_linked_folders_are_followed_once_and_a_folder_named_like_an_image_is_no_image(onnx_bundle, photos, tmp_path, capsys):
    top = tmp_path / "top"
    top.mkdir()
    (top / "linked").symlink_to(photos / "sub" / "0", target_is_directory=True)  # a linked folder of 4 images
    (top / "again").symlink_to(photos / "sub" / "0", target_is_directory=True)  # the same folder twice: read once
    (top / "loop").symlink_to(top, target_is_directory=True)  # a link back up the tree
    (top / "album.jpg").mkdir()  # a folder with an image's name
    assert main(["--bundle", str(onnx_bundle), str(top), "--no-progress"]) == 0
    assert "4 images (0 unreadable)" in capsys.readouterr().out
    # a folder with its own sub-folder, and a file given twice: each image counted once (they were counted twice)
    one = next((photos / "sub" / "0").iterdir())
    assert main(["--bundle", str(onnx_bundle), str(top), str(top / "linked"), str(one), str(one), "--no-progress"]) == 0
    assert "4 images (0 unreadable)" in capsys.readouterr().out
    # a phone's HEIC photo and a GIF beside them were skipped unsaid ("1 images (0 unreadable)", exit 0)
    for name in ("IMG_1234.HEIC", "anim.gif", "notes"):
        (top / name).write_bytes(b"x")
    (top / ".DS_Store").write_bytes(b"x")  # hidden: not the user's pictures
    assert main(["--bundle", str(onnx_bundle), str(top), "--no-progress", "--out", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert "note: skipped 3 file(s) in the folders that are not images it reads (" in err and ".heic: 1" in err and "(none): 1" in err
    assert json.loads((tmp_path / "p.json").read_text())["skipped_files"] == {".heic": 1, ".gif": 1, "(none)": 1}
    assert "convert HEIC photos to JPEG" in err
    from dvt_runtime.predict import image_files

    (top / "inner").mkdir()
    (top / "inner" / "more.heic").write_bytes(b"x")
    (top / "inner" / "a.png").write_bytes(one.read_bytes())
    counted = collections.Counter()
    image_files([str(top), str(top / "inner")], counted)  # a folder and its sub-folder: each file once (more.heic was counted twice)
    assert counted == {".heic": 2, ".gif": 1, "(none)": 1}, counted


def test_budget_from_a_calibration_and_a_deadline_from_another_devices_profile(bundle_for_calibration, photos, tmp_path, capsys):
    """--budget-ms runs on the named device's calibration; --profile from another device is used and said so."""
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.latency import LatencyProfile

    b = Bundle.open(bundle_for_calibration)
    m = b.manifest
    ident = {"model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend}
    prof = LatencyProfile.from_samples([[0.2, 0.2, 0.3, 0.2], [0.4, 0.5, 0.4, 0.4], [0.9, 0.8, 0.9, 0.9]],
                                       device={"device_name": "pixel8"}, bundle=ident)
    ds = load_dataset("fashion-mnist", "val", limit=60, seed=1)
    x, y = ds.arrays()
    calibrate(b, x, y, 1.0, profile=prof, progress=False)
    out = tmp_path / "p.json"
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub"), "--budget-ms", "1", "--device-name", "pixel8",
                 "--out", str(out), "--no-progress"]) == 1  # sub/ holds the truncated JPEG too
    r = json.loads(out.read_text())
    assert r["mode"] == "budget" and r["thresholds_from"] == "the budget controller on the calibration of 'pixel8' (mean budget)"
    assert r["n_images"] == 12 and (r["budget_metric"], r["budget_headroom"]) == ("mean", 0.0)
    # the summary sets the cascade's own figure in the budget's statistic beside the budget (a p90 SLO read the mean)
    from dvt_runtime.predict import format_result

    summary = format_result(r).splitlines()[-1]  # predict's own time a call (stages and its own work), as the budget is priced
    calls = [x["predict_ms"] for x in r["images"]]
    assert all(x["predict_ms"] >= x["total_ms"] for x in r["images"])
    assert f"; predict mean {np.mean(calls):.3f} ms a call, " in summary and "the 1 ms budget" in summary
    r["images"][0]["predict_ms"] = float("nan")
    assert "ms a call, OVER the 1 ms budget" in format_result(r)
    r["budget_metric"], r["images"][0]["predict_ms"] = "p95", 5.0  # any percentile (the stats hold p50, p90, p99)
    assert f"; predict p95 {np.percentile([5.0] + calls[1:], 95, method='inverted_cdf'):.3f} ms a call, OVER the 1 ms budget" in format_result(r)
    prof.save(tmp_path / "pixel8.json")
    capsys.readouterr()
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--deadline-ms", "5", "--profile",
                 str(tmp_path / "pixel8.json"), "--no-progress"]) == 0
    assert "was not measured on this host ('pixel8'): deadlines are judged on its latencies" in capsys.readouterr().err


@pytest.fixture()
def bundle_for_calibration(onnx_bundle, tmp_path):
    import shutil

    shutil.copytree(onnx_bundle, tmp_path / "b")
    return tmp_path / "b"


def test_this_hosts_calibration_is_used_without_device_name(bundle_for_calibration, photos, tmp_path, capsys):
    """calibrate saves under this host's name by default; predict loads it by default (it ran the manifest's thresholds and
    refused --budget-ms, naming the calibrate command just run)."""
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.device import this_host

    b = Bundle.open(bundle_for_calibration)
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--budget-ms", "1", "--no-progress"]) == 2
    assert f"none usable at {b.calibration_path(this_host())}" in capsys.readouterr().err
    x, y = load_dataset("fashion-mnist", "val", limit=60, seed=1).arrays()
    cal = calibrate(b, x, y, 50.0, progress=False)
    assert cal.device == this_host() and b.calibration_path(this_host()).exists()
    out = tmp_path / "p.json"
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--budget-ms", "50", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["thresholds_from"] == f"the budget controller on the calibration of {this_host()!r} (mean budget)"
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["thresholds_from"] == f"the calibration of {this_host()!r}"
    # this host's file gone stale (export --force keeps calibration/ over new artifacts): a defaulted name still runs, and says so
    path = b.calibration_path(this_host())
    stale = json.loads(path.read_text())
    stale["bundle"]["artifacts"] = ["0" * 64] * len(stale["bundle"]["artifacts"])
    path.write_text(json.dumps(stale))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="this host's calibration is not used .*other artifacts"):
        assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["thresholds_from"].startswith("the manifest's")
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--device-name", this_host(), "--no-progress"]) == 2
    assert "other artifacts" in capsys.readouterr().err  # named explicitly: still an error
    assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--device-name", "", "--no-progress"]) == 2
    assert "device name '' names no device" in capsys.readouterr().err  # it ran with no calibration, unsaid
    # another device's calibration only (the phone's, made on this host): not suggested to this host
    path.rename(path.with_name("pixel8.json"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["--bundle", str(bundle_for_calibration), str(photos / "sub" / "0"), "--no-progress"]) == 0


def test_a_corrupt_jpeg_is_listed_not_answered_where_libjpeg_can_be_asked(onnx_bundle, photos, tmp_path, monkeypatch):
    """OpenCV decodes a JPEG with damaged coded data to wrong pixels: with simplejpeg installed (the opencv extra)
    predict lists it as it lists a truncated one; without, it answers it, as before."""
    from tests.test_jpeg import _damaged

    good = cv2.imread(str(photos / "sub" / "0" / "00.png"), cv2.IMREAD_UNCHANGED)
    jpg = cv2.imencode(".jpg", cv2.resize(good, (96, 96)))[1].tobytes()
    (tmp_path / "ok.jpg").write_bytes(jpg)
    (tmp_path / "bad.jpg").write_bytes(_damaged(jpg))
    out = tmp_path / "p.json"
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "ok.jpg"), str(tmp_path / "bad.jpg"), "--out", str(out), "--no-progress"]) == 1
    r = json.loads(out.read_text())
    assert [row["file"] for row in r["images"]] == [str(tmp_path / "ok.jpg")]
    assert [u["file"] for u in r["unreadable"]] == [str(tmp_path / "bad.jpg")] and "has corrupt JPEG data" in r["unreadable"][0]["error"]
    monkeypatch.setattr("dvt_runtime.predict.can_check_jpegs", lambda: False)
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "bad.jpg"), "--out", str(out), "--no-progress"]) == 0


def test_out_never_replaces_a_file_that_is_not_an_earlier_result(onnx_bundle, photos, tmp_path, capsys):
    """--out named a photo (even the one being predicted) and replaced it with JSON; a profile's --out replaced a PNG."""
    photo = tmp_path / "p.png"
    photo.write_bytes((photos / "sub" / "0" / "00.png").read_bytes())
    before = photo.read_bytes()
    assert main(["--bundle", str(onnx_bundle), str(photo), "--out", str(photo), "--no-progress"]) == 2
    assert f"--out {photo} exists and is not an earlier dvt-predictions file" in capsys.readouterr().err
    assert photo.read_bytes() == before
    assert runtime_main(["profile", "--bundle", str(onnx_bundle), "--runs", "12", "--out", str(photo), "--no-progress"]) != 0
    assert "is not an earlier dvt-profile file" in capsys.readouterr().err and photo.read_bytes() == before
    assert main(["--bundle", str(onnx_bundle), str(photo), "--out", str(tmp_path), "--no-progress"]) == 2  # it suggested profile.json
    assert f"is a folder; name the file to write (e.g. {tmp_path / 'predictions.json'})" in capsys.readouterr().err
    out = tmp_path / "preds.json"  # an earlier result is replaced, as before
    assert main(["--bundle", str(onnx_bundle), str(photo), "--out", str(out), "--no-progress"]) == 0
    assert main(["--bundle", str(onnx_bundle), str(photo), "--out", str(out), "--no-progress"]) == 0


def test_an_out_refused_only_when_written_is_one_error_naming_it(onnx_bundle, photos, tmp_path, capsys, monkeypatch):
    """A read-only or pseudo filesystem passes os.access for root: the write at the end raised a traceback (exit 1, the code
    for an unreadable image) naming the temporary file."""
    import tempfile

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".preds.json.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    out = tmp_path / "preds.json"
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0" / "00.png"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: Permission denied; the predictions (printed next) were not saved" in err and ".tmp" not in err


def test_a_throughput_calibrations_name_gets_a_fix_that_works_where_it_was_given(onnx_bundle, photos, capsys):
    """'vm-batch32' was told to pass --batch 32 (predict has none), and in Python to calibrate 'vm-batch32' (refused) or to
    open 'vm' (the batch-1 file)."""
    from dvt_runtime.calibration import CalibrationError

    with pytest.raises(CalibrationError, match=r"name the device \('vm'\); open the bundle with device_name='vm' and call "
                                               r"use_calibration\('vm', batch=32\)"):
        Bundle.open(onnx_bundle, device_name="vm-batch32")
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0" / "00.png"), "--device-name", "vm-batch32", "--no-progress"]) == 2
    assert "predict and the webcam run the device's batch-1 calibration: --device-name 'vm'" in capsys.readouterr().err


def test_the_table_shows_class_names_whole():
    """ImageNet's names were cut at 16 characters ('West Highland wh')."""
    from dvt_runtime.predict import format_result

    row = {"file": "/p/a.jpg", "class_name": "West Highland white terrier", "confidence": 0.5, "exit": 1, "total_ms": 1.0,
           "deadline_skipped": False}
    stats = {"mean": 1.0, "p50": 1.0, "p90": 1.0}
    text = format_result({"images": [row], "unreadable": [], "failed": [], "n_images": 1, "exit_counts": [1], "thresholds_from": "x",
                          "latency_ms": {"cascade": stats, "preprocess": stats}})
    assert "West Highland white terrier  0.500" in text, text
    # a file or class name with an escape sequence or a newline had coloured the terminal or split a row
    text = format_result({"images": [{**row, "file": "/p/esc\x1b[31mred\n.jpg", "class_name": "cat\x1b[0m"}],
                          "unreadable": [{"file": "/p/b\rc.jpg", "error": "cannot read image /p/b\rc.jpg"}], "failed": [], "n_images": 1,
                          "exit_counts": [1], "thresholds_from": "x", "latency_ms": {"cascade": stats, "preprocess": stats}})
    assert "\x1b" not in text and "\r" not in text and len(text.splitlines()) == 4, text
    assert "esc\\x1b[31mred\\n.jpg  cat\\x1b[0m" in text and "cannot read image /p/b\\rc.jpg" in text, text


def test_an_image_far_smaller_than_the_models_input_is_marked(onnx_bundle, tmp_path):
    """A 1x1 px PNG got a class and a confidence at 224 px with nothing said."""
    from dvt_runtime.predict import format_result, predict_files

    cv2.imwrite(str(tmp_path / "dot.png"), np.full((2, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "big.png"), np.full((28, 28), 128, np.uint8))
    r = predict_files(Bundle.open(onnx_bundle), [tmp_path / "dot.png", tmp_path / "big.png"], show_progress=False)
    assert r["images"][0]["upscaled"] == 14.0 and "upscaled" not in r["images"][1]
    assert "(a small image, upscaled 14x)" in format_result(r)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_pipe_named_like_an_image_is_listed_not_waited_on(onnx_bundle, tmp_path):
    """A FIFO named fifo.jpg in a folder of photos had predict wait on it forever (no answer for the good photo either)."""
    import os
    import threading

    from dvt_runtime.predict import image_files, predict_files

    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "fifo.jpg")
    cv2.imwrite(str(folder / "photo.png"), np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    got: dict = {}
    t = threading.Thread(target=lambda: got.update(r=predict_files(Bundle.open(onnx_bundle), image_files([str(folder)]), show_progress=False)),
                         daemon=True)  # a blocked read would leave it waiting: a daemon thread, not a hung test run
    t.start()
    t.join(120)
    assert "r" in got, "predict blocked on the pipe"
    assert got["r"]["n_images"] == 1 and [u["file"] for u in got["r"]["unreadable"]] == [str(folder / "fifo.jpg")]
    assert "not a regular file" in got["r"]["unreadable"][0]["error"]


def test_a_photo_whose_pixels_normalize_into_0_1_is_not_called_unnormalized(onnx_bundle, tmp_path):
    """predict preprocesses the files itself, yet a plain photo whose normalized pixels all fell in [0, 1] was warned as
    '0-1 pixels never normalized' (Python's own arrays of such floats still are)."""
    import warnings

    from dvt_runtime.predict import predict_files

    b = Bundle.open(onnx_bundle)
    lo, hi = (int(np.ceil(255 * b.manifest.preprocess.mean[0])) + 2, int(255 * (b.manifest.preprocess.mean[0] + b.manifest.preprocess.std[0])) - 2)
    img = np.tile(np.array([lo, hi], np.uint8), (28, 14))  # normalized: about 0 and 1
    cv2.imwrite(str(tmp_path / "stripes.png"), img)
    x = b.preprocess(img)
    assert 0 <= x.min() and x.max() <= 1 and x.max() - x.min() > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert predict_files(b, [tmp_path / "stripes.png"], show_progress=False)["n_images"] == 1
    with pytest.warns(UserWarning, match="never normalized"):
        b.predict(x[0])


def test_the_commands_a_message_gives_paste_back_whole(onnx_bundle, photos, tmp_path, capsys):
    """Hints printed bundle paths and device names as they were: pasted, a path with spaces, quotes or $ split into several
    arguments (or expanded). Each command a message gives parses back to the same path and name."""
    import re
    import shlex
    import shutil

    from apps.modes import _calibrate_hint
    from dvt_edge.export.install import ExportError, check_destination

    awkward = tmp_path / "Données été" / "-b $PWD 'q' 模型"
    shutil.copytree(onnx_bundle, awkward)
    for flags, start in ((["--budget-ms", "3", "--device-name", "my phone"], "dvt-runtime calibrate "),
                         (["--deadline-ms", "5"], "dvt-runtime profile ")):
        assert main(["--bundle", str(awkward), str(photos / "sub" / "1"), "--no-progress", *flags]) == 2
        err = capsys.readouterr().err
        argv = shlex.split(re.search(rf"({start}.*?--(?:budget-ms 3 --device-name '[^']*'|out PROFILE\.json))", err).group(1))
        assert argv[argv.index("--bundle") + 1] == str(awkward), err
        assert "--device-name" not in argv or argv[argv.index("--device-name") + 1] == "my phone"
    with pytest.warns(UserWarning, match="no calibration for device 'my phone'"):
        hint = _calibrate_hint(Bundle.open(awkward, device_name="my phone"), 2.0)  # the webcam's
    argv = shlex.split(hint.split("first: ", 1)[1].split(", then")[0])
    assert argv[argv.index("--bundle") + 1] == str(awkward) and argv[argv.index("--device-name") + 1] == "my phone"
    (tmp_path / "my link").symlink_to(awkward)
    with pytest.raises(ExportError) as e:
        check_destination(tmp_path / "my link", False)
    assert shlex.split(re.search(r"\(--out (.*)\); nothing", str(e.value)).group(1)) == [str(awkward)]


def test_a_model_card_code_span_holds_a_path_with_backticks():
    """A card's commands sat in single-backtick spans, which a path with a backtick ends early (the card rendered broken)."""
    from dvt_edge.model_card import _code

    assert _code("python -m x --out 'a b.pt'") == "`python -m x --out 'a b.pt'`"
    assert _code("--out '/t/ft `y`.pt'") == "`` --out '/t/ft `y`.pt' ``" and _code("a `` b") == "``` a `` b ```"


@pytest.mark.parametrize("command", ["predict", "profile"])
def test_a_reader_gone_from_stdout_does_not_lose_the_output_file(onnx_bundle, photos, tmp_path, command):
    """``dvt-runtime predict ... --out preds.json | head -3``: the summary printed first, and a reader gone before it ended
    the command (exit 141) before the file was written; ``profile``'s table likewise. The file is written first."""
    import os
    import subprocess

    out = tmp_path / f"{command}.json"
    args = [str(photos / "sub")] if command == "predict" else ["--runs", "5", "--warmup", "1"]
    p = subprocess.Popen([sys.executable, "-m", "dvt_runtime", command, "--bundle", str(onnx_bundle), *args,
                          "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # every print reaches the pipe: buffered, the old order passed
    p.stdout.close()  # the reader is gone before the command prints anything
    err = p.stderr.read()
    p.wait(timeout=120)
    p.stderr.close()
    assert p.returncode == 141 and "Traceback" not in err, (p.returncode, err[-1000:])
    r = json.loads(out.read_text())
    if command == "profile":
        assert r["schema"].startswith("dvt-profile/") and len(r["stages"]) == 3
        return
    assert r["n_images"] == 12 and len(r["images"]) == 12 and len(r["unreadable"]) == 1  # and the truncated JPEG counted


def test_a_console_that_cannot_encode_a_name_or_has_no_stderr_loses_nothing(onnx_bundle, photos, tmp_path):
    """On an ascii (or a Windows cp1252) stdout, a file named café.png ended predict in a UnicodeEncodeError before its
    --out file was written; with no stderr at all (pythonw, a service, ``2>&-``) the progress bar failed on its first write.
    Names are escaped, the bar is left out, the file is written."""
    import os
    import shutil
    import subprocess

    shutil.copy(photos / "sub" / "0" / "00.png", tmp_path / "café.png")
    cmd = [sys.executable, "-m", "dvt_runtime", "predict", "--bundle", str(onnx_bundle), str(tmp_path / "café.png")]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and "caf\\xe9.png" in r.stdout and "Traceback" not in r.stderr, (r.returncode, r.stderr[-1000:])
    assert json.loads((tmp_path / "a.json").read_text())["images"][0]["file"].endswith("café.png")
    r = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', *cmd, "--out", str(tmp_path / "b.json")], stdout=subprocess.PIPE, text=True,
                       timeout=300)  # the child starts without descriptor 2: sys.stderr is None
    assert r.returncode == 0 and json.loads((tmp_path / "b.json").read_text())["n_images"] == 1, r.returncode


def test_windows_wildcards_are_expanded_and_a_mac_is_named_by_its_stable_name(photos, monkeypatch):
    """Windows' shells pass ``*.png`` as typed: predict said "no such file or folder". macOS's host name follows the network
    (``dhcp-10-1-2-3.corp``), so the calibration a Mac made at home went unused at work: its Bonjour name is used."""
    import subprocess

    import dvt_runtime.device as D
    import dvt_runtime.predict as P

    pattern = str(photos / "sub" / "0" / "*.png")
    with pytest.raises(ValueError, match="no such file or folder"):
        P.image_files([pattern])  # a POSIX shell expands it before the command starts
    monkeypatch.setattr(P, "WINDOWS", True)
    assert [f.name for f in P.image_files([pattern, str(photos / "sub" / "1")])] == ["00.png", "03.png", "06.png", "09.png",
                                                                                      "01.png", "04.png", "07.png", "10.png"]
    with pytest.raises(ValueError, match="no such file or folder"):
        P.image_files([str(photos / "*.nothing")])  # matching nothing: said as before
    from types import SimpleNamespace

    monkeypatch.setattr(D.sys, "platform", "darwin")
    monkeypatch.setattr(D.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "Mikes-MacBook-Pro\n", ""))
    D._bonjour_name.cache_clear()  # asked once per process
    try:
        assert D.this_host() == "Mikes-MacBook-Pro"
        facts = D.device_facts()
        assert facts["device_name"] == "Mikes-MacBook-Pro" and D.profiled_here(SimpleNamespace(device=facts))
        # a profile this Mac took before 0.2.0 named it by its host name: still this host's
        assert D.profiled_here(SimpleNamespace(device=dict(facts, device_name=D.socket.gethostname())))
        assert not D.profiled_here(SimpleNamespace(device=dict(facts, device_name="pixel8")))
        D._bonjour_name.cache_clear()
        monkeypatch.setattr(D.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "not set"))
        assert D.this_host() == D.socket.gethostname()  # no Bonjour name: the host name, as elsewhere
    finally:
        D._bonjour_name.cache_clear()


def test_a_budget_without_the_named_calibration_is_one_error_not_a_warning_first(onnx_bundle, photos, capsys):
    """--device-name NOSUCH --budget-ms 1 warned "using the manifest's default thresholds", then refused the budget: now the
    refusal alone; without a budget the warning still says what runs."""
    import warnings

    argv = ["--bundle", str(onnx_bundle), str(photos / "sub" / "1"), "--device-name", "nosuch", "--no-progress"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main([*argv, "--budget-ms", "1"]) == 2
    assert "--budget-ms needs a calibration of this device" in capsys.readouterr().err
    assert not [w for w in seen if "no calibration for device 'nosuch'" in str(w.message)], [str(w.message) for w in seen]
    with pytest.warns(UserWarning, match="no calibration for device 'nosuch'"):
        assert main(argv) == 0


def test_predict_with_stdout_closed_refuses_instead_of_losing_the_answers(onnx_bundle, photos):
    """A service started with stdout closed (``>&-``) ran every image and exited 0 with the answers gone."""
    import shlex
    import subprocess

    cmd = f"{shlex.quote(sys.executable)} -m dvt_runtime.predict --bundle {shlex.quote(str(onnx_bundle))} {shlex.quote(str(photos / 'sub' / '0'))}"
    r = subprocess.run(cmd + " >&-", shell=True, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 2 and "standard output is closed: the answers would be lost; pass --out FILE" in r.stderr, r.stderr[-800:]


def test_a_backend_failing_at_run_time_is_one_line_naming_the_exit(onnx_bundle, photos, monkeypatch, capsys):
    """An execution provider's failure in the middle of a stage (ONNX Runtime's Fail) was a traceback: one line naming
    the backend, the exit and the reason, with what to try; the Python API raises BackendRunError with the cause chained."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from dvt_runtime.backends import BackendRunError, BackendUnavailable

    def fail(self, *a, **k):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'/conv' "
                   "Status Message: CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR")

    b = Bundle.open(onnx_bundle)
    monkeypatch.setattr(ort.InferenceSession, "run", fail)
    with pytest.raises(BackendRunError, match=r"onnxruntime failed running exit 1 of dvt_micro_fmnist \(Fail: .*CUDNN_STATUS_INTERNAL_ERROR\); compare this host.s onnxruntime") as e:
        b.predict(np.zeros((28, 28), np.uint8))
    assert isinstance(e.value, BackendUnavailable) and isinstance(e.value.__cause__, Fail)
    assert main(["--bundle", str(onnx_bundle), "--no-progress", str(photos / "sub" / "0" / "00.png")]) == 2
    err = capsys.readouterr().err
    assert "error: onnxruntime failed running exit 1 of dvt_micro_fmnist (Fail: [ONNXRuntimeError]" in err and "Traceback" not in err


def test_images_unlike_the_calibrations_are_said_with_what_they_cost(bundle_for_calibration, tmp_path, capsys):
    """A distribution-shift QA run: darker or blurred images reached later exits than the calibration's, a budget ran
    50% over, and predict (and the webcam) said only "OVER". Where the run's images stopped is set against where the
    calibration's did under the same thresholds, in the JSON (``shift``) and, when they differ, in a note naming the cost
    and the calibrate command. (The fixture's calibration stops every image at exit 1: the file is then edited to say
    the calibration's images stopped 20 / 30 / 50%, as a calibration on other images would.)"""
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.latency import LatencyProfile

    b = Bundle.open(bundle_for_calibration)
    m = b.manifest
    ident = {"model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend}
    prof = LatencyProfile.from_samples([[0.2, 0.2, 0.3, 0.2], [0.4, 0.5, 0.4, 0.4], [0.9, 0.8, 0.9, 0.9]],
                                       device={"device_name": "box"}, bundle=ident)
    x, y = load_dataset("fashion-mnist", "val", limit=300, seed=1).arrays()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture is near chance: its notes are not this test's
        cal = calibrate(b, x, y, 0.8, profile=prof, progress=False, allow_chance=True, verify=False)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, im in enumerate(load_dataset("fashion-mnist", "val", limit=120, seed=2).images):
        cv2.imwrite(str(d / f"{i:03d}.png"), im)

    def run(*extra: str) -> tuple[dict, str]:
        capsys.readouterr()
        assert main(["--bundle", str(bundle_for_calibration), str(d), "--device-name", "box", "--out", str(tmp_path / "p.json"),
                     "--no-progress", *extra]) == 0
        return json.loads((tmp_path / "p.json").read_text()), capsys.readouterr().err

    r, err = run()
    counts = np.asarray(r["exit_counts"])
    s = r["shift"]
    assert s["expected_exit_fractions"] == pytest.approx(cal.chosen.predicted["exit_fractions"])
    assert s["exit_fractions"] == pytest.approx(counts / 120) and s["n"] == 120
    assert s["total_variation"] == pytest.approx(0.5 * np.abs(counts / 120 - np.asarray(s["expected_exit_fractions"])).sum())
    assert s["unlike_calibration"] == (s["total_variation"] >= 0.15) == ("unlike the images the device" in err)
    assert r["confidence"]["mean"] == pytest.approx(np.mean([x["confidence"] for x in r["images"]]))
    f = bundle_for_calibration / "calibration" / "box.json"
    c = json.loads(f.read_text())
    c["chosen"]["predicted"]["exit_fractions"] = [0.2, 0.3, 0.5]  # the calibration's images stopped later than these do
    f.write_text(json.dumps(c))
    r, err = run()
    s, got = r["shift"], np.asarray(r["exit_counts"]) / 120
    assert s["unlike_calibration"] and s["total_variation"] == pytest.approx(0.5 * np.abs(got - [0.2, 0.3, 0.5]).sum())
    exit_ms = np.asarray(cal.exit_mean_ms())
    assert (s["priced_ms"], s["expected_priced_ms"]) == (pytest.approx(got @ exit_ms), pytest.approx(exit_ms @ [0.2, 0.3, 0.5]))
    assert "note: these 120 images stopped at exits 1-3 " in err and "where the calibration's images stopped 20 / 30 / 50% under the same" in err
    assert "calibrate on labelled images like them: python -m dvt_runtime.calibrate --bundle" in err and "--device-name box" in err
    assert r["bundle_identity"]["artifacts"] == [e.sha256 for e in m.exits] and r["bundle_identity"]["content_sha256"] == m.content_sha256
    assert r["calibration"]["file"] == str(bundle_for_calibration / "calibration" / "box.json") and r["calibration"]["created"] == cal.created
    assert r["device"]["cpu_model"] is not None and "dvt_runtime" in r["device"]  # the machine, as a profile records it
    assert any("calibrated at another setting" in n for n in r["notes"])  # open's warning (another thread count): in the file too
    assert "note: /" not in err  # ... and said once on stderr (as the warning it is), not again as a note
    r, _ = run("--budget-ms", "0.8")  # the budget controller's rows: where the calibration's images stopped under each
    assert all(len(x["budget_thresholds"]) == 3 and x["speed_scale"] > 0 and x["mix_scale"] > 0 for x in r["images"])  # which row, why
    assert r["budget_met"] is bool(np.mean([x["predict_ms"] for x in r["images"]]) <= 0.8)  # the summary's verdict, in the JSON
    assert r["shift"] is not None and sum(r["shift"]["expected_exit_fractions"]) == pytest.approx(1)
    r, _ = run("--thresholds", "0.5,0.5")  # thresholds no calibration measured are compared with nothing
    assert r["shift"] is None and r["budget_met"] is None
    from dvt_runtime.device import this_host

    here = bundle_for_calibration / "calibration" / f"{this_host()}.json"  # this host's, stale (the bundle re-exported since):
    here.write_text(json.dumps({**c, "device": this_host(), "bundle": {**c["bundle"], "artifacts": ["0" * 64] * 3}}))
    capsys.readouterr()  # budget mode had said only "none usable at", the reason on a warning before it
    assert main(["--bundle", str(bundle_for_calibration), str(d), "--budget-ms", "0.8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"none usable at {here}: " in err and "was made for other artifacts" in err.split("none usable at")[1], err
    here.unlink()
    for damaged in ([0.5, None, 0.5], "0.5", [0.5, 0.5]):  # an edited file's row: no yardstick, and no traceback after every image
        c["chosen"]["predicted"]["exit_fractions"] = damaged
        f.write_text(json.dumps(c))
        r, _ = run()
        assert r["shift"] is None and r["n_images"] == 120


def test_labels_from_folders_score_the_answers_as_the_datasets_labels_do(onnx_bundle, tmp_path, capsys):
    """``--labels folders``: each image's class is its folder's name (punctuation and case aside: no folder can be named
    ``T-shirt/top``); the score agrees with the dataset's own labels, image by image, per exit and per class."""
    ds = load_dataset("fashion-mnist", "val", limit=40, seed=5)
    classes = Bundle.open(onnx_bundle).manifest.classes
    for i in range(len(ds)):
        folder = tmp_path / "val" / classes[int(ds.labels[i])].replace("/", "_").upper()  # T-SHIRT_TOP
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:03d}.png"), ds.images[i])
    truth = {str(f): int(ds.labels[int(f.stem)]) for f in (tmp_path / "val").rglob("*.png")}
    out = tmp_path / "preds.json"
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "val"), "--labels", "folders", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    rows, acc = r["images"], r["accuracy"]
    assert len(rows) == 40 and {x["file"]: x["true_label"] for x in rows} == truth
    right = [x["label"] == truth[x["file"]] for x in rows]
    assert [x["correct"] for x in rows] == right and acc["correct"] == sum(right) and acc["n"] == 40
    assert acc["top1"] == pytest.approx(100 * sum(right) / 40) and acc["interval95"][0] <= acc["top1"] <= acc["interval95"][1]
    for e, x in enumerate(acc["per_exit"], 1):
        assert (x["answered"], x["correct"]) == (sum(r["exit"] == e for r in rows), sum(ok for r, ok in zip(rows, right) if r["exit"] == e))
    by_class = collections.Counter(truth.values())
    assert {c["label"]: c["n"] for c in acc["per_class"]} == by_class and sum(c["correct"] for c in acc["per_class"]) == sum(right)
    assert set(acc["classes_absent"]) == {c for i, c in enumerate(classes) if i not in by_class}
    assert f"accuracy on 40 labelled images: {acc['top1']:.2f}%" in printed and "weakest classes: " in printed


def test_labels_from_folders_that_name_no_class_are_refused_before_any_image(onnx_bundle, photos, tmp_path, capsys):
    out = tmp_path / "preds.json"
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--labels", "folders", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'0' (4 images)" in err and "name none of the bundle's classes" in err and "DIR/<class>/*.jpg" in err and not out.exists()
    with pytest.raises(SystemExit) as e:  # argparse: the choices listed
        main(["--bundle", str(onnx_bundle), str(photos), "--labels", "files"])
    assert e.value.code == 2 and "choose from 'folders'" in capsys.readouterr().err


@pytest.mark.parametrize("how, code", [("SIGTERM", 143), ("", 130)])
def test_an_interrupted_run_keeps_the_answers_so_far(onnx_bundle, photos, tmp_path, capsys, monkeypatch, how, code):
    """SIGTERM (a job's time limit, docker stop) or Ctrl-C midway: the images answered until then are written and summed
    up (``interrupted``, ``n_files``), then it ends as an interrupt does (a 3-hour job had lost every answer)."""
    import dvt_runtime.predict as predict_module
    from dvt_runtime.console import run_cli

    real, seen = predict_module.read_image, []

    def read(f, strict=False):
        seen.append(f)
        if len(seen) == 6:  # the signal arrives while the sixth file is read
            raise KeyboardInterrupt(how) if how else KeyboardInterrupt()
        return real(f, strict=strict)

    monkeypatch.setattr(predict_module, "read_image", read)
    out = tmp_path / "preds.json"
    assert run_cli(lambda: main(["--bundle", str(onnx_bundle), str(photos), "--out", str(out), "--no-progress"])) == code
    std = capsys.readouterr()
    r = json.loads(out.read_text())
    assert r["n_images"] == len(r["images"]) == 5 and r["interrupted"] == (how or "Ctrl-C") and r["n_files"] == 13
    assert sum(r["exit_counts"]) == 5 and [x["file"] for x in r["images"]] == [str(f) for f in seen[:5]]
    assert "5 images (0 unreadable)" in std.out and f"stopped after answering 5 of the 13 images given; the answers so far are in {out}" in std.err
    assert f"interrupted ({how or 'Ctrl-C'}): stopped" in std.err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dvt-rows-")]  # the answers' spool removed


def test_a_run_on_a_busy_cpu_records_it_and_says_so(onnx_bundle, photos, tmp_path, capsys, monkeypatch):
    """predict's latencies (and a budget's OVER) taken while other processes held the cores are this host's under that
    load: the file records how much the run waited for a CPU, and a busy run says so with the fix (calibrate and the
    benchmark did; predict had recorded nothing)."""
    import dvt_runtime.predict as P

    out = tmp_path / "p.json"
    monkeypatch.setattr(P, "contention_since", lambda snap: {"wait_pct": 0.4, "steal_pct": None})  # this test's machine may be busy
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["contention"] == {"wait_pct": 0.4, "steal_pct": None} and r["notes"] == [] and "busy" not in capsys.readouterr().err
    monkeypatch.setattr(P, "contention_since", lambda snap: {"wait_pct": 22.5, "steal_pct": 0.0})
    assert main(["--bundle", str(onnx_bundle), str(photos / "sub" / "0"), "--out", str(out), "--no-progress"]) == 0
    r, err = json.loads(out.read_text()), capsys.readouterr().err
    assert r["contention"]["wait_pct"] == 22.5
    said = "the CPU was busy while predicting (its threads waited for a CPU 22.5% of their runnable time"
    assert any(n.startswith(said) and "run again with the device idle" in n for n in r["notes"]) and f"note: {said}" in err


def test_predict_holds_no_answer_in_memory_and_writes_what_it_held(onnx_bundle, photos, tmp_path, capsys, monkeypatch):
    """Every answer had been held in memory until the end (4.8 KB an image: 195 MB for 20,000 CIFAR JPEGs, gigabytes for
    a million): answers now go to a spool on disk as they come, the summary keeps a few numbers an image, and the file is
    the one the answers held in memory would have written. Python's own allocations per image, traced (tracemalloc),
    stay far under a row's; no spool is left behind."""
    import tracemalloc

    import dvt_runtime.predict as P

    src = sorted((photos / "sub" / "0").glob("*.png"))[0]
    for n in (40, 400):
        folder = tmp_path / f"n{n}" / "Shirt"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:04d}.png").write_bytes(src.read_bytes())
    held, report = {}, P._report

    def at_the_end(args, r, *rest):  # every image answered, nothing written yet: what the answers hold
        held[len(r["images"])] = tracemalloc.get_traced_memory()[0]
        return report(args, r, *rest)

    monkeypatch.setattr(P, "_report", at_the_end)
    for n in (40, 400):
        out = tmp_path / f"n{n}.json"
        tracemalloc.start()
        assert main(["--bundle", str(onnx_bundle), str(tmp_path / f"n{n}"), "--out", str(out), "--no-progress", "--labels", "folders"]) == 0
        tracemalloc.stop()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dvt-rows-")]  # the spool removed
    per_image = (held[400] - held[40]) / 360  # the file list and labels are the input's
    assert per_image < 600, f"{per_image:.0f} bytes an image"  # 280 measured; rows held in memory: 1,060 here
    r = json.loads((tmp_path / "n400.json").read_text())
    assert r["n_images"] == len(r["images"]) == 400 and r["accuracy"]["n"] == 400 and all("correct" in x for x in r["images"])
    want = json.dumps({**r}, indent=2) + "\n"  # the file is exactly the answers' JSON
    assert (tmp_path / "n400.json").read_text() == want
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("0") for line in printed) == 440  # every answer's line in the table


def test_a_spool_whose_disk_fills_keeps_every_answer_in_memory(onnx_bundle, photos, tmp_path):
    """The spool's disk full midway (an OSError at a row) had ended predict with exit 2 and no answer kept: the answers
    so far are read back and the rest kept in memory, every one answered, and the notes say why."""
    import errno

    from dvt_runtime.answers import RowSpool
    from dvt_runtime.predict import image_files, predict_files

    class Filling(RowSpool):
        def append(self, row):
            if len(self) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().append(row)

    files = image_files([str(photos / "sub")])
    with Filling(tmp_path) as spool:
        r = predict_files(Bundle.open(onnx_bundle), files, show_progress=False, rows=spool)
        assert isinstance(r["images"], list) and len(r["images"]) == r["n_images"] == len(files) - 1  # (one is unreadable)
        assert [x["file"] for x in r["images"][:2]] == [x["file"] for x in spool]
    assert any("could not be written" in n and "from image 3 on were kept in memory" in n for n in r["notes"]), r["notes"]
