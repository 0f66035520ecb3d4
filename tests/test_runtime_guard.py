"""The runtime refuses what would silently run wrong: edited manifests, misspelled options, a batch
calibration's p90s in deadline mode, calibrations that would replace another device's, profiles
that name no bundle."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dvt_runtime import Bundle
from dvt_runtime.bundle import InputError
from dvt_runtime.manifest import Manifest, ManifestError
from tests.test_batching import _images


@pytest.fixture()
def bundle_copy(onnx_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    return dst


def _edit(bundle, fn) -> None:
    p = bundle / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _calibrate(b, name, batch=1, **kw):
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.profile import MIN_RUNS

    x = _images(32, b.input_shape, seed=6)
    y = np.argmax(b.run_exits(x)[-1], -1)
    return calibrate(b, x, y, budget_ms=10.0, runs=MIN_RUNS, warmup=2, device_name=name, progress=False, batch=batch, **kw)


def test_edited_manifest_is_refused_and_can_be_sealed_again(bundle_copy):
    m = Manifest.load(bundle_copy)
    assert m.schema_version == 2 and m.content_sha256 == m.content_digest()
    _edit(bundle_copy, lambda d: d["classes"].reverse())  # every label wrong, artifacts untouched
    with pytest.raises(ManifestError, match="edited after export"):
        Bundle.open(bundle_copy)
    edited = Manifest.load(bundle_copy, verify=False)
    edited.save(bundle_copy)  # an intended edit, sealed again
    assert Bundle.open(bundle_copy).classes == list(reversed(m.classes))
    _edit(bundle_copy, lambda d: (d["classes"].reverse(), d.update(schema_version=1)))  # "version 1" with a digest: still sealed
    with pytest.raises(ManifestError, match="edited after export"):
        Bundle.open(bundle_copy)
    _edit(bundle_copy, lambda d: (d.pop("content_sha256"), d.update(schema_version=1)))  # a version-1 bundle: no digest
    with pytest.warns(UserWarning, match="version-1 manifest, which has no digest of its own fields.*re-export the bundle, or seal it as it is with Manifest.load"):
        Bundle.open(bundle_copy)  # it opens (bundles exported before the digest), and says what is not checked
    sealed = Manifest.load(bundle_copy)
    assert sealed.schema_version == 1  # as written: loading does not change it
    # the pil-bicubic resize is version 3 (a version-2 runtime called such a manifest malformed); others are still written as 2
    sealed.preprocess = dataclasses.replace(sealed.preprocess, interpolation="pil-bicubic")
    sealed.save(bundle_copy)
    assert json.loads((bundle_copy / "manifest.json").read_text())["schema_version"] == 3
    sealed = Manifest.load(bundle_copy)
    sealed.preprocess = dataclasses.replace(sealed.preprocess, interpolation=m.preprocess.interpolation)
    sealed.parity.exits[0].max_abs_diff_batched = float("nan")  # a failed check is recorded as measured
    sealed.parity.passed = False  # as export writes it: a report that says passed over a NaN is refused as edited
    sealed.save(bundle_copy)
    assert np.isnan(Manifest.load(bundle_copy).parity.exits[0].max_abs_diff_batched)
    assert json.loads((bundle_copy / "manifest.json").read_text())["schema_version"] == 2
    _edit(bundle_copy, lambda d: d["preprocess"].update(size=d["preprocess"]["size"] + 4, resize=d["preprocess"]["resize"] + 4))
    with pytest.raises(ManifestError, match="preprocess makes .* but exit 1 takes"):
        Manifest.load(bundle_copy)
    (bundle_copy / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ManifestError, match="not UTF-8"):
        Manifest.load(bundle_copy)


def test_open_checks_the_graphs_tensors(bundle_copy):
    m = Manifest.load(bundle_copy)
    m.exits[1].outputs[0].name = "lgts"
    m.save(bundle_copy)
    with pytest.raises(ManifestError, match="'lgts' is not in the graph"):
        Bundle.open(bundle_copy)
    m.exits[1].outputs[0].name = "logits"
    shape = m.exits[2].inputs[-1].shape
    m.exits[2].inputs[-1].shape = [*shape[:-1], shape[-1] + 1]
    with pytest.raises(ManifestError, match="exit 3's input relations .* is not what exit 2 gives"):
        m.save(bundle_copy)  # one cascade's chain, checked before any graph is read
    m.exits[1].outputs[-1].shape = list(m.exits[2].inputs[-1].shape)  # the chain holds, the graphs differ
    m.save(bundle_copy)
    with pytest.raises(ManifestError, match="in the graph, .* in the manifest"):
        Bundle.open(bundle_copy)


def test_open_refuses_unknown_options_and_bad_threads(onnx_bundle):
    for kw, err, match in ((dict(provider=["CUDAExecutionProvider"]), TypeError, r"no option\(s\) \['provider'\]"),
                           (dict(etdump=True), TypeError, "etdump"),
                           (dict(providers="CPUExecutionProvider"), ValueError, "list of execution provider names"),
                           (dict(providers=[]), ValueError, "list of execution provider names"),  # was silently taken
                           (dict(threads=-1), ValueError, "threads"), (dict(threads=1.5), ValueError, "threads"),
                           (dict(threads=True), ValueError, "threads")):
        with pytest.raises(err, match=match):
            Bundle.open(onnx_bundle, **kw)
    assert Bundle.open(onnx_bundle, threads=2).threads == 2
    # a million threads had the kernel's OOM killer end the process at 23 GB; more threads than cores slowed every call unsaid
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # usable by this process
    with pytest.raises(ValueError, match=rf"threads=1000000 is far more than this machine's {cores} core\(s\): pass at most {cores}"):
        Bundle.open(onnx_bundle, threads=10**6)
    with pytest.warns(UserWarning, match=rf"threads={cores + 1} on a machine with {cores} core\(s\): the threads contend") as rec:
        Bundle.open(onnx_bundle, threads=cores + 1)
    assert len(rec) == 1 and rec[0].filename == __file__  # once per bundle, at the caller's line


def test_channels_first_uint8_is_an_input_error(onnx_bundle):
    b = Bundle.open(onnx_bundle)
    with pytest.raises(InputError, match=r"channels-first image \(C, H, W\) is x.transpose\(1, 2, 0\)"):
        b.predict(np.zeros((3, 40, 40), np.uint8))
    # a batch of gray images (Fashion-MNIST's own arrays) is told its form too (the hint said only to transpose, which made
    # 3 gray images one colour image)
    with pytest.raises(InputError, match=r"a batch of gray images \(N, H, W\) is x\[\.\.\., None\]"):
        b.predict(np.zeros((100, 28, 28), np.uint8))
    assert len(b.predict(np.zeros((100, 28, 28), np.uint8)[..., None])) == 100


def test_a_calibration_made_in_another_jetson_power_mode_or_governor_is_warned(bundle_copy, monkeypatch):
    """A Jetson calibrated at MAXN and run at 15 W (or a CPU governor changed from performance to powersave) ran every
    budget over, unsaid: the power mode was recorded and never compared."""
    import dvt_runtime.device as D

    monkeypatch.setattr(D, "power_facts", lambda: {"cpu_governor": "performance", "jetson_power_mode": "NV Power Mode: MAXN\n0"})
    _calibrate(Bundle.open(bundle_copy, threads=1), "orin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(bundle_copy, threads=1, device_name="orin")  # as calibrated: nothing said
    monkeypatch.setattr(D, "power_facts", lambda: {"cpu_governor": "schedutil", "jetson_power_mode": "NV Power Mode: 15W\n2"})
    with pytest.warns(UserWarning, match=r"calibrated at another setting \(Jetson power mode 'MAXN', this host runs '15W'; CPU governor "
                                         r"'performance', this host runs 'schedutil'\)"):
        Bundle.open(bundle_copy, threads=1, device_name="orin")
    # nvpmodel's output may open with a warning line: the mode is compared, not the text
    monkeypatch.setattr(D, "power_facts", lambda: {"cpu_governor": "performance", "jetson_power_mode": "NVPM WARN: fan mode is not set!\n"
                                                                                                      "NV Power Mode: MAXN\n0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(bundle_copy, threads=1, device_name="orin")
    from dvt_runtime.checks import setting_differences  # a blank value (an imported device record's) is unknown, not a crash

    assert setting_differences(1, {"cpu_governor": "", "jetson_power_mode": " \n"}, 1, None) == []
    monkeypatch.setattr(D, "power_facts", lambda: {"cpu_governor": None, "jetson_power_mode": None})  # unreadable here: nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(bundle_copy, threads=1, device_name="orin")


def test_batch_calibration_leaves_deadline_p90s_alone(bundle_copy, monkeypatch):
    from dvt_runtime.calibrate import CalibrationError

    b = Bundle.open(bundle_copy, threads=1)
    one = _calibrate(b, "d")
    assert one.profile["threads"] == 1 and one.profile["device"]["device_name"] == "d"  # recorded as run
    p90 = list(b.stage_p90_ms)
    _calibrate(b, "d", batch=8)
    assert b.stage_p90_ms == p90  # per-image p90s at batch 8 are too low for one image per call
    fresh = Bundle.open(bundle_copy)
    fresh.use_calibration("d", batch=8)
    with pytest.raises(ValueError, match="deadline mode needs"):
        fresh.predict(_images(1, fresh.input_shape), deadline_ms=5.0)
    with pytest.warns(UserWarning, match=r"calibrated at another setting \(1 thread\(s\) per session, this bundle runs 2\)") as rec:
        Bundle.open(bundle_copy, threads=2, device_name="d")
    assert rec[0].filename == __file__  # the caller's line, not the runtime's
    import dvt_runtime.bundle as B  # calibrated with one onnxruntime, run with another (a Jetson's Python 3.10 stops at 1.23)

    monkeypatch.setattr(B, "backend_version", lambda backend: "1.23.2")
    with pytest.warns(UserWarning, match=r"calibrated at another setting \(onnxruntime 1\.\d+\.\d+, this host runs 1\.23\.2: another "
                                         r"version's latencies, and an int8 bundle's answers may differ\)"):
        Bundle.open(bundle_copy, threads=1, device_name="d")
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(bundle_copy, threads=1, device_name="d")  # the same version: nothing said
    with pytest.raises(CalibrationError, match="ends like a throughput calibration's file"):
        _calibrate(b, "d-batch8")
    _calibrate(b, "lap top")
    before = (bundle_copy / "calibration" / "lap_top.json").read_bytes()
    with pytest.raises(CalibrationError, match="holds device 'lap top'"):
        _calibrate(b, "lap_top")
    assert (bundle_copy / "calibration" / "lap_top.json").read_bytes() == before


def test_imported_profile_names_its_bundle(onnx_bundle, tmp_path, capsys):
    from dvt_runtime.latency import LatencyProfile
    from dvt_runtime.profile import main

    src = tmp_path / "phone.json"
    stages = [[0.5, 0.6, 0.55, 0.52] * 5, [1.0, 1.1, 1.05, 1.02] * 5, [2.0, 2.1, 2.05, 2.02] * 5]
    src.write_text(json.dumps({"device": {"device_name": "pixel", "temp_c": float("nan")}, "stages_ms": stages}))
    out = tmp_path / "p.json"
    with pytest.warns(UserWarning, match="temp_c"):
        assert main(["import", "--json", str(src), "--out", str(out)]) == 0
    assert "no --bundle" in capsys.readouterr().err
    prof = LatencyProfile.load(out)  # strict JSON: the NaN fact is null
    assert prof.device["temp_c"] is None and "NaN" not in out.read_text()
    b = Bundle.open(onnx_bundle)
    x = _images(32, b.input_shape, seed=6)
    y = np.argmax(b.run_exits(x)[-1], -1)
    from dvt_runtime.calibrate import fit

    with pytest.warns(UserWarning, match="does not name the bundle"):
        fit(b, x, y, profile=prof, progress=False)
    assert main(["import", "--json", str(src), "--bundle", str(onnx_bundle), "--out", str(out)]) == 0
    prof = LatencyProfile.load(out)
    assert prof.bundle["model"] == b.manifest.model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(b, x, y, profile=prof, progress=False)
    prof.bundle["model"] = "another"
    from dvt_runtime.calibration import CalibrationError

    with pytest.raises(CalibrationError, match="another bundle"):
        fit(b, x, y, profile=prof, progress=False)
    prof.device["clock"] = float("inf")
    from dvt_runtime.stats import ProfileError

    with pytest.raises(ProfileError, match="non-finite"):
        prof.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_profile_out_checked_before_measuring(onnx_bundle, tmp_path, capsys):
    from dvt_runtime.profile import main

    (tmp_path / "dir").mkdir()
    assert main(["--bundle", str(onnx_bundle), "--out", str(tmp_path / "dir"), "--runs", "8", "--no-progress"]) == 2
    err = capsys.readouterr()
    assert "is a folder" in err.err and "exit 1" not in err.out  # refused before any stage ran


def test_calibration_file_field_types(bundle_copy):
    from dvt_runtime.calibration import CalibrationError, validate_calibration

    b = Bundle.open(bundle_copy)
    d = _calibrate(b, "d").to_dict()
    validate_calibration(d, b.manifest)
    for bad, match in (({"table": [{**d["table"][0], "budget_ms": "x"}]}, "budget_ms"),
                       ({"chosen": {**d["chosen"], "predicted": "x"}}, "chosen.predicted"), ({"algorithm": 5}, "algorithm")):
        with pytest.raises(CalibrationError, match=match):
            validate_calibration({**d, **bad}, b.manifest)


def test_executorch_program_of_another_release_warns():
    pytest.importorskip("executorch")
    from dvt_runtime.backends import backend_version, import_backend

    with pytest.warns(UserWarning, match="exported with executorch 1.4.1, this runtime has"):
        import_backend("executorch", {"executorch": "1.4.1"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import_backend("executorch", {"executorch": backend_version("executorch")})
        import_backend("onnxruntime", {"executorch": "1.4.1"})


@pytest.mark.slow
def test_executorch_loading_is_quiet_and_its_words_show_when_it_fails(micro_ckpt, tmp_path):
    """Opening an ExecuTorch bundle printed torchao's failed GPU-kernel loads, torch's pytree notice, ExecuTorch's CPU
    probing and a thread-pool reset per exit on the user's terminal: held now, and shown only when loading fails."""
    pytest.importorskip("executorch")
    from dvt_edge.export import export_bundle

    b = export_bundle(str(micro_ckpt), "executorch", "fp32", out=str(tmp_path / "b"), verify_n=10, progress=False).path
    code = ("import sys, numpy as np; from dvt_runtime import Bundle; b = Bundle.open(sys.argv[1], threads=1, verify=False); "
            "print(b.predict(np.zeros(b.input_shape, np.float32)).exit)")
    done = subprocess.run([sys.executable, "-c", code, str(b)], capture_output=True, text=True, timeout=300)  # a fresh process
    assert done.returncode == 0 and done.stdout.strip() in {"0", "1", "2"} and done.stderr == "", done.stderr
    # a swapped exit (verify=False: past the checksums, as a re-sealed manifest would be) had failed at its first run, in
    # ExecuTorch's set_inputs(), with a traceback; the program's inputs are counted against the manifest's at open now
    swapped = tmp_path / "swapped"
    shutil.copytree(b, swapped)
    (swapped / "exit1.pte").write_bytes((b / "exit2.pte").read_bytes())
    (swapped / "exit2.pte").write_bytes((b / "exit1.pte").read_bytes())
    with pytest.raises(ManifestError, match=r"exit1.pte: the program takes 3 input\(s\) and gives 3, the manifest says 1 and 3"):
        Bundle.open(swapped, threads=1, verify=False)
    (b / "exit2.pte").write_bytes(bytes(64))  # not a program (verify=False: past the checksums)
    done = subprocess.run([sys.executable, "-c", code, str(b)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Program identifier" in done.stderr and "Failed to load program" in done.stderr, done.stderr
    assert "ManifestError: exit2.pte: not an ExecuTorch program" in done.stderr, done.stderr
    from dvt_runtime.backends import BackendUnavailable, _et_load_error

    assert isinstance(_et_load_error(b / "exit1.pte", RuntimeError("0x14")), BackendUnavailable)  # a real program: this host's
    assert "Resetting threadpool" in done.stderr and done.stderr.count("Resetting threadpool") == 1  # exit 2's step only


def test_output_redirect_with_a_closed_stderr_runs_the_block(tmp_path):
    """Under a daemon or pythonw (descriptor 2 closed), opening an ExecuTorch bundle would fail with EBADF in the
    redirect that holds the toolchain's output: the block runs, with nothing redirected."""
    code = ("import os, sys\nfrom dvt_runtime.console import output_to\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\nos.close(2)\n"
            "with output_to(fd) as terminal:\n    open(sys.argv[2], 'w').write(str(terminal))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log"), str(tmp_path / "ran")], capture_output=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "ran").read_text() == "-1", done


