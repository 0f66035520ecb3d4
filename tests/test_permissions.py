"""A bundle another user made: its calibration folder or file this user may not read (root calibrated under umask 077, a
service runs as its own user). Emulated (the suite may run as root, whom permissions do not stop): ``os.stat`` refuses
the calibration as the OS does there."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import warnings

import numpy as np
import pytest

from dvt_runtime.bundle import Bundle
from dvt_runtime.calibration import CalibrationError
from dvt_runtime.device import open_here, this_host


@pytest.fixture
def locked(onnx_bundle, tmp_path, monkeypatch):
    """A copy of the bundle whose calibration/ (this host's file in it) this user may not search."""
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    (b / "calibration").mkdir(exist_ok=True)
    (b / "calibration" / f"{this_host()}.json").write_text(json.dumps({"device": this_host()}))
    real = os.stat

    def stat(path, *a, **k):
        p = pathlib.Path(path)
        if p.parent.name == "calibration" and p.parent.parent == b:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "stat", stat)  # what Path.stat asks too
    return b


def test_an_unreadable_calibration_leaves_the_default_run_alone(locked, capsys):
    """Defaulted to this host's calibration, predict (and the webcam) ended at exit 2 with a bare "Permission denied" even
    with --thresholds: now they run without it and say why, as for any calibration they cannot use."""
    from dvt_runtime.predict import main

    with pytest.warns(UserWarning, match=r"this host's calibration is not used \(calibration .* cannot be read by this user"):
        b = open_here(locked, threads=1)
    assert b.calibration is None and b.predict(np.full((28, 28), 128, np.uint8)).exit in range(b.num_exits)
    import cv2

    cv2.imwrite(str(locked.parent / "a.png"), np.full((28, 28), 128, np.uint8))
    with pytest.warns(UserWarning, match="cannot be read by this user"):
        assert main(["--bundle", str(locked), str(locked.parent / "a.png"), "--thresholds", "0.5,0.5", "--no-progress"]) == 0
    assert "1 images" in capsys.readouterr().out


def test_an_unreadable_calibration_asked_for_is_a_calibration_error(locked):
    """Asked for by name through the API, it was a PermissionError traceback; the README promises a CalibrationError (a
    ValueError) that names the file and the fix."""
    with pytest.raises(CalibrationError, match=r"cannot be read by this user \(Permission denied\): .*chmod a\+rX"):
        Bundle.open(locked, device_name=this_host())
    b = Bundle.open(locked, device_name="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CalibrationError, match="cannot be read by this user"):
            b.use_calibration("another-device")  # the folder itself is closed to this user


def test_a_bundle_this_user_may_not_read_says_so(onnx_bundle, monkeypatch, capsys, tmp_path):
    """An artifact another user made with mode 600 gave "error: [Errno 13] Permission denied: '.../exit2.onnx'" and nothing
    else; it is a ManifestError (exit 2) saying what to change."""
    import builtins

    import cv2

    from dvt_runtime.manifest import ManifestError
    from dvt_runtime.predict import main

    cv2.imwrite(str(tmp_path / "a.png"), np.full((28, 28), 9, np.uint8))
    real = builtins.open

    def closed(file, *a, **k):
        if str(file).endswith("exit2.onnx"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", closed)
    with pytest.raises(ManifestError, match=r"exit2.onnx cannot be read by this user \(Permission denied\): let it read the bundle "
                                            r"\(e.g. chmod -R a\+rX "):
        Bundle.open(onnx_bundle, device_name="")
    assert main(["--bundle", str(onnx_bundle), str(tmp_path / "a.png"), "--no-progress"]) == 2
    assert "cannot be read by this user" in capsys.readouterr().err
