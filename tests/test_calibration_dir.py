"""A bundle that cannot be written (an OTA image, a read-only container layer) calibrated into another folder:
``--calibration-dir DIR`` (``calibration_dir=``) for calibrate, predict and the webcam."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dvt_edge.data import load_dataset
from dvt_runtime.bundle import Bundle
from dvt_runtime.calibration import CalibrationError, missing_calibration, rewrite_command


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def setup(onnx_bundle, tmp_path):
    b = tmp_path / "ro bundle"
    shutil.copytree(onnx_bundle, b)
    ds = load_dataset("fashion-mnist", "val", limit=60, seed=2)
    np.savez(tmp_path / "val.npz", images=ds.images, labels=ds.labels)
    (tmp_path / "img").mkdir()
    import cv2

    for i in range(4):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), ds.images[i])
    return b, tmp_path / "cal dir", tmp_path


def test_calibrate_and_predict_through_a_calibration_dir(setup, capsys):
    from dvt_runtime.calibrate import main as calibrate_main
    from dvt_runtime.predict import main as predict_main

    b, d, tmp = setup
    before = _tree(b)
    assert calibrate_main(["--bundle", str(b), "--data", str(tmp / "val.npz"), "--budget-ms", "1e6", "--runs", "6", "--device-name",
                           "dev", "--calibration-dir", str(d), "--no-progress"]) == 0
    assert f"wrote {d / 'dev.json'}" in capsys.readouterr().out
    assert _tree(b) == before and not (b / "calibration").exists()  # the bundle is left exactly as it was
    made = json.loads((d / "dev.json").read_text())
    assert made["device"] == "dev" and "--calibration-dir" in made["command"]

    out = tmp / "p.json"  # predict reads it there: its thresholds and its budget table
    assert predict_main(["--bundle", str(b), str(tmp / "img"), "--device-name", "dev", "--calibration-dir", str(d), "--budget-ms",
                         "1e6", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["thresholds_from"].startswith("the budget controller on the calibration of 'dev'"), r["thresholds_from"]
    capsys.readouterr()
    assert predict_main(["--bundle", str(b), str(tmp / "img"), "--device-name", "dev", "--budget-ms", "1e6", "--no-progress"]) == 2
    err = capsys.readouterr().err  # without the folder: none in the bundle, and the hint is the bundle's own calibrate command
    assert "--budget-ms needs a calibration of this device" in err and "--calibration-dir" not in err, err

    cal = Bundle.open(b, device_name="dev", calibration_dir=d)  # the API as the CLI
    assert cal.calibration is not None and cal.calibration_path("dev") == d / "dev.json"
    assert cal.default_thresholds() == cal.calibration.chosen.thresholds
    with pytest.warns(UserWarning, match=r"no calibration for device 'phone' in .*cal dir \(it holds \['dev'\]\)"):
        assert Bundle.open(b, device_name="phone", calibration_dir=d).calibration is None
    with pytest.raises(FileNotFoundError, match=r"no calibration for device 'phone' at batch 1 in .*cal dir \(run python -m "
                                                r"dvt_runtime.calibrate --bundle '.*ro bundle' --calibration-dir '.*cal dir'\)"):
        cal.use_calibration("phone")


def test_the_hints_name_the_calibration_dir(setup):
    b, d, _ = setup
    d.mkdir()
    (d / "dev.json").write_text("{not json")
    with pytest.raises(CalibrationError, match=r"not valid JSON .*rewrite it: python -m dvt_runtime.calibrate --bundle '.*ro bundle' "
                                               r"--calibration-dir '.*cal dir' --data VAL.npz"):
        Bundle.open(b, device_name="dev", calibration_dir=d)
    # a file in the bundle's own calibration/ is rewritten there, as before
    assert rewrite_command(b / "calibration" / "dev.json") == rewrite_command(b / "calibration" / "dev.json", b)
    assert "--calibration-dir" not in rewrite_command(b / "calibration" / "dev.json", b)
    said = missing_calibration(d / "nothing" / "x.json", "x", 1, "the manifest's default thresholds")
    assert "(no such folder)" in said and "calibrate this device into it (--calibration-dir" in said and "copied" not in said, said
    with pytest.raises(ValueError, match=r"calibration_dir \(--calibration-dir\) .*dev.json is a file, not a folder"):
        Bundle.open(b, calibration_dir=d / "dev.json")
    with pytest.raises(ValueError, match=r"calibration_dir \(--calibration-dir\) must be a folder path, got 3"):
        Bundle.open(b, calibration_dir=3)


def test_the_budget_hint_of_the_api_names_the_folder(setup):
    b, d, _ = setup
    bundle = Bundle.open(b, device_name="", calibration_dir=d)
    bundle.device_name = "dev"
    with pytest.raises(ValueError, match=r"run python -m dvt_runtime.calibrate --bundle '.*ro bundle' --calibration-dir '.*cal dir' "
                                         r"--device-name dev"):
        bundle.predict(np.zeros((28, 28), np.uint8), budget_ms=5.0)


def test_the_webcam_opens_the_bundle_with_the_folder(setup):
    from apps.sources import open_bundle
    from apps.webcam import parse_args
    from dvt_runtime.calibrate import calibrate

    b, d, tmp = setup
    with np.load(tmp / "val.npz") as z:
        x, y = Bundle.open(b).preprocess(z["images"][:, :, :, None]), z["labels"]
    calibrate(Bundle.open(b, calibration_dir=d), x, y, 1e6, device_name="cam", runs=6, warmup=2, progress=False)
    assert (d / "cam.json").is_file() and not (b / "calibration").exists()
    args = parse_args(["--bundle", str(b), "--video", str(tmp / "none.mp4"), "--device-name", "cam", "--calibration-dir", str(d),
                       "--headless"])
    bundle = open_bundle(args)
    assert bundle.calibration_dir == d and bundle.calibration is not None and bundle.calibration.device == "cam"
