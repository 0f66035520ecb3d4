"""The attack list (issue 15): hostile inputs, crashes and careless commands.

One case per item. Each asserts the message a user gets (what is wrong, which file, what to
do) and that nothing the user made was lost. The next hostile input joins this list.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dvt_edge.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from dvt_edge.data import DataError, load_dataset
from dvt_runtime.bundle import Bundle, InputError, NonFiniteOutput
from dvt_runtime.calibration import CalibrationError
from dvt_runtime.manifest import Manifest, ManifestError
from dvt_runtime.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bundle_copy(onnx_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    return dst


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "val").arrays(40, seed=5)


def _edit_manifest(bundle: Path, **changes) -> None:
    d = json.loads((bundle / "manifest.json").read_text())
    for k, v in changes.items():
        if "." in k:
            head, idx, field = k.split(".")
            d[head][int(idx)][field] = v
        else:
            d[k] = v
    (bundle / "manifest.json").write_text(json.dumps(d))


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ----------------------------------------------------------------------------- 1-4: data loss and crash windows


def test_01_force_replaces_only_a_bundle(micro_ckpt, tmp_path):
    from dvt_edge.export import ExportError, export_bundle

    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "important.txt").write_text("do not delete")
    (mine / "photos" / "a.jpg").write_bytes(b"\xff\xd8 holiday")
    before = _tree(mine)
    with pytest.raises(ExportError, match="is not a dvt-edge bundle.*nothing was changed"):
        export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(mine), force=True, verify_n=20, progress=False)
    assert _tree(mine) == before
    assert not list(tmp_path.glob(".mine.*")), "no temporary folder may be left behind"


def test_01b_a_folder_made_during_the_export_is_not_replaced(micro_ckpt, tmp_path, monkeypatch):
    """The destination is checked again just before the swap: a folder the user made there while the
    export ran (minutes, for real models) is left alone, with or without --force."""
    import dvt_edge.export as X

    mine = tmp_path / "mine"
    real = X.format_parity

    def user_makes_a_folder(manifest):  # runs after the artifacts are written, before the install
        (mine / "notes").mkdir(parents=True, exist_ok=True)
        (mine / "notes" / "todo.txt").write_text("mine")
        return real(manifest)

    monkeypatch.setattr(X, "format_parity", user_makes_a_folder)
    for force in (False, True):
        with pytest.raises(X.ExportError, match="already exists|not a dvt-edge bundle"):
            X.export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(mine), force=force, verify_n=20, progress=False)
        assert _tree(mine) == {"notes/todo.txt": b"mine"}
        shutil.rmtree(mine)
    assert not list(tmp_path.glob(".mine.*")), "no temporary folder may be left behind"


def test_02_interrupted_replace_is_recovered_by_the_next_run(onnx_bundle, tmp_path):
    from dvt_edge.export.install import _exchange
    from dvt_edge.export.install import recover_leftovers as _recover_leftovers

    dest = tmp_path / "bundle"
    dead = 2**22 + 12345  # above pid_max's default: no such process
    shutil.copytree(onnx_bundle, tmp_path / f".bundle.old-{dead}")  # killed between the two renames
    (tmp_path / f".bundle.tmp-{dead}-abc").mkdir()  # killed mid-export
    (tmp_path / f".bundle.tmp-{os.getpid()}-live").mkdir()  # a running export's folder is left alone
    notes = _recover_leftovers(dest)
    assert (dest / "manifest.json").is_file() and Manifest.load(dest) is not None
    assert any("restored" in n for n in notes) and any("removed" in n for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".bundle.tmp-{os.getpid()}-live", "bundle"]
    # where the OS offers it, replacing is one atomic exchange: the path never goes missing
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("new")
    swapped = _exchange(other, dest)
    assert swapped or not sys.platform.startswith("linux")  # renameat2(RENAME_EXCHANGE) on Linux: the exchange is used
    if swapped:
        assert (dest / "x").read_text() == "new" and (other / "manifest.json").is_file()


def test_03_bundle_folders_follow_the_umask(micro_ckpt, tmp_path):
    from dvt_edge.export import export_bundle

    old = os.umask(0o022)
    try:
        r = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    finally:
        os.umask(old)
    assert (r.path.stat().st_mode & 0o777) == 0o755


def test_04_calibration_folder_that_is_a_file(bundle_copy, images):
    from dvt_runtime.calibrate import calibrate

    (bundle_copy / "calibration").write_text("my notes")
    b = Bundle.open(bundle_copy)
    t0 = time.perf_counter()
    with pytest.raises(CalibrationError, match="is a file, not a folder"):
        calibrate(b, *images, 1.0, device_name="dev", progress=False)
    assert time.perf_counter() - t0 < 5, "refused before any work"
    assert (bundle_copy / "calibration").read_text() == "my notes"


# ----------------------------------------------------------------------------- 5-6: denial of service through "safe" files


@pytest.mark.parametrize("field,value", [("depth", 10**6), ("embed_dim", 2**20), ("num_classes", 10**8), ("depth", 3)])
def test_05_config_is_checked_against_the_weights_before_building(micro_ckpt, tmp_path, field, value):
    raw = read_checkpoint(micro_ckpt)
    raw["model"]["config"][field] = value
    torch.save(raw, tmp_path / "evil.pt")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="config|must be an integer"):
        load_checkpoint(tmp_path / "evil.pt")
    assert time.perf_counter() - t0 < 5


def test_05b_later_stages_cannot_claim_more_than_the_file_holds(tmp_path):
    """Per-stage depths: a stored config that makes exits 2 and 3 deeper than their weights is
    refused before anything is built (every tensor the config implies must be in the file)."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.data import default_preprocess
    from dvt_edge.models import create_model

    ckpt = save_checkpoint(tmp_path / "ok.pt", create_model("dvt_micro_fmnist"), classes=[str(i) for i in range(10)],
                           preprocess=default_preprocess(1, 28))
    load_checkpoint(ckpt)  # the honest file loads
    raw = read_checkpoint(ckpt)
    raw["model"]["config"]["stage_depths"] = [raw["model"]["config"]["depth"], 256, 256]
    torch.save(raw, tmp_path / "evil.pt")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="config implies tensors the weights lack"):
        load_checkpoint(tmp_path / "evil.pt")
    assert time.perf_counter() - t0 < 5


def test_06_deeply_nested_json_and_huge_csv_fields(tmp_path):
    from dvt_runtime.profile import LatencyProfile, ProfileError, import_csv

    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ProfileError, match="nested too deeply"):
        LatencyProfile.load(tmp_path / "deep.json")
    (tmp_path / "wide.csv").write_text("stage1_ms\n" + "1" * (50 << 20) + "\n")
    with pytest.raises(ProfileError, match="longer than"):
        import_csv(tmp_path / "wide.csv")
    (tmp_path / "inf.csv").write_text("exit,ms\ninf,0.5\n")
    with pytest.raises(ProfileError, match="finite"):
        import_csv(tmp_path / "inf.csv")
    prof = json.loads(json.dumps({"schema": "dvt-profile/1", "schema_version": 1, "stages": [{"mean": 1.0, "p90": 1.0}],
                                  "cumulative": [{"mean": 1.0}], "drift": []}))
    (tmp_path / "no_n.json").write_text(json.dumps(prof))
    with pytest.raises(ProfileError, match="'n' must be"):
        LatencyProfile.load(tmp_path / "no_n.json")


# ----------------------------------------------------------------------------- 7-8: NaN and nonsense taken as answers


def test_07_non_finite_logits_name_the_exit(onnx_bundle, images):
    b = Bundle.open(onnx_bundle)
    x = np.full((1, 1, 28, 28), 3e38, np.float32)  # finite, absurd: predict refuses it before any stage runs
    with pytest.raises(InputError, match="holds values from 3e.38 to 3e.38, but this bundle's preprocessing"):
        b.predict(x)
    with pytest.raises(NonFiniteOutput, match=r"exit 1 "):  # the stage API takes it as it is, and names the exit
        b.run_exit(0, x)


