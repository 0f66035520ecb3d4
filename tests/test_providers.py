"""Where the exits really ran: a Jetson's or a GPU server's ONNX Runtime (onnxruntime-gpu, an execution provider that could
not start), and the device name of a container. The real ONNX Runtime runs every session here; what a GPU host would
report is played by its provider list."""

from __future__ import annotations

import json
import shutil
import warnings
from importlib import metadata

import numpy as np
import onnxruntime as ort
import pytest

from dvt_runtime.backends import available_backends, backend_version
from dvt_runtime.bundle import Bundle

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_onnxruntime_gpu_counts_as_onnxruntime(monkeypatch):
    """NVIDIA's wheel is the distribution onnxruntime-gpu (the same module): it counted as no onnxruntime at all, so the
    benchmark skipped every ONNX row there and profiles recorded no version."""
    real = metadata.version

    def only_gpu(dist):
        if dist == "onnxruntime":
            raise metadata.PackageNotFoundError(dist)
        return "1.23.0" if dist == "onnxruntime-gpu" else real(dist)

    monkeypatch.setattr(metadata, "version", only_gpu)
    assert backend_version("onnxruntime") == "1.23.0" and "onnxruntime" in available_backends()
    monkeypatch.setattr(metadata, "version", lambda d: (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert backend_version("onnxruntime") is None and available_backends() == []


@pytest.fixture
def gpu_build(monkeypatch):
    """This ONNX Runtime says it has CUDA, as onnxruntime-gpu does on a host whose CUDA libraries then fail to load: the
    session falls back to the CPU (ONNX Runtime's real fallback), saying so only in its log."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CUDA))


def test_a_provider_that_could_not_start_is_said_once_and_recorded(onnx_bundle, gpu_build, tmp_path):
    with pytest.warns(UserWarning) as seen:
        b = Bundle.open(onnx_bundle, providers=CUDA, device_name="")
    said = [str(w.message) for w in seen if "could not start" in str(w.message)]
    assert said == ["ONNX Runtime could not start ['CUDAExecutionProvider'] (this build has it, but its libraries did not load: "
                    "CUDA, cuDNN or TensorRT missing or of another version; ONNX Runtime's log says which): the exits run on "
                    "['CPUExecutionProvider'], and latencies measured now are theirs"]  # once for the bundle, not per exit
    assert b.providers == ["CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(onnx_bundle, device_name="")  # the default (the CPU): nothing to say
    import cv2

    from dvt_runtime.predict import main

    cv2.imwrite(str(tmp_path / "a.png"), np.full((28, 28), 99, np.uint8))
    out = tmp_path / "p.json"
    with pytest.warns(UserWarning, match="could not start"):
        assert main(["--bundle", str(onnx_bundle), str(tmp_path / "a.png"), "--providers", ",".join(CUDA), "--out", str(out),
                     "--device-name", "x", "--no-progress"]) == 0
    assert json.loads(out.read_text())["providers"] == ["CPUExecutionProvider"]  # where the exits ran, not what was asked


def test_a_providers_options_reach_onnx_runtime(onnx_bundle, tmp_path, monkeypatch, capsys):
    """A Jetson's TensorRT session rebuilt its engines (minutes) at every start: there was no way to pass its engine cache
    (or FP16) to ONNX Runtime. Options ride with their provider: ``NAME:KEY=VALUE;KEY=VALUE`` on the command line, ``(name,
    options)`` in Python, as ONNX Runtime takes them."""
    from dvt_runtime import backends
    from dvt_runtime.backends import parse_providers
    from dvt_runtime.predict import main

    trt = "TensorrtExecutionProvider:trt_fp16_enable=1;trt_engine_cache_enable=1;trt_engine_cache_path=/var/cache/trt"
    assert parse_providers(f"{trt}, CUDAExecutionProvider,CPUExecutionProvider") == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/var/cache/trt"}),
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    given = []
    real = ort.InferenceSession

    def session(path, so=None, providers=None, **k):  # what ONNX Runtime was asked for
        given.append(providers)
        return real(path, so, providers=["CPUExecutionProvider"], **k)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *CUDA])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.warns(UserWarning, match=r"could not start \['TensorrtExecutionProvider', 'CUDAExecutionProvider'\]"):
        b = Bundle.open(onnx_bundle, providers=parse_providers(f"{trt},{','.join(CUDA)}"), device_name="")
    assert len(given) == 3 and given[0][0] == ("TensorrtExecutionProvider", parse_providers(trt)[0][1]) and given[0][1:] == CUDA
    assert b.providers == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CUDA))  # a build without TensorRT: said by name
    with pytest.warns(UserWarning, match=r"provider\(s\) \['TensorrtExecutionProvider'\] not available here; using \['CPUExecutionProvider'\]"):
        Bundle.open(onnx_bundle, providers=[parse_providers(trt)[0], "CPUExecutionProvider"], device_name="")
    for bad in ("TensorrtExecutionProvider:", "TensorrtExecutionProvider:trt_fp16_enable"):
        assert main(["--bundle", str(onnx_bundle), str(tmp_path), "--providers", bad, "--no-progress"]) == 2
        assert "a provider's options are NAME:KEY=VALUE;KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"providers must be a list of execution provider names or \(name, options\) pairs"):
        Bundle.open(onnx_bundle, providers=[("CUDAExecutionProvider", "device_id=0")], device_name="")
    assert backends.provider_name(("CUDAExecutionProvider", {})) == "CUDAExecutionProvider"


def test_a_cuda_profile_does_not_count_as_measured_here_on_the_cpu(onnx_bundle, tmp_path):
    """calibrate took a profile of this host as this setting's whatever its providers: thresholds priced on CUDA latencies
    were "verified" on the CPU and the file said "taken on this host". Another setting now says so and is not measured here."""
    from dvt_edge.data import load_dataset
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.profile import profile_bundle

    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    b = Bundle.open(copy, device_name="")
    x, y = load_dataset("fashion-mnist", "val").arrays(40, seed=3)
    prof = profile_bundle(b, warmup=1, runs=8, threads=1, progress=False)
    prof.device["providers"] = list(CUDA)  # what a Jetson's profile records
    with pytest.warns(UserWarning, match=r"the profile was taken on this host at execution providers \['CUDAExecutionProvider', "
                                         r"'CPUExecutionProvider'\], this bundle runs \['CPUExecutionProvider'\]"):
        cal = calibrate(b, x, y, 1e6, profile=prof, runs=8, warmup=1, progress=False, allow_chance=True)
    assert "taken on this host at execution providers ['CUDAExecutionProvider', 'CPUExecutionProvider'], this bundle runs " \
           "['CPUExecutionProvider']: not measured here" in cal.note  # the file says why too (it said the threads, which agreed)
    prof.device["providers"] = ["CPUExecutionProvider"]  # this setting's: measured here, nothing to say about the setting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrate(b, x, y, 1e6, profile=prof, runs=8, warmup=1, progress=False, allow_chance=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        calibrate(b, x, y, 1e6, profile=prof, runs=8, warmup=1, progress=False, allow_chance=True)
    assert not [w for w in seen if "the profile was taken on this host at" in str(w.message)]


def test_dvt_device_name_names_this_host(monkeypatch):
    """A container's host name is its pod's, new at every restart: its calibration was never found again. DVT_DEVICE_NAME
    names the host for every command and Bundle.open; a name no calibration file can have is refused as --device-name is."""
    from dvt_runtime.device import device_facts, this_host

    monkeypatch.setenv("DVT_DEVICE_NAME", " kiosk-3 ")
    assert this_host() == "kiosk-3" and device_facts()["device_name"] == "kiosk-3"
    for bad in (".kiosk", "kiosk.json", "k-batch8"):
        monkeypatch.setenv("DVT_DEVICE_NAME", bad)
        with pytest.raises(ValueError, match=rf"DVT_DEVICE_NAME={bad!r} names no device.s calibration file .* or unset it"):
            this_host()
    monkeypatch.setenv("DVT_DEVICE_NAME", "  ")
    assert this_host() not in ("", "  ")  # blank: the host's own name


def test_onnx_runtime_sends_no_telemetry_from_a_device(onnx_bundle, tmp_path):
    """ONNX Runtime 1.29+ sends usage telemetry from POSIX hosts and keeps a device identifier in ~/.cache/Microsoft (on a
    read-only home it printed a warning on every command): off unless the user asked for it (ORT_DISABLE_TELEMETRY)."""
    import os
    import subprocess
    import sys

    code = f"import dvt_runtime, os; b = dvt_runtime.Bundle.open({str(onnx_bundle)!r}, device_name=''); print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    r = subprocess.run([sys.executable, "-c", code], env=dict(env, HOME=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr[-1000:]
    assert not (tmp_path / ".cache").exists() and not r.stderr.strip()  # no identifier written, nothing said


def test_telemetry_is_turned_off_when_onnxruntime_was_imported_first(onnx_bundle, monkeypatch):
    """ONNX Runtime reads ORT_DISABLE_TELEMETRY once, at its import: an app importing it before dvt_runtime had telemetry
    on. Opening a bundle turns its events off (unless the user set the variable otherwise)."""
    import onnxruntime

    from dvt_runtime import Bundle

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1))
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")
    Bundle.open(onnx_bundle, device_name="").close()
    assert calls  # once per session: harmless
    calls.clear()
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")  # the user's choice stands
    Bundle.open(onnx_bundle, device_name="").close()
    assert not calls