def test_redirects_from_several_threads_restore_the_process_output(tmp_path):
    """ExecuTorch bundles opened from several threads: each redirect restored another's, leaving descriptors 1 and 2
    pointing at a deleted temporary file for good (every later print and traceback lost, exit code 0)."""
    code = ("import os, sys, tempfile, threading, time\nfrom dvt_runtime.console import output_to\n"
            "before = [os.fstat(f).st_ino for f in (1, 2)]\n"
            "def hold():\n    with tempfile.TemporaryFile() as t, output_to(t.fileno()):\n        time.sleep(0.05)\n"
            "ts = [threading.Thread(target=hold) for _ in range(3)]\n[t.start() or time.sleep(0.01) for t in ts]\n[t.join() for t in ts]\n"
            "open(sys.argv[1], 'w').write(repr((before, [os.fstat(f).st_ino for f in (1, 2)])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "inodes")], stdout=open(tmp_path / "out", "w"),
                          stderr=open(tmp_path / "err", "w"), timeout=120)
    before, after = ast.literal_eval((tmp_path / "inodes").read_text())
    assert done.returncode == 0 and after == before, (before, after)


def test_held_toolchain_output_reaches_a_log_file_not_a_terminal(tmp_path):
    """What ExecuTorch prints while loading is held off a terminal or a pipe, but a toolchain log (the benchmark's
    bench-toolchains.log, a user's ``2> file``) keeps it: it once vanished from the benchmark's log."""
    code = ("import os\nfrom dvt_runtime.backends import toolchain_output\n"
            "with toolchain_output('executorch'):\n    os.write(1, b'probe-noise-1\\n'); os.write(2, b'probe-noise-2\\n')\n"
            "os.write(2, b'after\\n')\n")
    log = tmp_path / "toolchains.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=f, timeout=120)
    assert done.returncode == 0 and done.stdout == b""
    assert log.read_text() == "probe-noise-1\nprobe-noise-2\nafter\n", log.read_text()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)  # a pipe, as a terminal: spared
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b"after\n", done