@pytest.mark.parametrize("change", [{"std": [0.0]}, {"mean": [float("nan")]}, {"size": -3}, {"std": [1e39]}, {"std": [1e-300]},
                                    {"mean": [1e300]}])
def test_07_manifest_preprocess_nonsense_is_refused(bundle_copy, change):
    d = json.loads((bundle_copy / "manifest.json").read_text())
    d["preprocess"].update(change)
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="malformed manifest: preprocess "):  # the field itself, before the seal's check
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("field, value", [("finite", False), ("max_abs_diff_real", float("nan"))])
def test_07_a_parity_report_passed_over_non_finite_rows_is_refused(bundle_copy, field, value):
    """A resealed manifest whose parity said passed over an exit with NaN differences opened without a word."""
    m = Manifest.load(bundle_copy)
    assert m.parity.passed
    setattr(m.parity.exits[1], field, value)
    m.save(bundle_copy)  # sealed again, as Manifest.load(B, verify=False).save(B) does
    with pytest.raises(ManifestError, match=r"the parity report says passed, but exit 2 answered non-finite values or differences"):
        Bundle.open(bundle_copy)


def test_07_manifest_tensor_without_a_shape_is_refused(bundle_copy):
    """A logits shape of [] is the manifest's error, not an IndexError from inside validate()."""
    d = json.loads((bundle_copy / "manifest.json").read_text())
    next(t for t in d["exits"][-1]["outputs"] if t["name"] == "logits")["shape"] = []
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="tensor logits has a bad shape"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("kwargs,match", [
    ({"thresholds": [float("nan"), 0.5]}, "confidence in"),
    ({"thresholds": [-0.1, 0.5]}, "confidence in"),
    ({"thresholds": [1.5, 0.5]}, "confidence in"),
    ({"thresholds": "0.9,0.8"}, "must be a list"),
    ({"thresholds": [0.9, 0.8, 0.7, 0.6]}, "need 2"),
    ({"deadline_ms": float("nan")}, "deadline_ms must be a finite"),
    ({"deadline_ms": -1.0}, "deadline_ms must be a finite"),
    ({"budget_ms": float("nan")}, "budget_ms must be a finite"),
    ({"budget_ms": "5"}, "budget_ms must be a number"),
    ({"budget_ms": True}, "budget_ms must be a number"),
])
def test_08_nonsense_controls_are_refused(onnx_bundle, images, kwargs, match):
    b = Bundle.open(onnx_bundle)
    b.use_profile([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=match):
        b.predict(images[0][0], **kwargs)


@pytest.mark.parametrize("p90", [[float("nan"), 1, 1], [-1, 1, 1], [True, 1, 1], [1, 1]])
def test_08_nonsense_profiles_are_refused(onnx_bundle, p90):
    with pytest.raises(ValueError, match="p90|stage"):
        Bundle.open(onnx_bundle).use_profile(p90)


# ----------------------------------------------------------------------------- 9: calibration files


@pytest.fixture(scope="module")
def calibrated(onnx_bundle, tmp_path_factory):
    """A bundle copy with a real calibration for device 'dev'; returns (bundle dir, calibration JSON)."""
    from dvt_runtime.calibrate import calibrate

    d = tmp_path_factory.mktemp("cal") / "b"
    shutil.copytree(onnx_bundle, d)
    x, y = load_dataset("fashion-mnist", "val").arrays(40, seed=5)
    b = Bundle.open(d)
    calibrate(b, x, y, 1.0, device_name="dev", runs=20, warmup=2, progress=False)
    return d, json.loads((d / "calibration" / "dev.json").read_text())


def _break(cal: dict, path: str, value) -> dict:
    cal = json.loads(json.dumps(cal))
    keys = path.split(".")
    node = cal
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cal


@pytest.mark.parametrize("path,value,match", [
    ("chosen", KeyError, "lacks the field 'chosen'"),
    ("chosen.thresholds", [0.5], "must list 2 thresholds"),
    ("chosen.thresholds", [float("nan"), 0.5], "confidences in"),
    ("chosen.thresholds", [2.0, 0.5], "confidences in"),
    ("bundle.model", "dvt_tiny_fmnist", "made for model"),
    ("bundle.target", "executorch", "made for target"),
    ("bundle.precision", "int8", "made for precision"),
    ("bundle.artifacts", ["0" * 64] * 3, "other artifacts"),
    ("bundle.artifacts", KeyError, "records no artifact hashes"),  # else bound by name only: any re-export would pass
    ("schema_version", 99, "newer"),
    ("profile.stages.0.p90", -1, "p90 must be a positive"),
    ("profile.stopping", [{"mean": 1.0}], "'stopping' must have 3 exits"),
    ("profile.stopping.1.mean", float("nan"), "'stopping' exit 2: mean must be a positive"),
    ("batch", True, "batch must be a whole number >= 1"),
    ("batch", "1", "batch must be a whole number >= 1"),
    ("metric", "P90", "metric must be 'mean' or a percentile"),
    ("device", 7, "device must be a non-empty name"),
])
def test_09_bad_calibration_files_are_refused_with_their_name(calibrated, tmp_path, path, value, match):
    src, cal = calibrated
    d = tmp_path / "b"
    shutil.copytree(src, d)
    (d / "calibration" / "dev.json").write_text(json.dumps(_break(cal, path, value)))
    with pytest.raises(CalibrationError, match=match) as e:
        Bundle.open(d, device_name="dev")
    assert "dev.json" in str(e.value)
    if path == "schema_version":  # a newer runtime's file: rewriting it with this one (as it said) lost its --headroom
        assert "upgrade dvt-runtime" in str(e.value) and "do not rewrite" in str(e.value)
        assert "dvt_runtime.calibrate" not in str(e.value), str(e.value)
    else:
        assert "dvt_runtime.calibrate" in str(e.value)


def test_09_broken_json_calibration_names_the_file(calibrated, tmp_path):
    src, _ = calibrated
    d = tmp_path / "b"
    shutil.copytree(src, d)
    (d / "calibration" / "dev.json").write_text('{"schema": "dvt-calibration/1", ')
    with pytest.raises(CalibrationError, match=r"dev\.json is not valid JSON"):
        Bundle.open(d, device_name="dev")


def test_09_the_webcam_reports_a_bad_calibration(calibrated, tmp_path):
    from apps import webcam

    src, _ = calibrated
    d = tmp_path / "b"
    shutil.copytree(src, d)
    (d / "calibration" / "dev.json").write_text("not json")
    with pytest.raises(webcam.AppError, match="not valid JSON"):
        webcam.open_bundle(webcam.parse_args(["--bundle", str(d), "--device-name", "dev", "--video", "x.mp4"]))


# ----------------------------------------------------------------------------- 10: manifest field types


@pytest.mark.parametrize("change,match", [
    ({"exits.0.sha256": None}, "sha256 must be 64"),
    ({"exits.0.artifact": 123}, "artifact must be"),
    ({"classes": "T-shirt"}, "classes must be a list"),
    ({"classes": ["a", "b"]}, "classes lists 2 names but the model outputs 10"),
    ({"thresholds": "0.9"}, "thresholds must be a list"),
    ({"exits": {"0": 1}}, "exits must be a list"),
])
def test_10_manifest_field_types(bundle_copy, change, match):
    _edit_manifest(bundle_copy, **change)
    with pytest.raises(ManifestError, match=match):
        Bundle.open(bundle_copy)


def test_10_profile_cli_on_a_broken_manifest_is_a_message(bundle_copy):
    _edit_manifest(bundle_copy, **{"exits.0.sha256": None})
    r = subprocess.run([sys.executable, "-m", "dvt_runtime.profile", "--bundle", str(bundle_copy), "--runs", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sha256" in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------- 11: labels, latencies, images


def test_11_truncated_npz_is_a_clear_error(tmp_path):
    from dvt_runtime.calibrate import load_npz

    np.savez(tmp_path / "v.npz", images=np.zeros((4, 1, 28, 28), np.float32), labels=np.arange(4))
    data = (tmp_path / "v.npz").read_bytes()
    (tmp_path / "v.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="not a readable .npz"):
        load_npz(str(tmp_path / "v.npz"))
    # images of different sizes saved as a list: an object array, called "not a readable .npz archive (ValueError)"
    ragged = np.empty(2, object)
    ragged[:] = [np.zeros((28, 28), np.uint8), np.zeros((30, 30), np.uint8)]
    np.savez(tmp_path / "r.npz", images=ragged, labels=np.arange(2))
    with pytest.raises(CalibrationError, match=r"r\.npz: its 'images' array holds Python objects .* np\.stack of same-sized images"):
        load_npz(str(tmp_path / "r.npz"))
    import zipfile  # a damaged array inside a sound archive is not called "Python objects"

    with zipfile.ZipFile(tmp_path / "v2.npz", "w") as z:
        np.save(tmp_path / "images.npy", np.zeros((4, 1, 28, 28), np.float32))
        z.writestr("images.npy", (tmp_path / "images.npy").read_bytes()[:200])
        np.save(tmp_path / "labels.npy", np.arange(4))
        z.write(tmp_path / "labels.npy", "labels.npy")
    with pytest.raises(CalibrationError, match="not a readable .npz archive"):
        load_npz(str(tmp_path / "v2.npz"))
    whole = (tmp_path / "v2.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])  # a copy cut short: said as such, not only 'BadZipFile'
    with pytest.raises(CalibrationError, match=r"cut.npz is not a readable .npz archive \(BadZipFile: damaged, or cut short by an "):
        load_npz(str(tmp_path / "cut.npz"))


def test_11_float_labels_in_calibration_data(tmp_path):
    from dvt_runtime.calibrate import load_npz

    np.savez(tmp_path / "v.npz", images=np.zeros((4, 1, 28, 28), np.float32), labels=np.array([0.0, 1.7, 2.0, 3.0]))
    with pytest.raises(CalibrationError, match="integer"):
        load_npz(str(tmp_path / "v.npz"))


def test_11_stray_label_without_classes(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 8, 8), np.uint8), labels=np.array([0, 1, 2, 1, 42]))
    with pytest.raises(DataError, match="skip class"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}")


def test_11_zero_sized_and_empty_inputs(onnx_bundle):
    with pytest.raises(ValueError, match="empty image"):
        Preprocess().apply(np.zeros((0, 0), np.uint8))
    b = Bundle.open(onnx_bundle)
    with pytest.raises(InputError, match="empty batch"):
        b.run_exits(np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(InputError, match="empty batch"):
        b.predict(np.zeros((0, 1, 28, 28), np.float32))


# ----------------------------------------------------------------------------- tracebacks instead of messages


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=900, cwd=cwd, env=env)


@pytest.mark.parametrize("argv,match", [
    (["dvt_edge.train", "--batch-size", "0", "--out", "{tmp}/r"], "--batch-size must be >= 1"),
    (["dvt_edge.train", "--epochs", "0", "--out", "{tmp}/r"], "--epochs must be >= 1"),
    (["dvt_edge.train", "--train-limit", "0", "--out", "{tmp}/r"], "--train-limit must be >= 1"),
    (["dvt_edge.export", "--checkpoint", "{ckpt}", "--target", "onnx", "--verify-n", "-5", "--out", "{tmp}/b"], "--verify-n must be"),
    (["dvt_edge.export", "--checkpoint", "{ckpt}", "--target", "onnx", "--out", "{tmp}/afile/b"], "is a file, not a folder"),
    (["dvt_edge.export", "--checkpoint", "{tmp}/classes5.pt", "--target", "onnx", "--out", "{tmp}/c"], "'classes' must be a list"),
    (["dvt_edge.data", "export", "--data", "npz:{tmp}/empty.npz", "--out", "{tmp}/x.npz"], "holds no samples"),
    (["dvt_edge.data", "export", "--checkpoint", "{tmp}/afile", "--out", "{tmp}/x.npz"], "afile"),
    (["dvt_runtime.calibrate", "--bundle", "{bundle}", "--data", "{tmp}/empty.npz", "--budget-ms", "1", "--threads", "-1"], "--threads must be >= 1"),
])
def test_cli_errors_are_messages_not_tracebacks(micro_ckpt, onnx_bundle, tmp_path, argv, match):
    (tmp_path / "afile").write_text("I am a file")
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.int64))
    raw = read_checkpoint(micro_ckpt)
    raw["classes"] = 5
    torch.save(raw, tmp_path / "classes5.pt")
    argv = [a.format(tmp=tmp_path, ckpt=micro_ckpt, bundle=onnx_bundle) for a in argv]
    r = _cli(*argv, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert match in r.stderr, r.stderr[-3000:]
    assert (tmp_path / "afile").read_text() == "I am a file"


def test_unsafe_loading_is_never_suggested(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only=False" not in str(e.value)
    (tmp_path / "junk.npz").write_bytes(os.urandom(4096))
    with pytest.raises(DataError) as e2:
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    assert "allow_pickle" not in str(e2.value)


# ----------------------------------------------------------------------------- memory


def test_controller_history_is_bounded():
    from dvt_runtime.controller import HISTORY, BudgetController

    c = BudgetController(1.0, [{"thresholds": [0.5, 0.5], "predicted_ms": 0.5, "accuracy": 90.0}], [0.2, 0.3, 0.4])
    for _ in range(HISTORY * 3):
        c.observe([0.2, 0.3])
    assert len(c.history) == HISTORY


def test_batch_predict_releases_decided_samples(onnx_bundle, images, monkeypatch):
    """While undecided samples run on, the ones answered at exit 1 no longer hold features and relations."""
    import gc
    import weakref

    b = Bundle.open(onnx_bundle)
    x = images[0][:20]
    conf = [p.confidence for p in b.predict(x, thresholds=[0.0, 0.0])]
    t = float(np.median(conf))
    refs, alive, carried = [], [], []
    real = b.run_exit

    def spy(e, image, carry=None, check_finite=True):
        if e == 1 and not alive:
            gc.collect()
            alive.append([r() is not None for r in refs])
            carried.append(len(carry["features_out"]))
        out = real(e, image, carry, check_finite)
        if e == 0:
            refs.append(weakref.ref(out["features_out"]))
        return out

    monkeypatch.setattr(b, "run_exit", spy)
    preds = b.predict(x, thresholds=[t, None])
    undecided = sum(p.exit > 0 for p in preds)
    assert 0 < undecided < len(x)
    # exit 2 gets the undecided samples' rows only, and the whole batch's exit-1 output is gone
    assert carried == [undecided]
    assert alive == [[False]], f"exit-1 outputs still alive at exit 2: {alive}"


# ----------------------------------------------------------------------------- the command line a user meets


def test_export_with_only_a_target_exports_the_reference(tmp_path):
    """The design card's command, in an empty directory: a Core ML bundle of the reference model."""
    r = _cli("dvt_edge.export", "--target", "coreml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = Manifest.load(tmp_path / "bundles" / "dvt_small_cifar-coreml-fp32", verify=True)
    assert m.model == "dvt_small_cifar" and m.target == "coreml"


TOOLCHAIN_NOISE = ("threadpool", "Failed to create", "Torch version", "has not been tested", "torchao", "Running MIL",
                   "Converting PyTorch", "WARNING:", "W1201", "UserWarning")


@pytest.mark.slow
def test_int8_executorch_and_coreml_export_is_quiet(micro_ckpt, tmp_path):
    r = _cli("dvt_edge.export", "--checkpoint", str(micro_ckpt), "--target", "executorch,coreml", "--precision", "int8",
             "--out", str(tmp_path / "b"), "--verify-n", "50", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (r.stdout + r.stderr).splitlines()
    noisy = [line for line in lines if any(n in line for n in TOOLCHAIN_NOISE)]
    assert len(lines) <= 60 and not noisy, f"{len(lines)} lines; toolchain lines: {noisy[:5]}"
    log = tmp_path / "b" / "dvt-edge-export.log"
    assert log.is_file() and str(log) in r.stderr  # the toolchains' output is kept, and where is said once


def test_one_console_command_with_subcommands(capsys):
    from dvt_edge.cli import COMMANDS, main

    assert set(COMMANDS) >= {"train", "evaluate", "export", "bench", "demo", "zoo", "webcam"}
    assert main(["zoo"]) == 0
    assert main(["nope"]) == 2
    capsys.readouterr()
    assert main(["zoo", "--json"]) == 0  # versioned like every other file a script reads
    zoo = json.loads(capsys.readouterr().out)
    assert (zoo["schema"], zoo["schema_version"]) == ("dvt-edge/zoo/1", 1) and "dvt_small_cifar" in [m["model"] for m in zoo["models"]]
    rows = {m["model"]: m for m in zoo["models"]}  # T2T's fixed position tables and performer draws are weights, not trained
    assert rows["dvt_t2t_vit_12"]["params_trainable"] < rows["dvt_t2t_vit_12"]["params"] == 22_461_516  # the published file's
    assert rows["dvt_deit_small"]["params_trainable"] == rows["dvt_deit_small"]["params"]
    assert main(["--help"]) == 0 and "device side (torch-free): dvt-runtime predict | profile | calibrate" in capsys.readouterr().out
    assert main(["predict", "--bundle", "B", "x.jpg"]) == 2  # the device side's command: named with its program
    assert "predict is a command of dvt-runtime: dvt-runtime predict --bundle B x.jpg" in capsys.readouterr().err
    from dvt_runtime.cli import main as runtime_main

    assert main(["--version"]) == 0 and runtime_main(["--version"]) == 0  # a device's copy had no way to say its version
    assert capsys.readouterr().out.split("\n")[:2] == ["dvt-edge 0.2.0", "dvt-runtime 0.2.0"]
    # the python -m forms of the umbrella commands work too (the README says so)
    for mod, args, want in (("dvt_edge", ["zoo"], "dvt_small_cifar"), ("dvt_runtime", ["profile", "--help"], "--bundle")):
        r = subprocess.run([sys.executable, "-m", mod, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and want in r.stdout, (mod, r.stderr[-500:])
    r = _cli("dvt_runtime.cli", "calibrate", "--help")
    assert r.returncode == 0 and "--budget-ms" in r.stdout and r.stdout.startswith("usage: dvt-runtime calibrate ")
    # each usage line names the command as typed (dvt-runtime profile import had said python -m dvt_runtime.profile import)
    for args, want in ((["dvt_runtime", "profile", "import", "--help"], "usage: dvt-runtime profile import "),
                       (["dvt_runtime", "profile", "--help"], "usage: dvt-runtime profile "),
                       (["dvt_runtime.profile", "import", "--help"], "usage: python -m dvt_runtime.profile import "),
                       (["dvt_runtime.calibrate", "--help"], "usage: python -m dvt_runtime.calibrate ")):
        r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith(want), (args, r.stdout[:200], r.stderr[-500:])
    exe = Path(sys.executable).parent
    for script in ("dvt-edge", "dvt-runtime"):
        assert (exe / script).is_file(), f"{script} is not installed (pip install -e . installs it)"


def test_webcam_runs_from_any_directory(tmp_path):
    """Even from a project with its own ``apps`` package (Django's layout): the installed demo is ``dvt_edge.apps``; a
    top-level ``apps`` in the wheel was shadowed there (No module named 'apps.webcam') and could overwrite theirs."""
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).parent
    for cmd in ([sys.executable, "-m", "dvt_edge.apps.webcam"], [sys.executable, "-m", "dvt_edge", "webcam"], [str(exe / "dvt-edge"), "webcam"]):
        r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert r.returncode == 0 and "--camera" in r.stdout, (cmd, r.stderr[-1000:])
    r = subprocess.run([sys.executable, "-m", "apps.webcam", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m apps.webcam "), r.stderr[-1000:]  # in a checkout, as the README says
    r = subprocess.run([sys.executable, str(ROOT / "apps" / "webcam.py"), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0 and "--camera" in r.stdout, r.stderr[-1000:]  # as a file: its relative imports still resolve


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_soak_predict_with_budget_keeps_rss_flat(calibrated, images):
    """10,000 predict(..., budget_ms=...) calls: resident memory stays within 5 MB."""
    d, _ = calibrated
    b = Bundle.open(d, device_name="dev")
    x = images[0][0]
    for _ in range(300):  # warm-up: allocator pools, caches
        b.predict(x, budget_ms=1.0)
    import gc

    gc.collect()
    before = _rss_mb()
    for _ in range(10_000):
        b.predict(x, budget_ms=1.0)
    gc.collect()
    grown = _rss_mb() - before
    assert grown < 5.0, f"RSS grew by {grown:.1f} MB over 10,000 calls"
    assert len(b.controller.history) <= 1000


def test_graph_whose_inputs_differ_from_the_manifest_is_a_broken_bundle_not_a_missing_runtime(tmp_path):
    """An ONNX artifact whose input names disagree with the manifest is a ManifestError (re-export), never
    BackendUnavailable: the exporter's verification reads "unavailable" as "cannot run on this host" and skips."""
    import onnx
    from onnx import TensorProto, helper

    from dvt_runtime.backends import BackendUnavailable, open_session

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "exit1.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ManifestError, match="differ from the manifest") as e:
        open_session("onnxruntime", path, ["image"], ["logits"], threads=1)
    assert not isinstance(e.value, BackendUnavailable) and "re-export" in str(e.value)
    assert open_session("onnxruntime", path, ["x"], ["logits"], threads=1).run({"x": np.ones((1, 3), np.float32)})["logits"].sum() == 3


@pytest.mark.parametrize("name", ["../escaped", "/tmp/elsewhere", "a/b", ".hidden", "", "x\ny", 7])
def test_a_checkpoints_model_name_cannot_place_its_outputs(micro_ckpt, tmp_path, monkeypatch, name):
    """A checkpoint's stored model name names the bundle folder (bundles/<name>-onnx-fp32, and OUT/<name>-... with several
    targets): '../escaped' or an absolute path had exported outside --out. Refused when the model is rebuilt, so by every
    command; register_model refuses such a name too."""
    from dvt_edge.export.__main__ import main as export_main
    from dvt_edge.models import DVTConfig, register_model

    ck = torch.load(micro_ckpt, weights_only=True)
    ck["model"]["name"] = name
    torch.save(ck, tmp_path / "bad.pt")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(CheckpointError, match="is not a plain name"):
        load_checkpoint(tmp_path / "bad.pt")
    assert export_main(["--checkpoint", str(tmp_path / "bad.pt"), "--target", "onnx", "--precision", "fp32", "--no-verify"]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.pt", "run"]  # nothing written anywhere
    with pytest.raises(ValueError, match="is not a plain name"):
        register_model(name, DVTConfig())


def test_a_users_files_named_like_results_are_not_replaced(micro_ckpt, tmp_path, monkeypatch, capsys):
    """train, evaluate and bench replaced a user's metrics.json / metrics.png, evaluate.json / evaluate.png and bench plots
    in --out without a word (their JSON results were guarded, their plots and train's metrics were not). Refused before
    any work, the files untouched; an earlier run's own results are still replaced."""
    import dvt_edge.bench as B
    import dvt_edge.evaluate as E
    from dvt_edge.train import main as train_main

    monkeypatch.setattr(B, "run_bench", lambda *a, **k: pytest.fail("ran before refusing"))
    monkeypatch.setattr(E, "evaluate_checkpoint", lambda *a, **k: pytest.fail("ran before refusing"))
    cases = {"train": (train_main, ["--model", "dvt_micro_fmnist", "--epochs", "1", "--train-limit", "20", "--val-limit", "20",
                                    "--threads", "1", "--quiet"], ["metrics.json", "metrics.png"]),
             "evaluate": (E.main, ["--checkpoint", str(micro_ckpt), "--limit", "20"], ["evaluate.json", "evaluate.png"]),
             "bench": (B.main, ["--checkpoint", str(micro_ckpt)], ["bench_accuracy_vs_latency.png", "bench.md"])}
    for name, (main, args, files) in cases.items():
        for f in files:
            mine = tmp_path / name / f
            mine.parent.mkdir(exist_ok=True)
            mine.write_bytes(b"the user's own " + f.encode())
            assert main([*args, "--out", str(mine.parent)]) == 2, name
            err = capsys.readouterr().err
            assert f"{f} there is not an earlier result" in err or f"{f} exists and is not an earlier" in err, (name, err)
            assert mine.read_bytes() == b"the user's own " + f.encode()
            mine.unlink()
    (tmp_path / "train" / "metrics.json").write_text('{"model": "dvt_micro_fmnist", "data": "fmnist", "history": []}')  # an earlier run's
    (tmp_path / "train" / "metrics.png").write_bytes(b"an earlier run's plot")
    assert train_main([*cases["train"][1], "--out", str(tmp_path / "train")]) == 0
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["history"]


def test_calibrate_writes_only_its_own_files_inside_the_bundle(bundle_copy, images, tmp_path):
    """A bundle shipped with calibration/ linked to another folder had calibrate write there (export --force refuses such
    a link); a file of the calibration's name that is not a calibration (a user's notes) was replaced without a word."""
    from dvt_runtime.calibrate import calibrate

    x, y = images
    elsewhere = tmp_path / "userconf"
    elsewhere.mkdir()
    (elsewhere / "fleet.json").write_text('{"user": "settings"}')
    (bundle_copy / "calibration").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CalibrationError, match=r"calibration is a link \(to .*userconf\): calibrations are written inside\s+the bundle"):
        calibrate(Bundle.open(bundle_copy), x, y, 1.0, device_name="fleet", runs=20, warmup=2, progress=False)
    assert (elsewhere / "fleet.json").read_text() == '{"user": "settings"}'
    (bundle_copy / "calibration").unlink()
    (bundle_copy / "calibration").mkdir()
    (bundle_copy / "calibration" / "fleet.json").write_text("MY NOTES ABOUT FLEET")
    with pytest.raises(CalibrationError, match="fleet.json exists and is not a calibration .*: move it away, or calibrate under another"):
        calibrate(Bundle.open(bundle_copy), x, y, 1.0, device_name="fleet", runs=20, warmup=2, progress=False)
    assert (bundle_copy / "calibration" / "fleet.json").read_text() == "MY NOTES ABOUT FLEET"
    # a damaged calibration is replaced, as the runtime's advice for it says (calibrate it again)
    (bundle_copy / "calibration" / "fleet.json").write_text('{"schema": "dvt-calibration/1", "device": "fleet",')
    assert calibrate(Bundle.open(bundle_copy), x, y, 1.0, device_name="fleet", runs=20, warmup=2, progress=False).device == "fleet"


def test_calibrate_names_the_classes_its_thresholds_never_answer(micro_ckpt, onnx_bundle, tmp_path):
    """Unbalanced training data makes an early exit that never predicts a rare class: a budget that stops the images there
    never answers that class, and calibrate said nothing (evaluate did, per exit alone). Here exits 1 and 2 always answer
    one class with certainty, so any budget under the last exit's cost answers only it: said, in the warning and the file."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.export import export_bundle
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.profile import profile_bundle
    from dvt_runtime.search import ExitOutputs, unanswered_classes

    x, y = load_dataset("fashion-mnist", "val").arrays(200, seed=3)
    model, info = load_checkpoint(micro_ckpt)
    with torch.no_grad():
        for stage in model.stages[:-1]:
            stage.head.bias[0] += 1e4  # always "T-shirt/top", at softmax 1.0
    save_checkpoint(tmp_path / "early.pt", model, classes=info.classes, preprocess=info.preprocess)
    b = Bundle.open(export_bundle(str(tmp_path / "early.pt"), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False).path)
    last = Bundle.open(onnx_bundle).run_exits(x)[-1].argmax(1)
    right = sorted({b.classes[k] for k in set(last[last == y].tolist())} - {b.classes[0]})
    assert len(right) >= 5  # classes the last exit alone answers
    p = profile_bundle(b, warmup=2, runs=20, images=x[:8], progress=False, overhead=True)
    under_last = 0.9 * float(p.stage_costs().cumulative[-1])  # every image at exit 3 is over it: they stop at exit 1 or 2
    with pytest.warns(UserWarning, match="the chosen thresholds never answer .* right on the holdout \\(the last exit alone does\\)"):
        r = calibrate(b, x, y, under_last, profile=p, progress=False, holdout=0.75)
    assert "never answer" in r.note and any(c in r.note for c in right) and b.classes[0] not in r.note.split("never answer")[1][:40]
    # the rule itself: a class the last exit answers right and the cascade never answers; none when every image reaches it
    out = ExitOutputs.from_predictions(np.array([[0.9, 0.9, 0.2], [1, 1, 1.0]]), np.array([[0, 0, 0], [1, 2, 0]]), np.array([1, 2, 0]))
    assert unanswered_classes(out, [0.5, 1.0], min_right=1) == [1, 2] and unanswered_classes(out, [1.0, 1.0], min_right=1) == []
    assert unanswered_classes(out, [0.5, 1.0]) == []  # one right answer of a class says too little
    # answered only wrongly (an image of another class answered "1" at the last exit) is never answered right all the same
    out = ExitOutputs.from_predictions(np.array([[0.9, 0.9, 0.9, 0.2], [1.0] * 4]), np.array([[0] * 4, [1] * 4]), np.array([1, 1, 1, 0]))
    assert unanswered_classes(out, [0.5, 1.0]) == [1]


def test_calibrating_on_labels_the_model_does_not_know_is_said(bundle_copy, images):
    """Random images, or labels in another class order, calibrated without a word (8% on the holdout, under chance) and
    predict then ran those thresholds, replacing the device's good calibration with exit code 0. Refused, nothing written;
    --allow-chance writes it, said and noted in the file; on the model's own labels nothing is said."""
    import warnings

    from dvt_runtime.calibrate import CalibrationError, calibrate, main
    from dvt_runtime.stats import at_chance

    x, y = images
    b = Bundle.open(bundle_copy)
    wrong = (b.run_exits(x)[-1].argmax(1) + 1) % len(b.classes)  # never the last exit's answer: 0% there
    good = calibrate(b, x, y, 1.0, device_name="wrong", runs=20, warmup=2, progress=False, holdout=0.75)  # the device's so far
    before = (bundle_copy / "calibration" / "wrong.json").read_bytes()
    bar = r"(20.00% \(chance is 10.00%\)|the \d+\.\d\d% that answering its most frequent label every time would score)"  # labels skewed
    with pytest.raises(CalibrationError, match=rf"last exit scores 0.00% on the holdout, under {bar} on --data: "
                                               r"its labels may.*nothing was written \(--allow-chance writes it anyway\)"):
        calibrate(b, x, wrong, 1.0, device_name="wrong", runs=20, warmup=2, progress=False)
    assert (bundle_copy / "calibration" / "wrong.json").read_bytes() == before and "chance" not in (good.note or "")
    np.savez(bundle_copy.parent / "wrong.npz", images=x, labels=wrong)
    args = ["--bundle", str(bundle_copy), "--data", str(bundle_copy.parent / "wrong.npz"), "--budget-ms", "1", "--runs", "20",
            "--device-name", "wrong", "--no-progress"]
    assert main(args) == 2 and (bundle_copy / "calibration" / "wrong.json").read_bytes() == before
    with pytest.warns(UserWarning, match=rf"last exit scores 0.00% on the holdout, under {bar} on --data: its labels may"):
        r = calibrate(b, x, wrong, 1.0, device_name="wrong", runs=20, warmup=2, progress=False, allow_chance=True)
    assert "thresholds chosen on it mean nothing" in r.note
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*chance.*")
        r = calibrate(Bundle.open(bundle_copy), x, y, 1.0, device_name="right", runs=20, warmup=2, progress=False, holdout=0.75)  # 30: one right answer clears the bar
    assert "chance" not in (r.note or "")
    assert at_chance(19.9, 10) and not at_chance(20.0, 10) and at_chance(float("nan"), 10)
    assert not at_chance(15.0, 10, n=20) and at_chance(15.0, 10, n=2000)  # 3 of 20 may be a 40% model's; 300 of 2,000 are not
    assert not at_chance(95.0, 2, 1000) and at_chance(52.0, 2, 1000) and not at_chance(60.0, 3, 1000)  # twice chance is 100% for 2


def test_labels_mostly_of_one_class_in_another_order_are_at_chance():
    """A fine-tuning user's 3 classes, 62% of them Cat: the dog and truck labels swapped (Cat kept its index) calibrated at
    48% without a word, over the 3-class bar (40.74%) and under the 61.5% answering Cat every time scores. Chance on
    imbalanced labels is the most frequent label's share: refused, said so; the same accuracy on balanced labels is not."""
    from dvt_runtime.calibration import CalibrationError
    from dvt_runtime.calnotes import chance_note
    from dvt_runtime.search import ExitOutputs
    from dvt_runtime.stats import at_chance, majority_pct

    labels = np.array([0] * 32 + [1] * 11 + [2] * 9)  # 52: 61.5% Cat
    right = np.arange(52) < 25  # 48.1% right at the last exit
    pred = np.where(right, labels, (labels + 1) % 3)
    out = ExitOutputs.from_predictions(np.ones((2, 52)), np.stack([pred, pred]), labels)
    with pytest.raises(CalibrationError, match=r"last exit scores 48.08% on the holdout, under the 61.54% that answering its most "
                                               r"frequent label every time would score on --data: its labels may"):
        chance_note(out, 3, allow_chance=False)
    assert majority_pct(labels) == pytest.approx(61.538, abs=1e-3) and not at_chance(48.08, 3, 52)  # the class count's bar alone
    assert majority_pct(labels, right) == pytest.approx(61.538, abs=1e-3)  # its balanced accuracy 26% (Cat 78%, others 0%)
    even = np.arange(51) % 3
    pred = np.where(np.arange(51) < 25, even, (even + 1) % 3)
    assert chance_note(ExitOutputs.from_predictions(np.ones((2, 51)), np.stack([pred, pred]), even), 3, allow_chance=False) == ""
    # a good model trained with balanced class weights: 88% of 900 'ok' and 85% of 100 'defect' right, 87.7% under the 90%
    # majority, yet far from chance on each class (its balanced accuracy 86.5%): not refused (a second reader's case)
    labels = np.array([0] * 900 + [1] * 100)
    right = np.concatenate([np.arange(900) < 792, np.arange(100) < 85])
    pred = np.where(right, labels, 1 - labels)
    assert chance_note(ExitOutputs.from_predictions(np.ones((2, 1000)), np.stack([pred, pred]), labels), 2, allow_chance=False) == ""
    one = np.zeros(40, dtype=int)  # one class: no majority bar (another note says so), and 100% is not refused
    assert majority_pct(one) == 0.0 and chance_note(ExitOutputs.from_predictions(np.ones((2, 40)), np.stack([one, one]), one), 3, False) == ""


def test_thresholds_that_spend_a_rare_class_are_said():
    """On a fine-tuning user's imbalanced set the calibrated thresholds answered 2 of 11 dogs right where the last exit
    alone answered 5 (no word: only a class never answered right was said). A class the chosen thresholds answer right
    on at least 3 fewer images and 10 points of its own, than the last exit alone, is named with both counts."""
    from dvt_runtime.calnotes import class_loss_note
    from dvt_runtime.search import ExitOutputs, class_losses

    labels = np.array([0] * 32 + [1] * 11 + [2] * 9)
    first = labels.copy()
    first[32 + 2:43] = 0  # exit 1 answers 2 dogs right, 9 as cat
    first[43] = 0  # and 8 of 9 trucks right
    last = labels.copy()
    last[32 + 5:43] = 0  # the last exit alone: 5 dogs right
    out = ExitOutputs.from_predictions(np.full((2, 52), 0.9), np.stack([first, last]), labels)
    assert class_losses(out, [0.5, None]) == [{"label": 1, "n": 11, "cascade": 2, "last": 5}]  # the truck lost 1: not said
    note = class_loss_note(out, [0.5, None], ["Cat", "dog", "pickup truck"])
    assert note.startswith("on the holdout the chosen thresholds answer dog 2 of 11 (the last exit alone 5) right") and "balanced" in note
    assert class_loss_note(out, [1.0, None], ["Cat", "dog", "pickup truck"]) == ""  # every image to the last exit: nothing lost
    first[32:43] = 0  # never right at exit 1: unanswered_note's, not said twice
    out = ExitOutputs.from_predictions(np.full((2, 52), 0.9), np.stack([first, last]), labels)
    assert class_loss_note(out, [0.5, None], ["Cat", "dog", "pickup truck"]) == ""


def test_a_reader_that_goes_away_ends_a_command_quietly():
    """``dvt-runtime --help | head -1`` ended in a BrokenPipeError traceback when head closed the pipe first."""
    for args in (["-m", "dvt_runtime", "--help"], ["-m", "dvt_edge", "--help"], ["-m", "dvt_edge.zoo"]):
        p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdout.close()  # before the command starts writing (it takes a tenth of a second to import)
        err = p.stderr.read()
        p.wait(timeout=120)
        p.stderr.close()
        assert p.returncode == 141 and "Traceback" not in err and "Exception ignored" not in err, (args, p.returncode, err[-1000:])


def test_standard_output_failing_stops_the_command_past_its_own_error_handling(monkeypatch, capsys):
    """An export printed its report into a closed pipe after writing the bundle: its per-job ``except Exception`` called
    the written bundle FAILED and exported the next target for 40 s; under ``> /dev/full`` it said "nothing was changed"."""
    import errno
    import io

    from dvt_runtime.console import run_cli

    class Broken(io.StringIO):
        def __init__(self, err: OSError):
            super().__init__()
            self.err = err

        def write(self, s):
            raise self.err

    for err, code in ((BrokenPipeError(errno.EPIPE, "Broken pipe"), 141), (OSError(errno.ENOSPC, "No space left on device"), 1)):
        done = []

        def main(done: list = done) -> int:
            for job in ("fp32", "int8"):  # as export's jobs: each one's failure is caught and the next one runs
                try:
                    print(f"wrote bundle {job}")
                    done.append(job)
                except Exception:  # noqa: BLE001
                    done.append(f"FAILED {job}")
                except OSError:
                    return 2
            return 0

        monkeypatch.setattr(sys, "stdout", Broken(err))
        assert run_cli(main) == code and done == [] and isinstance(sys.stdout, Broken)  # stopped there; stdout as it was
        said = capsys.readouterr().err
        assert (said == "") if code == 141 else said.startswith("error: standard output cannot be written (No space left on device): "
                                                              "the command stopped there"), said
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m dvt_edge.zoo > /dev/full", shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "standard output cannot be written" in r.stderr, r.stderr[-1000:]


def test_a_legal_long_output_name_is_written_and_one_too_long_is_refused_first(tmp_path):
    """A 250-byte output name is legal, but the temporary names made of it (.NAME.xxxxxxxx.tmp, an export's .NAME.tmp-PID-...,
    a publication's .STEM.publishing-PID.pt) passed 255 bytes: "File name too long", after the work (a profile's
    measurements lost). They are shortened, alike for every process; a name over 255 bytes is refused before the work."""
    from dvt_edge.export.install import ExportError, check_destination, recover_leftovers, staging_stem
    from dvt_runtime.io import NAME_MAX, atomic_write_json, check_out_path, short_name

    for name in ("c" * 245 + ".json", "模" * 83 + ".json"):  # 250 and 254 bytes
        assert atomic_write_json(tmp_path / name, {"a": 1}).read_text() == '{\n  "a": 1\n}\n'
        assert check_out_path(tmp_path / name, "--out") == tmp_path / name
    assert len(os.listdir(tmp_path)) == 2 and not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left
    with pytest.raises(ValueError, match=r"--out .*: its file name is 256 bytes, more than .*'s file system takes \(255\); choose another"):
        check_out_path(tmp_path / ("c" * 256), "--out")
    with pytest.raises(ExportError, match=r"--out .*: its name is 256 bytes, more than .* takes \(255\); choose a shorter name; nothing"):
        check_destination(tmp_path / ("b" * 256), False)  # found before the export, not at its final rename
    latin1 = tmp_path / os.fsdecode(b"caf\xe9 " + b"x" * 240 + b".json")  # not UTF-8: a surrogate in Python's str, legal on disk
    assert atomic_write_json(check_out_path(latin1, "--out"), {}).is_file() and len(short_name(latin1.name, 20).encode(
        "utf-8", "surrogateescape")) <= NAME_MAX - 20
    latin1.unlink()
    dest = tmp_path / ("b" * 250)
    stem = staging_stem(dest)
    assert len(f".{stem}.tmp-4194304-abcdefgh".encode()) <= NAME_MAX and stem == staging_stem(dest) != dest.name
    assert short_name("ok.json", 14) == "ok.json" and len(short_name("模" * 100, 14).encode()) <= NAME_MAX - 14
    leftover = tmp_path / f".{stem}.tmp-{_dead_pid()}-abcdefgh"
    leftover.mkdir()  # what an export killed at that name left
    assert recover_leftovers(dest) and not leftover.exists()


def test_windows_has_no_byte_limit_to_check(tmp_path, monkeypatch):
    """NTFS counts a name's UTF-16 units, not its bytes: a 300-byte UTF-8 name of 100 characters is legal there, so on
    Windows the name-length check says nothing and the write itself decides."""
    import dvt_runtime.io as dio

    long = tmp_path / ("模" * 100)  # 300 bytes, 100 UTF-16 units
    assert dio.name_max(tmp_path) == 255 and dio.name_too_long(long)
    monkeypatch.setattr(dio, "os", types.SimpleNamespace(**{**vars(os), "name": "nt"}))  # this module only: pathlib asks os.name too
    assert dio.name_max(tmp_path) is None and dio.name_too_long(long) == ""


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_bundle_under_a_name_that_is_not_utf8_exports_verifies_and_runs(onnx_bundle, micro_ckpt, tmp_path, monkeypatch):
    """A folder named in Latin-1 bytes (a surrogate in Python's str): the export's log header failed ("surrogates not
    allowed"); with --verbose, ONNX Runtime refused the str path and the export passed unverified, "onnxruntime does not
    run on this host"; predict then said to re-export."""
    from dvt_edge.export import VerificationFailed, export_bundle
    from dvt_edge.logs import quiet_toolchains
    from dvt_runtime import backends

    odd = tmp_path / os.fsdecode(b"lat\xe9")
    shutil.copytree(onnx_bundle, odd / "b")
    b = Bundle.open(odd / "b")
    assert b.predict(np.zeros((28, 28), np.uint8)).label in range(10)
    with quiet_toolchains(tmp_path / "x.log", header=f"export to {odd}"):
        pass
    assert b"lat\xe9" in (tmp_path / "x.log").read_bytes()  # the name as the OS holds it

    def refuses(self, path, *a, **k):  # onnxruntime installed and working, refusing this artifact
        raise backends.BackendUnavailable(f"onnxruntime cannot load {path.name} (TypeError: ...)")

    monkeypatch.setattr(backends.OrtSession, "__init__", refuses)
    with pytest.raises(VerificationFailed, match=r"exit 1: exit1.onnx was written but onnxruntime cannot run it .*cannot load exit1.onnx"):
        export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "e"), verify_n=20, progress=False)
    assert not (tmp_path / "e").exists()


def test_a_logs_progress_bar_is_plain_lines_not_redraws(monkeypatch):
    """A bar on a file or a pipe (CI, ``2> log``, a screen reader's transcript) redrew itself with carriage returns, padding
    and block characters: one long line of them, the next message glued on. It is a plain line now and then, and the last."""
    import io

    from dvt_runtime import console

    quiet = io.StringIO()
    assert list(console.progress(range(3), desc="work", file=quiet)) == [0, 1, 2] and quiet.getvalue() == ""  # done within 30 s
    monkeypatch.setattr(console, "LOG_BAR_SECONDS", 0.0)
    log = io.StringIO()
    for _ in console.progress(range(3), desc="work", unit="img", file=log):
        pass
    lines = log.getvalue().splitlines(keepends=True)
    assert lines and all(ln.startswith("work: ") and ln.endswith("\n") for ln in lines), lines
    assert "\r" not in log.getvalue() and "\u2588" not in log.getvalue() and "3/3" in lines[-1], lines


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_a_child_forked_during_a_redirect_prints_and_redirects_again():
    """A pre-forking server forked while a reload thread opened an ExecuTorch bundle (its chatter held off the console):
    the child inherited the held lock (its own first bundle open hung) and printed into the parent's buffer."""
    import tempfile
    import threading

    from dvt_runtime import console

    held, inside, done = tempfile.TemporaryFile(), threading.Event(), threading.Event()
    before = os.fstat(1).st_ino

    def reload_thread():
        with console.output_to(held.fileno()):
            inside.set()
            done.wait(30)

    t = threading.Thread(target=reload_thread)
    t.start()
    try:
        assert inside.wait(30) and os.fstat(1).st_ino != before
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave at once
            ok = console._REDIRECT.acquire(timeout=3)
            os.write(w, f"{int(ok)} {int(os.fstat(1).st_ino == before)}".encode())
            os._exit(0)
        os.close(w)
        said = os.read(r, 100).decode()
        os.waitpid(pid, 0)
    finally:
        done.set()
        t.join(30)
    assert said == "1 1", said  # the lock free and descriptor 1 the console's, in the child
    assert os.fstat(1).st_ino == before  # the parent's redirect undone as before
    with console.output_to(held.fileno()):  # a worker forked by the redirecting thread itself keeps its redirect
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, str(int(os.fstat(1).st_ino == os.fstat(held.fileno()).st_ino)).encode())
            os._exit(0)
        os.close(w)
        said = os.read(r, 100).decode()
        os.waitpid(pid, 0)
    assert said == "1" and os.fstat(1).st_ino == before, said


def test_a_bundle_replaced_while_it_opens_is_read_whole(onnx_bundle, tmp_path, monkeypatch):
    """A service reopened its bundle while an export swapped a new one in (``install`` renames folders): 87 of 124 opens
    ran exits of both bundles, unsaid, and others called the good bundle tampered. The folder is read again, whole."""
    from dvt_runtime import loading

    live, nxt = tmp_path / "live", tmp_path / "next"
    shutil.copytree(onnx_bundle, live)
    shutil.copytree(onnx_bundle, nxt)
    m = Manifest.load(nxt, verify=False)
    m.created = "the next export"
    m.save(nxt)
    real, opened = loading.open_session, []

    def swapping(backend, path, *a, **k):
        opened.append(path.name)
        if len(opened) == 2:  # between exit 1 and exit 2: the export installs the next bundle under the same name
            os.rename(live, tmp_path / "old")
            os.rename(nxt, live)
        return real(backend, path, *a, **k)

    monkeypatch.setattr(loading, "open_session", swapping)
    with pytest.warns(UserWarning) as seen:
        b = Bundle.open(live, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], device_name="")
    assert sum("not available here" in str(w.message) for w in seen) == 1  # said once, though the folder was read twice
    assert b.manifest.created == "the next export" and opened == ["exit1.onnx", "exit2.onnx", "exit3.onnx"] * 2  # read again, whole
    assert b.predict(np.zeros((28, 28), np.uint8)).label in range(10)


def test_close_lets_the_calls_in_flight_finish(onnx_bundle):
    """A service swapping bundles called close() on the old one while a request ran on it: that request failed at its
    next exit ("was closed"), as the client's fault. close() now waits for it, and refuses new calls meanwhile."""
    import threading

    b = Bundle.open(onnx_bundle, device_name="")
    entered, release, got = threading.Event(), threading.Event(), []
    real = b.sessions[1].run

    def slow(inputs):  # the request in flight, held inside exit 2
        entered.set()
        release.wait(30)
        return real(inputs)

    b.sessions[1].run = slow
    t = threading.Thread(target=lambda: got.append(b.predict(np.zeros((28, 28), np.uint8), thresholds=[None, None])))
    t.start()
    assert entered.wait(30)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.2)
    with pytest.raises(ValueError, match="was closed: open the bundle again"):
        b.run_exits(np.zeros((28, 28), np.uint8))  # a new call while it closes
    assert closer.is_alive() and b.sessions  # waiting for the call in flight
    release.set()
    t.join(30)
    closer.join(30)
    assert len(got) == 1 and got[0].exit == 2 and not b.sessions and "closed" in repr(b)


def test_a_bundle_dropped_unclosed_frees_its_sessions_without_the_garbage_collector(onnx_bundle):
    """A service reloading bundles without close() kept each old bundle's sessions until the garbage collector ran (the
    bundle and its in-flight counter referred to each other): with the collector off, 9.5 MB more per reload."""
    import gc
    import weakref

    Bundle.open(onnx_bundle, device_name="").close()  # the backend imported: its import's frames hold nothing of the next
    was = gc.isenabled()
    gc.disable()
    try:
        b = Bundle.open(onnx_bundle, device_name="")
        b.predict(np.zeros((28, 28), np.uint8))
        refs = [weakref.ref(b), *map(weakref.ref, b.sessions)]
        del b
        assert [r() for r in refs] == [None] * 4
    finally:
        if was:
            gc.enable()


def test_a_requests_fault_is_an_input_error_and_a_calibration_dropped_meanwhile_is_said(onnx_bundle, tmp_path):
    """A service maps InputError to HTTP 400: bad thresholds, budgets, deadlines and batch sizes were plain ValueErrors,
    as a closed bundle is. And use_calibration(..., missing_ok=True) from another thread, between predict's two reads of
    the calibration, gave an AttributeError ('NoneType' object has no attribute 'metric')."""
    import contextlib
    import threading

    from dvt_runtime.calibrate import calibrate

    b = Bundle.open(onnx_bundle, device_name="", calibration_dir=tmp_path)
    img = np.zeros((28, 28), np.uint8)
    for kw in ({"thresholds": "0.9,0.8"}, {"thresholds": [2.0, 0.5]}, {"thresholds": [0.9, float("nan")]}, {"budget_ms": -1},
               {"budget_ms": "1"}, {"deadline_ms": 0}, {"max_batch": 0}, {"thresholds": [0.5, 0.5], "budget_ms": 1.0}):
        with pytest.raises(InputError):
            b.predict(img, **kw)
    ds = load_dataset("fashion-mnist", "val", limit=40, seed=4)
    calibrate(b, b.preprocess(ds.images[:, :, :, None]), ds.labels, 1e6, device_name="svc", runs=6, warmup=1, progress=False)
    assert b.calibration is not None and b.predict(img, budget_ms=5.0).label in range(10)

    class Dropping:  # the lock predict takes: another thread's use_calibration(..., missing_ok=True) lands as it is taken
        def __init__(self):
            self.lock = threading.Lock()

        def __enter__(self):
            self.lock.acquire()
            b.calibration = None

        def __exit__(self, *exc):
            self.lock.release()

    b._budget_lock = Dropping()
    with pytest.raises(ValueError, match="budget_ms needs a calibration for this device") as e:
        b.predict(img, budget_ms=5.0)
    assert not isinstance(e.value, InputError)  # the service's state, not the request
    with contextlib.suppress(Exception):
        b.close()


def test_a_calibration_replaced_between_a_calls_two_reads_never_keeps_the_old_ones_controller(onnx_bundle, tmp_path):
    """use_calibration('d2') from another thread landing inside predict's budget path: the controller built from d1's
    table was stored, and every later d2 call ran d1's table."""
    import threading

    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.controller import controller_for

    b = Bundle.open(onnx_bundle, device_name="", calibration_dir=tmp_path)
    ds = load_dataset("fashion-mnist", "val", limit=40, seed=6)
    x = b.preprocess(ds.images[:, :, :, None])
    for name, budget in (("d2", 0.5), ("d1", 1e6)):  # two tables: d1's last, so the bundle runs it
        calibrate(b, x, ds.labels, budget, device_name=name, runs=6, warmup=1, progress=False, seed=1 if name == "d2" else 0)

    class Lock:  # the real lock, and another thread's use_calibration('d2') landing as the second one is taken
        def __init__(self):
            self.lock, self.n = threading.Lock(), 0

        def __enter__(self):
            self.n += 1
            if self.n == 2:
                b._budget_lock = threading.Lock()
                b.use_calibration("d2")
                b._budget_lock = self
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    b._budget_lock = Lock()
    mine = controller_for(b, 1.0)
    b._budget_lock = threading.Lock()
    assert b.calibration.device == "d2" and b.controller is not mine
    assert controller_for(b, 1.0).table == type(mine).from_calibration(b.calibration, 1.0).table  # d2's own table


def test_a_full_log_under_a_redirect_gives_the_console_back_first(tmp_path):
    """A toolchain log on a disk that had just filled: the failed flush inside the redirect was taken for standard
    output lost, past every clean-up, and the command's own error went into the full file, unseen (exit 120, nothing said)."""
    code = ("import os, sys\nfrom dvt_runtime.console import output_to, run_cli\n"
            "def main():\n    with output_to(os.open('/dev/full', os.O_WRONLY)):\n        print(\"a toolchain's notice\")\n"
            "    print('wrote bundle')\n    return 0\n"
            "try:\n    sys.exit(run_cli(main))\nexcept OSError as e:\n    print(f'the command says: {e}', file=sys.stderr)\n"
            "    sys.exit(2)\n")
    with open(tmp_path / "out.txt", "w") as out:
        r = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2 and "the command says: [Errno 28] No space left on device" in r.stderr, (r.returncode, r.stderr[-800:])


def test_an_onnx_artifact_carries_no_path_of_the_exporting_machine(onnx_bundle):
    """Every node held the exporter's Python stack trace: absolute paths of the machine that exported it (a user name in a
    virtual environment's path) shipped to customers in every artifact."""
    import onnx

    for f in sorted(onnx_bundle.glob("exit*.onnx")):
        m = onnx.load(str(f))
        keys = {p.key for n in m.graph.node for p in n.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys and "pkg.torch.onnx.name_scopes" in keys, keys
        assert str(ROOT).encode() not in f.read_bytes() and b"site-packages" not in f.read_bytes()