def test_commands_print_warnings_as_plain_messages():
    """A command's warnings reached its user as Python's record (`.../calibrate.py:476: UserWarning: ...` and the
    source line that raised it): a command prints the message; library callers keep Python's format."""
    code = ("import sys, warnings\nfrom dvt_runtime.console import run_cli\n"
            "warnings.warn('as a library')\nsys.exit(run_cli(lambda: warnings.warn('the profile does not name the bundle') or 3))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done
    assert done.stderr.endswith("\nwarning: the profile does not name the bundle\n") and "UserWarning: as a library" in done.stderr, done.stderr
    assert done.stderr.count("UserWarning") == 1, done.stderr


def test_an_embedding_service_can_close_a_bundle_catch_its_errors_and_call_run_exit_safely(bundle_copy):
    """For a service: ``close()`` / ``with`` release the sessions now (a call after it raises); every error a caller
    catches is importable from ``dvt_runtime``; a direct ``run_exit`` with a wrong exit, dtype, shape or carry says so
    (it had raised IndexError, KeyError, or onnxruntime's own error; a negative exit silently ran another)."""
    import dvt_runtime
    from dvt_runtime import BackendUnavailable, NonFiniteOutput, ProfileError  # noqa: F401  (exported: a service catches them)

    assert {"BackendUnavailable", "NonFiniteOutput", "ProfileError", "InputError", "ManifestError"} <= set(dvt_runtime.__all__)
    x = _images(2, Bundle.open(bundle_copy).input_shape, seed=1)
    with Bundle.open(bundle_copy) as b:
        want = [p.label for p in b.predict(x)]
        o1 = b.run_exit(0, x)
        assert b.run_exit(1, x, o1)["logits"].shape == (2, len(b.classes))
        for e, img, carry, said in [
            (3, x, o1, r"exit index must be 0\.\.2 \(0-based: exit 1 is index 0\), got 3"),
            (-1, x, o1, r"exit index must be 0\.\.2 .* got -1"),
            (True, x, o1, r"exit index must be 0\.\.2 .* got True"),
            (0, x.astype(np.float64), None, r"run_exit takes preprocessed float32 of shape \(n, 1, 28, 28\), got float64"),
            (0, np.zeros((2, 28, 28, 1), np.float32), None, r"got float32 \(2, 28, 28, 1\): pass images through bundle\.preprocess"),
            (1, x, None, r"exit 2 needs exit 1's outputs \(features_out, relations_out; run_exit\(0, \.\.\.\) returns them\), got NoneType"),
            (1, x, {"features_out": o1["features_out"]}, r"exit 2 needs exit 1's outputs .* got \['features_out'\]"),
            (1, x[:1], o1, r"exit 2 got 1 images but exit 1's outputs for 2: pass the outputs of the same images"),
            (0, x[:0], None, r"run_exit got 0 images; this bundle's artifacts take 1 to \d+ a call: run_stage or run_exits"),
        ]:
            with pytest.raises(ValueError, match=said):
                b.run_exit(e, img, carry)
    assert "closed" in repr(b) and not b.sessions
    for call in (lambda: b.predict(x), lambda: b.run_exits(x), lambda: b.predict(x[0])):
        with pytest.raises(ValueError, match=r"was closed: open the bundle again"):
            call()
    b.close()  # idempotent
    assert [p.label for p in Bundle.open(bundle_copy).predict(x)] == want
    art = bundle_copy / Manifest.load(bundle_copy).exits[2].artifact
    art.write_bytes(art.read_bytes()[: art.stat().st_size // 2])  # damaged: verify=False cannot tell it from a host problem
    with pytest.raises(ManifestError):
        Bundle.open(bundle_copy)
    with pytest.raises(ManifestError, match=r"exit3\.onnx cannot be loaded and its SHA-256 differs from the manifest's \(opened with "
                                            r"verify=False\): the file was damaged or changed; re-export"):
        Bundle.open(bundle_copy, verify=False)  # it had said this host's onnxruntime could not run it
