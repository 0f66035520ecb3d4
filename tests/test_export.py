"""Export: every target x precision that runs here, on a tiny model; manifest; tampering; interruption."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dvt_edge import create_model, load_checkpoint, save_checkpoint
from dvt_edge.data import load_dataset
from dvt_edge.export import ExportError, _default_thresholds, _load_data, export_bundle
from dvt_edge.export.__main__ import main as export_main
from dvt_edge.export.pt2e import NO_DYNAMIC_CONV
from dvt_edge.export.targets import TARGETS, TargetUnavailable, get_target
from dvt_edge.provenance import code_revision
from dvt_runtime.bundle import Bundle
from dvt_runtime.manifest import Manifest, ManifestError

ROOT = Path(__file__).resolve().parents[1]
CASES = [pytest.param(t.name, p, id=f"{t.name}-{p}", marks=[pytest.mark.slow] if p == "int8" or t.backend == "executorch" else [])
         for t in TARGETS.values() for p in t.precisions]  # slow: 30 s to 110 s each on 2 cores
# layers that must run inside the XNNPACK delegate
HOT_OPS = ("linear", "addmm", "mm", "bmm", "convolution", "conv2d", "softmax")


def _check_coreml_package(root: Path, m: Manifest, e) -> None:
    """What Xcode reads: a Swift type name unique per model, precision, scheme and exit; the exit described (inputs'
    preprocessing and wiring, the classes, the deployment target); no file the package does not list."""
    import coremltools as ct

    scheme = e.quantization["scheme"]
    want = f"DvtMicroFmnist{m.precision.capitalize()}{scheme.capitalize() if scheme not in ('none', 'linear') else ''}Exit{e.index + 1}"
    assert e.artifact == want + ".mlpackage", e.artifact
    assert not (root / e.artifact / "executorch_debug_handle_mapping.json").exists()
    d = ct.utils.load_spec(str(root / e.artifact)).description
    meta = dict(d.metadata.userDefined)
    assert json.loads(meta["dvt.classes"]) == m.classes and json.loads(meta["dvt.preprocess"]) == m.preprocess.to_dict()
    assert (meta["dvt.exit"], meta["dvt.num_exits"], meta["dvt.precision"]) == (str(e.index + 1), "3", m.precision)
    assert meta["dvt.minimum_deployment_target"] == e.quantization["minimum_deployment_target"] == ("iOS17" if scheme == "w8a8" else "iOS16")
    assert json.loads(meta["dvt.inputs_from"]) == ({} if e.index == 0 else {"features": f"exit{e.index}.features_out",
                                                                            "relations": f"exit{e.index}.relations_out"})
    described = {f.name: f.shortDescription for f in [*d.input, *d.output]}
    assert "minus mean [0.286]" in described["image"] and all(described.values()), described
    assert d.metadata.author.startswith("exported by dvt-edge") and f"exit {e.index + 1} of 3" in d.metadata.shortDescription


@pytest.mark.parametrize("target,precision", CASES)
def test_export_target_precision(tmp_path, micro_ckpt, target, precision):
    t = get_target(target)
    if not t.available:
        pytest.skip(f"{target} toolchain not installed")
    n = 200  # the fixture is near chance (its logits near ties): int8 disagreed on up to 2 of 60 images across seeds and CPUs
    res = export_bundle(str(micro_ckpt), target, precision, out=str(tmp_path / "b"), verify_n=n, calib_n=16, progress=False,
                        int8_min_agreement=None if precision == "int8" else 97.0)  # the gate itself: test_export_guard
    m = Manifest.load(res.path)  # validates paths and checksums
    assert m.target == target and m.precision == precision and m.num_exits == 3
    assert m.classes[0] == "T-shirt/top" and m.preprocess.size == 28
    assert [e.grid for e in m.exits] == [3, 5, 7]
    assert [t.name for t in m.exits[0].inputs] == ["image"]
    assert [t.name for t in m.exits[1].inputs] == ["image", "features", "relations"]
    assert [t.name for t in m.exits[1].outputs] == ["logits", "features_out", "relations_out"]
    assert [t.name for t in m.exits[2].outputs] == ["logits"]
    assert m.parity.problems == [] and m.parity.passed == (m.parity.checked == "numerical")  # structure alone never 'passed'
    assert m.toolchain["torch"].startswith("2.13")
    assert m.toolchain.get("dvt-edge-revision") == code_revision()  # a git checkout's commit (CI's clone has one)
    if (ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}(\+modified)?", m.toolchain["dvt-edge-revision"])
    for e in m.exits:
        assert (res.path / e.artifact).exists() and e.artifact.endswith(t.suffix)
        if precision == "int8":
            assert e.quantization["scheme"] in t.int8["schemes"]
    if t.backend == "coreml":
        assert m.parity.checked == "structural" and m.parity.structure_problems == [] and not m.parity.passed
        for e in m.exits:  # weight compression counted on the program (small weights stay fp16; the manifest said nothing)
            q = e.quantization
            if q["scheme"] in ("linear", "palettize"):
                assert 0 < q["compressed_constants"] <= q["linear_and_conv_layers"] + 2, q
                # what the weights' rounding costs, measured in PyTorch on held-out images (nothing had measured it off macOS)
                assert q["simulated"]["images"] == n and q["simulated"]["finite"] and q["simulated"]["agreement"] >= 80.0, q
            _check_coreml_package(res.path, m, e)
    else:
        rows = m.parity.exits
        assert m.parity.n_real == n
        if precision == "fp32":
            diffs = [d for r in rows for d in (r.max_abs_diff_fixed, r.max_abs_diff_real)]
            assert np.isfinite(diffs).all(), diffs  # max() can skip a NaN that is not first
            assert max(r.max_abs_diff_fixed for r in rows) < 1e-3
            assert max(r.max_abs_diff_real for r in rows) < 1e-3
        floor = 97.0 if precision == "fp32" else 95.0  # int8: at most 10 of 200 images
        assert all(r.top1_agreement >= floor for r in rows), [r.top1_agreement for r in rows]  # NaN fails
        # ties at thresholds equal to an observed confidence allow a few differences, never many (NaN fails)
        assert m.parity.exit_decision_agreement >= 95.0 and m.parity.cascade_answer_agreement >= floor, m.parity
        # the default thresholds are chosen on what the device decides on: the artifacts' logits through the runtime
        model, info = load_checkpoint(micro_ckpt)
        data = _load_data(m.source["data"], m.preprocess, 16, n, False, model.cfg.num_classes, m.classes)
        want, _ = _default_thresholds(model, info, Bundle.open(res.path, threads=1).run_exits(data.verify_x, max_batch=1), data.verify_y)
        assert m.thresholds == [None if v is None else pytest.approx(v, abs=1e-5) for v in want], (m.thresholds, want)
        assert f"the {t.backend} {precision} artifacts through the runtime" in m.thresholds_source, m.thresholds_source
    if target == "executorch":
        for e in m.exits:
            assert e.undelegated_ops is not None
            # the kernels a selective build of the app's runtime must link, as the program names them (aten::x.out)
            kernels = e.quantization["portable_kernels"]
            assert all(re.fullmatch(r"aten::\w+\.\w+", k) for k in kernels) and len(kernels) >= len(e.undelegated_ops) > 0, kernels
            hot = [op for op in e.undelegated_ops if any(op == h or op.startswith(h + ".") for h in HOT_OPS)]
            assert not hot, f"exit {e.index + 1}: hot ops not delegated: {hot}"
            if precision == "int8":  # counted on the converted graph; static takes the patch/stem convs too (XNNPACK asks
                q = e.quantization    # the filter about weights), dynamic leaves them float (its convs did not run)
                assert q["quantized_by_kind"]["linear"] > 0, q
                assert (q["quantized_by_kind"]["conv"] > 0) == (q["scheme"] == "static"), q
                assert (NO_DYNAMIC_CONV in q["excluded_ops"]) == (q["scheme"] == "dynamic"), q
                assert q["quantized_other_ops"] == {}, q  # only linear/conv round what they hand on
        # ExecuTorch reads a tensor's memory as contiguous NCHW: a strided view (every other column) must be copied first
        x = np.random.default_rng(0).random((1, 1, 28, 56), dtype=np.float32)[..., ::2]
        assert not x.flags.c_contiguous
        s1 = Bundle.open(res.path).sessions[0]
        np.testing.assert_array_equal(s1.run({"image": x})["logits"], s1.run({"image": np.ascontiguousarray(x)})["logits"])
    if target in ("onnx", "ort") and precision == "int8":  # what stays float, said for every scheme (dynamic had named none)
        assert all("stay float" in e.quantization["excluded_ops"] for e in m.exits), [e.quantization for e in m.exits]
    if target == "ort":
        cfg = (res.path / "required_operators.config").read_text()
        assert "ai.onnx" in cfg
        if precision == "int8":  # counted on the .onnx, which the bundle no longer holds: said
            assert all("before its conversion to the ORT format" in e.quantization["quantized_weights_note"] for e in m.exits)
    if precision == "int8" and len(t.int8["schemes"]) > 1 and t.int8.get("default_scheme") == "auto":
        assert len(m.parity.scheme_selection) == 3  # measured, per exit
        assert all(f"scheme choice: {n}" in res.report for n in m.parity.scheme_selection)  # said on the terminal, not only kept
        # chosen on the images its agreement is then reported on: said (a best-of-N figure had read as a plain one)
        assert ("chose each exit's scheme by agreement and speed measured on these same verification images" in m.parity.note) == (m.parity.checked == "numerical"), m.parity
        if t.backend != "coreml":  # agreement and speed measured through the runtime, recorded per exit
            for e in m.exits:
                sel = e.quantization["selection"]
                assert {c["scheme"] for c in sel["candidates"]} | set(sel["rejected"]) == set(t.int8["schemes"])
                for c in sel["candidates"]:
                    assert np.isfinite([c["agreement"], c["max_abs_diff"], c["p50_ms"]]).all() and c["p50_ms"] > 0, c
                assert not [r for r in sel["rejected"].values() if "cannot run" in r], sel  # every scheme's artifact runs


def test_manifest_round_trip(tmp_path, micro_ckpt):
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    m = Manifest.load(res.path)
    again = Manifest.from_json(m.to_json())
    assert again.to_dict() == m.to_dict()
    assert json.loads(m.to_json())["schema_version"] == 2 and m.content_sha256 == m.content_digest()


def test_tampered_artifact_is_detected(tmp_path, micro_ckpt):
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    p = res.path / "exit2.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"exit 2.*exit2\.onnx.*SHA-256"):
        Manifest.load(res.path)
    p.unlink()
    with pytest.raises(ManifestError, match="exit2.onnx is missing"):
        Manifest.load(res.path)


def test_a_package_artifacts_digest_ignores_what_macos_adds_and_nothing_else(tmp_path):
    """A Finder .DS_Store (or an AppleDouble ._ file from SMB/FAT) inside an .mlpackage failed the bundle as tampered."""
    from dvt_runtime.manifest import _digest

    pkg = tmp_path / "exit1.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "model.mlmodel").write_bytes(b"weights")
    before = _digest(pkg)
    (pkg / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (pkg / "Data" / "._model.mlmodel").write_bytes(b"\0\5\26\7")
    assert _digest(pkg) == before
    (pkg / "Data" / ".hidden").write_bytes(b"x")  # any other file, hidden or not, is part of the artifact
    assert _digest(pkg) != before


def test_manifest_rejects_escaping_paths_and_newer_schema(tmp_path, micro_ckpt):
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    d = json.loads((res.path / "manifest.json").read_text())
    d["exits"][0]["artifact"] = "../../etc/passwd"
    (res.path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="escapes the bundle"):
        Manifest.load(res.path)
    d["schema_version"] = 99
    (res.path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="newer"):
        Manifest.load(res.path)


@pytest.mark.slow
def test_existing_bundle_needs_force_and_is_replaced_whole(tmp_path, micro_ckpt):
    out = tmp_path / "b"
    export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(out), verify_n=20, progress=False)
    with pytest.raises(ExportError, match="--force") as e:
        export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(out), verify_n=20, progress=False)
    assert "another checkpoint" not in str(e.value) and "bundle, not a" not in str(e.value)
    # this checkpoint's bundle for another target or precision (an app's ONNX fallback beside its .pte): said, not --force
    with pytest.raises(ExportError, match=r"it holds this checkpoint's onnx fp32 bundle, which --force would replace with the onnx int8 "
                                          rf"one; to keep both, name another folder, e\.g\. --out {re.escape(str(tmp_path / 'b-onnx-int8'))}$"):
        export_bundle(str(micro_ckpt), "onnx", "int8", out=str(out), verify_n=20, progress=False)
    # another model's bundle at that path (every bundle of an architecture is named alike): said, --force not advised
    other = torch.load(micro_ckpt, weights_only=True)
    other["classes"] = [f"c{i}" for i in range(10)]
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ExportError, match=rf"it is the bundle of another checkpoint \({re.escape(str(micro_ckpt))}, classes "
                                          rf"\['T-shirt/top', .*to keep both, name another folder, e\.g\. --out {re.escape(str(tmp_path / 'my-b'))}"):
        export_bundle(str(tmp_path / "other.pt"), "onnx", "fp32", out=str(out), verify_n=20, progress=False)
    # the same file trained on since: an earlier version of it, --force advised
    torch.save(other, tmp_path / "mine.pt")
    export_bundle(str(tmp_path / "mine.pt"), "onnx", "fp32", out=str(tmp_path / "m"), verify_n=20, progress=False)
    other["classes"] = [f"d{i}" for i in range(10)]
    torch.save(other, tmp_path / "mine.pt")
    with pytest.raises(ExportError, match=r"it is the bundle of an earlier version of .*mine\.pt \(the file changed since.*pass --force"):
        export_bundle(str(tmp_path / "mine.pt"), "onnx", "fp32", out=str(tmp_path / "m"), verify_n=20, progress=False)
    shutil.rmtree(tmp_path / "m")
    (tmp_path / "other.pt").unlink()
    (tmp_path / "mine.pt").unlink()
    export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(out), verify_n=20, progress=False, force=True)
    Manifest.load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "dvt-edge-export.log"]  # no temp or old directories left


@pytest.mark.xdist_group("subprocess-export")
def test_killed_export_leaves_no_bundle_and_keeps_previous(tmp_path, micro_ckpt):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime")]), OMP_NUM_THREADS="1")
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "dvt_edge.export", "--checkpoint", str(micro_ckpt), "--target", "onnx",
           "--out", str(out), "--verify-n", "20"]
    for with_previous in (False, True):
        if with_previous:
            export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(out), verify_n=20, progress=False)
            before = {p.name: p.read_bytes() for p in out.iterdir()}
        p = subprocess.Popen(cmd + (["--force"] if with_previous else []), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:  # wait until it is writing exits
            tmps = list(tmp_path.glob(".b.tmp-*"))
            if tmps and any(tmps[0].glob("exit1.onnx")):
                break
            time.sleep(0.02)
        assert p.poll() is None, "export finished before it could be interrupted"
        p.send_signal(signal.SIGKILL)
        p.wait()
        if with_previous:
            assert {q.name: q.read_bytes() for q in out.iterdir()} == before
            Manifest.load(out)
        else:
            assert not out.exists()
        for leftover in tmp_path.glob(".b.tmp-*"):  # a killed process cannot clean up; never mistaken for a bundle
            with pytest.raises(ManifestError):
                Manifest.load(leftover)
            shutil.rmtree(leftover)


def test_bad_targets_and_missing_extra(monkeypatch, micro_ckpt, capsys):
    with pytest.raises(ValueError, match=r"valid targets.*Did you mean 'coreml'"):
        get_target("coremI")
    assert export_main(["--checkpoint", str(micro_ckpt), "--target", "tflite"]) == 2
    assert "valid targets" in capsys.readouterr().err
    t = get_target("onnx")
    monkeypatch.setattr(type(t), "requires", property(lambda self: ("onnx_not_installed_pkg",)), raising=False)
    with pytest.raises(TargetUnavailable, match=r"pip install 'dvt-edge\[onnx\]'"):
        get_target("onnx").check_available()


def test_int8_without_calibration_data_says_how(tmp_path):
    m = create_model("dvt_micro_fmnist", img_size=56, splits=((12, 8, 0), (8, 5, 0), (4, 4, 0)))  # no known dataset
    save_checkpoint(tmp_path / "m.pt", m)
    with pytest.raises(ExportError, match="--calib-data"):
        export_bundle(str(tmp_path / "m.pt"), "onnx", "int8", out=str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists()


def test_cli_lists_targets(capsys):
    assert export_main(["--list-targets"]) == 0
    out = capsys.readouterr().out
    for name in TARGETS:
        assert name in out


def test_bundle_runs_in_runtime(tmp_path, micro_ckpt):
    from dvt_runtime.bundle import Bundle

    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    b = Bundle.open(res.path)
    x = load_dataset("fashion-mnist", "val").arrays(4)[0]
    logits = b.run_exits(x)
    model, _ = __import__("dvt_edge").load_checkpoint(micro_ckpt)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    for a, r in zip(logits, ref):
        np.testing.assert_allclose(a, r.numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not get_target("executorch").available, reason="executorch not installed")
def test_in_graph_input_resize_is_delegated_like_the_rest(tmp_path):
    """stage_img_sizes adds two constant linears per stage: parity holds and XNNPACK takes them
    (the ops left outside the delegate are the same as without the resize)."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.data import default_preprocess
    from dvt_edge.models import create_model

    left = {}
    for name, kw in {"plain": {}, "resized": dict(stage_img_sizes=(12, 18, 28), splits=((2, 2, 0), (3, 2, 1), (2, 2, 0)))}.items():
        ckpt = save_checkpoint(tmp_path / f"{name}.pt", create_model("dvt_micro_fmnist", **kw),
                               classes=[str(i) for i in range(10)], preprocess=default_preprocess(1, 28))
        res = export_bundle(str(ckpt), "executorch", "fp32", out=str(tmp_path / name), verify_n=20, progress=False)
        m = Manifest.load(res.path)
        assert m.parity.passed, m.parity
        left[name] = [e.undelegated_ops for e in m.exits]
    assert left["resized"] == left["plain"]


@pytest.mark.slow
@pytest.mark.skipif(not get_target("executorch").available, reason="executorch not installed")
def test_an_etrecord_lets_the_inspector_name_an_etdumps_operators(micro_ckpt, tmp_path):
    """No ETRecord was written, so an ETDump recorded on a device could time each operator but never name it: --etrecord
    writes exitK.etrecord beside each .pte, and ExecuTorch's Inspector reads the
    runtime's own ETDump with it."""
    from executorch.devtools import Inspector

    res = export_bundle(str(micro_ckpt), "executorch", "fp32", out=str(tmp_path / "b"), verify_n=20, etrecord=True,
                        progress=False)
    assert sorted(f.name for f in res.path.glob("*.etrecord")) == ["exit1.etrecord", "exit2.etrecord", "exit3.etrecord"]
    assert res.manifest.extras["etrecords"] == ["exit1.etrecord", "exit2.etrecord", "exit3.etrecord"]  # ours: --force replaces them
    export_bundle(str(micro_ckpt), "executorch", "fp32", out=str(tmp_path / "b"), verify_n=20, force=True, progress=False)
    assert not list(res.path.glob("*.etrecord"))  # it had refused: 'holds exit1.etrecord ... which its manifest does not list'
    res = export_bundle(str(micro_ckpt), "executorch", "fp32", out=str(tmp_path / "b"), verify_n=20, etrecord=True, force=True,
                        progress=False)
    b = Bundle.open(res.path, threads=1, etdump=True)
    for _ in range(3):
        b.predict(np.zeros(b.input_shape, np.float32), thresholds=[None] * (b.num_exits - 1))
    dumps = b.write_etdump(tmp_path / "trace")
    rec = json.loads((tmp_path / "trace" / "etdump_runs.json").read_text())  # the bundle that ran, for the import to check
    assert rec["timed"] is None and rec["threads"] == 1 and rec["bundle"]["artifacts"] == [e.sha256 for e in res.manifest.exits]
    for e, dump in enumerate(dumps):
        with contextlib.redirect_stdout(io.StringIO()):
            df = Inspector(etdump_path=str(dump), etrecord=str(res.path / f"exit{e + 1}.etrecord")).to_dataframe()
        named = [op for ops in df["op_types"] for op in ops]
        assert any("linear" in op or "addmm" in op or "layer_norm" in op for op in named), (e, named[:20])
    with pytest.raises(ValueError, match="--etrecord is ExecuTorch's"):
        export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "o"), etrecord=True, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not get_target("executorch").available, reason="executorch not installed")
def test_executorch_static_int8_rounds_only_linear_and_conv(tmp_path):
    """XNNPACK's cat annotator ignores the quantizer's filter: under static int8 every cat (the class token prepended to
    the residual stream, feature reuse's concat, relations_out) and adds after it came out rounded to int8, while the
    manifest said only linear/conv were; counted on the converted graph now, and none are."""
    from dvt_edge.export.common import ExitJob, exit_graphs
    from dvt_edge.export.executorch import _quantize, for_xnnpack
    from dvt_edge.models import create_model

    torch.manual_seed(0)
    model = create_model("dvt_t2t_micro").eval()
    graphs = exit_graphs(model)
    x = torch.randn(2, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
    with torch.no_grad():
        _, f, r = graphs[0].stage(x, None, None)
    calib = [{"image": x[i:i + 1].numpy(), "features": f[i:i + 1].numpy(), "relations": r[i:i + 1].numpy()} for i in range(2)]
    job = ExitJob(1, graphs[1], get_target("executorch"), "int8", "static", calib, tmp_path)
    _, info = _quantize(job, for_xnnpack(graphs[1]), job.example_inputs())
    assert info["quantized_by_kind"]["linear"] > 0 and info["quantized_other_ops"] == {}, info


@pytest.mark.skipif(not get_target("executorch").available, reason="executorch not installed")
def test_executorch_int8_keeps_the_input_resize_float_like_the_reuse_resize():
    """The in-graph area resize of a stage's input (two constant linears) was quantized and counted among the layers
    ('linear': 10 where the model has 8), while the manifest named constant matrices as float."""
    from dvt_edge.export.common import ExitJob, exit_graphs
    from dvt_edge.export.executorch import _quantize, for_xnnpack
    from dvt_edge.models import create_model

    counts = []
    for kw in ({}, dict(stage_img_sizes=(12, 18, 28), splits=((2, 2, 0), (3, 2, 1), (2, 2, 0)))):
        torch.manual_seed(0)
        graphs = exit_graphs(create_model("dvt_micro_fmnist", **kw).eval())
        job = ExitJob(0, graphs[0], get_target("executorch"), "int8", "dynamic", [], Path("."))
        _, info = _quantize(job, for_xnnpack(graphs[0]), job.example_inputs())
        counts.append(info["quantized_by_kind"])
    assert counts[0] == counts[1] and info["excluded_ops"]["input resize (constant area-resize matrix)"] == 2, (counts, info)


def test_stages_of_different_depths_export_and_run(tmp_path):
    """Per-stage depths and stems: each exit's relations tensor has its own width in the manifest,
    and the bundle passes parity through ONNX Runtime."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.data import default_preprocess
    from dvt_edge.models import create_model

    model = create_model("dvt_small_cifar", stage_depths=(1, 2, 1), stem_blocks=(2, 3, 2))
    ckpt = save_checkpoint(tmp_path / "uneven.pt", model, classes=[str(i) for i in range(10)], preprocess=default_preprocess(3, 32))
    res = export_bundle(str(ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=20, progress=False)
    m = Manifest.load(res.path)
    assert m.parity.passed, m.parity
    heads = model.cfg.num_heads
    rel = lambda specs: next((t.shape[1:] for t in specs if t.name.startswith("relations")), None)  # noqa: E731
    assert [rel(e.inputs) for e in m.exits] == [None, [1 * heads, 17, 17], [2 * heads, 37, 37]]
    assert [rel(e.outputs) for e in m.exits] == [[1 * heads, 17, 17], [2 * heads, 37, 37], None]


def test_int8_scheme_choice_trades_agreement_for_speed_within_the_slack():
    from dvt_edge.export.int8 import MIN_SPEEDUP, SPEED_SLACK_POINTS, _choose

    c = lambda sch, agree, ms, err=0.1: {"scheme": sch, "agreement": agree, "max_abs_diff": err, "p50_ms": ms}  # noqa: E731
    pick, why = _choose([c("static", 99.0, 10.0), c("dynamic", 99.0 - SPEED_SLACK_POINTS / 2, 6.0)])
    assert pick["scheme"] == "dynamic" and "fastest" in why  # as faithful, within the slack, clearly faster
    pick, why = _choose([c("static", 99.0, 10.0), c("dynamic", 99.0 - 2 * SPEED_SLACK_POINTS, 6.0)])
    assert pick["scheme"] == "static" and why.startswith("best agreement")  # faster but less faithful: refused
    pick, _ = _choose([c("static", 99.0, 10.0), c("dynamic", 99.0, 10.0 * (1 - MIN_SPEEDUP / 2))])
    assert pick["scheme"] == "static"  # faster by less than MIN_SPEEDUP: noise, the more faithful stays
    pick, _ = _choose([c("static", 99.0, 10.0, 0.5), c("dynamic", 99.0, 10.0, 0.1)])
    assert pick["scheme"] == "dynamic"  # equal agreement and speed: the smaller error
    pick, _ = _choose([c("static", -1.0, None, None), c("dynamic", 97.5, 9.0)])
    assert pick["scheme"] == "dynamic"  # non-finite logits (agreement -1) never win


def test_int8_agreement_requirement_can_be_recorded_only():
    from dvt_edge.export.verify import INT8_MIN_AGREEMENT, check_parity
    from dvt_runtime.manifest import ExitParity, ParityReport

    rep = ParityReport(runtime="onnxruntime", checked="numerical", exits=[ExitParity(exit=1, top1_agreement=60.0, finite=True)])
    assert any("agreement 60.00%" in p for p in check_parity(rep, "int8"))  # the default requires INT8_MIN_AGREEMENT
    assert check_parity(rep, "int8", None) == []  # random weights: recorded, not required
    rep.exits[0].finite = False
    assert check_parity(rep, "int8", None)  # non-finite logits fail whatever the agreement rule
    nan = ParityReport(runtime="onnxruntime", checked="numerical", exits=[ExitParity(exit=1, top1_agreement=float("nan"))])
    assert check_parity(nan, "int8", INT8_MIN_AGREEMENT)  # NaN agreement is a failure
    rep.exits[0].finite = True  # Core ML fp16 is held to the same bar (it was only checked for finite logits)
    assert any("fp16 top-1 agreement 60.00%" in p for p in check_parity(rep, "fp16"))
    assert check_parity(nan, "fp16", INT8_MIN_AGREEMENT) and check_parity(rep, "fp16", None) == []


def test_xnnpack_form_takes_large_soft_splits_as_slices_all_delegated():
    """ExecuTorch's recipe runs T2T's large-kernel soft splits as slices (no k*k multiply-accumulates
    per value), with the numbers of nn.Unfold and nothing left outside the XNNPACK delegate."""
    pytest.importorskip("executorch")
    import torch

    from dvt_edge.export.executorch import BLOCKED_SOFT_SPLIT_MIN_KERNEL, for_xnnpack, undelegated_ops
    from dvt_edge.models import SoftSplit

    net = torch.nn.Sequential(SoftSplit(3, 14, 8, 3), torch.nn.Identity())
    small = torch.nn.Sequential(SoftSplit(3, 7, 4, 2))
    x = torch.randn(1, 3, 64, 64)
    xn, xs = for_xnnpack(net), for_xnnpack(small)
    assert xn[0].blocked and not xs[0].blocked and not net[0].blocked  # the original is untouched
    assert 14 >= BLOCKED_SOFT_SPLIT_MIN_KERNEL > 7
    assert torch.equal(xn(x), torch.nn.Unfold(14, padding=3, stride=8)(x))
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(xn, (x,)), partitioner=[XnnpackPartitioner()])
    assert undelegated_ops(edge.exported_program()) == {}


def test_coreml_w8a8_quantizes_activations_and_weights(tmp_path, micro_ckpt):
    """Core ML W8A8: quantize/dequantize on activations and int8 weights in every exit's program,
    the quantized graph's accuracy measured on held-out real images (in PyTorch off macOS, where
    predict does not exist; on macOS the export's parity check runs the .mlpackage too)."""
    t = get_target("coreml")
    if not t.available:
        pytest.skip("coremltools not installed")
    res = export_bundle(str(micro_ckpt), "coreml", "int8", out=str(tmp_path / "b"), verify_n=200, calib_n=16, scheme="w8a8",
                        progress=False, int8_min_agreement=None)  # a near-chance fixture: bounded below in images, not by the gate
    m = Manifest.load(res.path)
    assert not m.parity.problems and m.parity.passed == (m.parity.checked == "numerical"), m.parity  # structure alone never passes
    for e in m.exits:
        q = e.quantization
        assert q["scheme"] == "w8a8" and q["minimum_deployment_target"] == "iOS17"
        assert q["program_ops"]["quantize"] > 0 and q["quantized_layers"] > 0
        assert q["quantized_by_kind"]["conv"] > 0 and q["quantized_layers"] == sum(q["quantized_by_kind"].values()), q
        assert q["program_ops"]["constexpr_affine_dequantize"] > 0
        sim = q["simulated"]
        assert sim["finite"] is True and sim["images"] == 200
        assert np.isfinite([sim["agreement"], sim["max_abs_logit_diff"]]).all() and sim["agreement"] >= 95.0, sim  # <= 10 of 200
        assert 0 < sim["max_abs_logit_diff"] < 1.0, sim  # quantized: not the float graph, not broken
    if sys.platform == "darwin":
        assert m.parity.checked != "structural" and min(r.top1_agreement for r in m.parity.exits) >= 95.0


def test_simulated_quantization_problems_fail_on_nan():
    from dvt_edge.export.verify import simulated_problems

    ok = {"scheme": "w8a8", "simulated": {"finite": True, "agreement": 99.0, "max_abs_logit_diff": 0.1}}
    assert simulated_problems([ok, {"scheme": "linear"}], 97.0) == []
    nan_agree = {"scheme": "w8a8", "simulated": {**ok["simulated"], "agreement": float("nan")}}
    nan_diff = {"scheme": "w8a8", "simulated": {**ok["simulated"], "max_abs_logit_diff": float("nan")}}
    not_finite = {"scheme": "w8a8", "simulated": {**ok["simulated"], "finite": False}}
    low = {"scheme": "w8a8", "simulated": {**ok["simulated"], "agreement": 90.0}}
    probs = simulated_problems([nan_agree, nan_diff, not_finite, low], 97.0)
    assert len(probs) == 4 and "exit 1" in probs[0] and "exit 4" in probs[3], probs
    assert simulated_problems([low], None) == []  # agreement not required (random weights); finiteness still is
    assert len(simulated_problems([not_finite], None)) == 1


def test_coreml_w8a8_converts_t2t_stages(tmp_path):
    """W8A8 on a T2T DVT (performer tokens-to-token, soft split, conv stem): every exit converts with
    quantized activations and weights (random weights: agreement recorded, not required)."""
    if not get_target("coreml").available:
        pytest.skip("coremltools not installed")
    from dvt_edge.bench import random_checkpoint
    from dvt_edge.bench_latency import _random_images_npz
    from dvt_edge.models import create_model

    ckpt = random_checkpoint("dvt_t2t_micro", tmp_path)
    spec = _random_images_npz(create_model("dvt_t2t_micro"), None, tmp_path / "imgs.npz", n=40)
    res = export_bundle(ckpt, "coreml", "int8", out=str(tmp_path / "b"), calib_data=spec, calib_n=8, verify_n=16, scheme="w8a8",
                        int8_min_agreement=None, progress=False)
    m = Manifest.load(res.path)
    assert not m.parity.problems and m.parity.passed == (m.parity.checked == "numerical"), m.parity  # structure alone never passes
    for e in m.exits:
        q = e.quantization
        assert q["program_ops"]["quantize"] > 0 and q["program_ops"]["constexpr_affine_dequantize"] > 0 and q["quantized_layers"] > 0, q
        assert q["simulated"]["finite"] is True and np.isfinite(q["simulated"]["max_abs_logit_diff"])


def test_cli_export_without_images_in_a_fresh_interpreter(tmp_path):
    """A checkpoint with no dataset to verify on (random weights here; e.g. a published one):
    nothing had imported torch's sympy helpers before the dynamic batch axis needed them
    (AttributeError in a fresh interpreter)."""
    from dvt_edge.bench import random_checkpoint

    ckpt = random_checkpoint("dvt_t2t_micro", tmp_path)
    out = tmp_path / "b"
    r = subprocess.run([sys.executable, "-m", "dvt_edge.export", "--checkpoint", ckpt, "--target", "onnx", "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    m = Manifest.load(out)
    assert m.max_batch is None and m.parity.n_real == 0  # dynamic batch axis; fixed inputs only


def test_coreml_w8a8_without_torchao_names_the_extra(tmp_path, micro_ckpt, monkeypatch):
    if not get_target("coreml").available:
        pytest.skip("coremltools not installed")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "torchao" else real(name, *a, **k))
    with pytest.raises(ExportError, match=r"dvt-edge\[coreml\]"):
        export_bundle(str(micro_ckpt), "coreml", "int8", out=str(tmp_path / "b"), verify_n=20, calib_n=4, scheme="w8a8", progress=False)
    assert not (tmp_path / "b").exists()


def test_simulated_agreement_fails_on_a_non_finite_reference_or_result():
    from dvt_edge.export.pt2e import simulated_agreement

    class Const(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, image):
            return torch.tensor([[self.v, 0.0]])

    x = [{"image": np.zeros((1, 1), np.float32)}] * 2
    assert simulated_agreement(Const(1.0), Const(0.5), x, ["image"])["finite"] is True
    for ref, got in ((float("nan"), 0.5), (1.0, float("inf"))):
        r = simulated_agreement(Const(ref), Const(got), x, ["image"])
        assert r["finite"] is False and not np.isfinite(r["max_abs_logit_diff"]), (ref, got, r)


def test_checkpoint_thresholds_become_confidences_or_a_clear_error():
    """A published dynamic_threshold row may hold 1e8 for an exit no sample reaches (never stop there) or a
    negative value (always stop): mapped into [0, 1] / None so the bundle loads; NaN is refused."""
    from types import SimpleNamespace

    from dvt_edge.export import _default_thresholds
    from dvt_edge.export.common import ExportError

    model = SimpleNamespace(num_exits=3)
    rows = np.array([[0.9, 0.8, 0.1], [1e8, -0.5, 0.7], [0.5, 0.5, 0.5]])
    t, src = _default_thresholds(model, SimpleNamespace(thresholds=rows), None, None)
    assert t == [None, 0.0, None] and "row 2 of 3" in src and "calibrate" not in src  # 1-based: the middle row of 3
    assert "the authors' fp32 thresholds, and int8 shifts confidences" in _default_thresholds(
        model, SimpleNamespace(thresholds=rows), None, None, precision="int8")[1]
    with pytest.raises(ExportError, match="non-finite"):
        _default_thresholds(model, SimpleNamespace(thresholds=np.array([[np.nan, 0.5, 0.1]])), None, None)


def test_a_manifest_that_load_would_refuse_is_never_written(onnx_bundle, tmp_path):
    from dvt_runtime.manifest import Manifest, ManifestError

    m = Manifest.load(onnx_bundle)
    m.thresholds = [1e8, None]
    with pytest.raises(ManifestError, match="confidences in"):
        m.save(tmp_path)
    assert not (tmp_path / "manifest.json").exists()
    m.thresholds = [0.9, None]
    m.save(tmp_path)
    assert Manifest.load(tmp_path, verify=False).thresholds == [0.9, None]


def test_one_crashing_target_is_a_failed_line_and_the_others_still_run(micro_ckpt, monkeypatch, capsys):
    """Ultralytics-style: in a multi-target run a toolchain crash (not an ExportError) is a FAILED line with
    its type, the remaining jobs run, the exit code is 1; precisions a target lacks are named as skipped."""
    from types import SimpleNamespace

    import dvt_edge.export.__main__ as M

    ran = []

    def fake_export(checkpoint, name, prec, opts):  # the CLI's job loop only: the real exports are tested above
        ran.append((name, prec))
        if name == "coreml":
            raise RuntimeError("converter exploded")
        return SimpleNamespace(report=f"{name} {prec} ok", path=f"bundles/{name}-{prec}")

    monkeypatch.setattr(M, "export_bundle", fake_export)
    assert M.main(["--checkpoint", str(micro_ckpt), "--target", "coreml,onnx", "--precision", "fp16,fp32"]) == 1
    out = capsys.readouterr()
    assert ran == [("coreml", "fp16"), ("coreml", "fp32"), ("onnx", "fp32")]
    assert "FAILED coreml fp16: RuntimeError in the toolchain: converter exploded" in out.err
    assert "skipping onnx fp16: onnx supports fp32, int8" in out.err and "onnx fp32 ok" in out.out
    assert M.main(["--checkpoint", str(micro_ckpt), "--target", "onnx,ort", "--precision", "bf16"]) == 2
    assert "valid per target" in capsys.readouterr().err


def test_the_table_names_its_images_and_says_when_too_few_checked_the_agreement(micro_ckpt, tmp_path):
    """3 images calibrated static int8 and verified it too ("100% agreement", exit code 0, nothing said on the terminal;
    the images only in the manifest): the table names the images and warns of agreement on few, or in-sample, images."""
    from dvt_edge.fashion_mnist import FASHION_MNIST_CLASSES

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "three.npz", images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), labels=np.arange(3),
             classes=np.array(FASHION_MNIST_CLASSES))
    res = export_bundle(str(micro_ckpt), "onnx", "int8", out=str(tmp_path / "b"), calib_data=f"npz:{tmp_path / 'three.npz'}",
                        scheme="static", int8_min_agreement=None, progress=False)
    assert f"images: 3 calibration images from npz:{tmp_path / 'three.npz'}/train, 3 verification images" in res.report, res.report
    assert ("warning: agreement measured on only 3 real images (each is 33 points), so it is rough; and they are the calibration "
            "images themselves") in res.report
    assert res.manifest.quantization["min_top1_agreement"] is None  # the bar applied (none here) is recorded
    # what was quantized, counted on the ONNX graph (the manifest had named op types only): every linear of each exit's
    # stage (torch.export's count), the head and the constant resize matrices included, and said so
    from dvt_edge.export.common import exit_graphs

    for e, g in zip(res.manifest.exits, exit_graphs(load_checkpoint(micro_ckpt)[0])):
        linears = sum(n.op == "call_function" and "linear" in str(n.target) for n in torch.export.export(g.stage, g.example_inputs()).graph.nodes)
        assert sum(e.quantization["quantized_weights"].values()) == linears > 0, (e.quantization, linears)
        assert "the classifier head and the constant resize matrices (" in e.quantization["quantized_weights_note"]
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "f"), calib_data="fashion-mnist", verify_n=300,
                        progress=False)
    assert "images: 300 verification images from fashion-mnist/val" in res.report and "warning: agreement" not in res.report


def test_one_set_of_images_verifies_on_images_calibration_did_not_see(tmp_path):
    """An npz without a split serves both splits: verification must not reuse calibration images
    (int8 agreement measured on calibration images flatters it), and the note says where they came from."""
    from dvt_edge.export import _load_data
    from dvt_runtime.preprocess import Preprocess

    n = 40
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None] / (2 * n), (n, 1, 28, 28)).copy()  # image i: i/2n
    images[:, :, 1::2] += 0.3  # and stripes: no image is blank (those are refused), the first pixel still names it
    np.savez(tmp_path / "one.npz", images=images, labels=np.arange(n) % 4)
    pre = Preprocess(size=28, resize=28, channels="gray", mean=(0.0,), std=(1.0,))
    d = _load_data(f"npz:{tmp_path / 'one.npz'}", pre, calib_n=16, verify_n=100, need_calib=True, num_classes=4)
    seen = {float(np.asarray(c)[0, 0, 0]) for c in d.calib}  # calib: a list of (C, H, W) images
    verified = {float(v[0, 0, 0]) for v in d.verify_x}
    assert len(seen) == 16 and len(verified) == n - 16 and not seen & verified
    assert "none of them calibration images" in d.note
    # nothing calibrates (fp32, weight-only or dynamic int8): a reader's 100 labelled images verified only 36 (under the 50 that
    # choose thresholds), 64 held back for no calibration, and the note still said "64 calibration images"
    d = _load_data(f"npz:{tmp_path / 'one.npz'}", pre, calib_n=16, verify_n=100, need_calib=False, num_classes=4)
    assert d.calib == [] and len(d.verify_x) == n and d.note == f"{n} verification images from npz:{tmp_path / 'one.npz'}/train (class-stratified, seed 1)", d.note
    # a file of one named split (python -m dvt_edge.data export --split val writes one): no training split to
    # load, so that split serves calibration and verification alike, and the note names it
    np.savez(tmp_path / "val.npz", images=images, labels=np.arange(n) % 4, split=np.array("val"))
    d = _load_data(f"npz:{tmp_path / 'val.npz'}", pre, calib_n=16, verify_n=100, need_calib=True, num_classes=4)
    assert len(d.calib) == 16 and len(d.verify_x) == n - 16
    assert d.note.startswith(f"16 calibration images from npz:{tmp_path / 'val.npz'}/val, 24 verification images from "
                             f"npz:{tmp_path / 'val.npz'}/val, none of them calibration images"), d.note
    assert d.note.endswith("(class-stratified, seeds 0 and 1)"), d.note  # the subsets' seeds, recorded in the manifest's parity.data
    np.savez(tmp_path / "train.npz", images=images, labels=np.arange(n) % 4, split=np.array("train"))
    note = _load_data(f"npz:{tmp_path / 'train.npz'}", pre, 16, 100, True, 4).note  # and a train file, as before
    assert note.startswith(f"16 calibration images from npz:{tmp_path / 'train.npz'}/train, "), note
    with pytest.raises(ExportError, match="is not a directory"):  # a missing training split is still an error, not a fall-back
        _load_data(f"imagefolder:{tmp_path / 'nothing'}", pre, 16, 100, True, 4)
    from dvt_edge.export import _same_images
    from dvt_edge.imageset import ImageSet

    a = ImageSet("a", "train", images, np.arange(n) % 4, list("abcd"), pre, preprocessed=True)
    b = ImageSet("b", "val", images + 1, np.arange(n) % 4, list("abcd"), pre, preprocessed=True)
    assert _same_images(a, a) and not _same_images(a, b)  # a real val with train's labels is still a val


def test_directory_artifact_with_a_symlink_inside_is_refused(tmp_path):
    """A directory artifact (.mlpackage) whose file is a link to elsewhere on the device (its hash would match if the
    target's contents are known) is refused, whatever the hash says."""
    from dvt_runtime.manifest import ManifestError, artifact_digest

    pkg = tmp_path / "exit1.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not part of the bundle")
    assert len(artifact_digest(pkg)) == 64  # plain files: hashed
    (pkg / "Data" / "weight.bin").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"contains symbolic links \(Data/weight.bin\)"):
        artifact_digest(pkg)


@pytest.mark.slow
def test_out_that_is_a_folder_of_bundles_is_the_parent(micro_ckpt, tmp_path, capsys, monkeypatch):
    """--out bundles/ (an existing folder that is not a bundle, or a path ending in /) holds the bundle, as with several
    targets; an existing non-bundle folder named as the bundle itself is never offered --force."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundles").mkdir()
    args = ["--checkpoint", str(micro_ckpt), "--target", "onnx", "--precision", "fp32", "--no-verify"]
    assert export_main([*args, "--out", "bundles"]) == 0
    assert (tmp_path / "bundles" / "dvt_micro_fmnist-onnx-fp32" / "manifest.json").is_file()
    assert export_main([*args, "--out", "new/"]) == 0
    assert (tmp_path / "new" / "dvt_micro_fmnist-onnx-fp32" / "manifest.json").is_file()
    assert export_main([*args, "--out", "mine"]) == 0 and (tmp_path / "mine" / "manifest.json").is_file()  # a new path: the bundle
    par = Manifest.load(tmp_path / "mine").parity  # --no-verify: never reads as a passed check
    assert par.passed is False and par.checked == "skipped (--no-verify)" and "nothing was compared" in par.note, par
    from dvt_edge.export.verify import format_parity  # its images did not run because of the flag, not the host

    assert "(not run: --no-verify)" in format_parity(Manifest.load(tmp_path / "mine")) or not par.data
    capsys.readouterr()
    assert export_main([*args, "--out", "mine"]) == 2
    assert "pass --force" in capsys.readouterr().err  # an existing bundle: --force replaces it
    # "mine/" (a shell's tab completion) names that bundle too: it wrote a new bundle inside the old one
    assert export_main([*args, "--out", "mine/", "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir() if p.is_dir()) == [] and Manifest.load(tmp_path / "mine")
    # a typo among several precisions is refused before any export (fp32 ran for minutes, then fp16 failed "in the toolchain")
    capsys.readouterr()
    assert export_main([*args[:-3], "--precision", "fp32,int9", "--out", "typo"]) == 2
    assert "unsupported precision(s): onnx int9; valid per target: {'onnx': ['fp32', 'int8']}\n" in capsys.readouterr().err
    assert export_main([*args[:-5], "--target", "executorch", "--precision", "static", "--out", "typo"]) == 2  # a scheme for a precision
    assert capsys.readouterr().err.endswith("; static is an int8 scheme: --precision int8 --scheme static\n")
    assert not (tmp_path / "typo").exists()
    # "onnx,onnx" exported twice, then failed on the bundle it had just written; "fp32," named a blank precision
    assert export_main([*args[:-5], "--target", "onnx, onnx", "--precision", "fp32,", "--no-verify", "--out", "twice"]) == 0
    assert Manifest.load(tmp_path / "twice").precision == "fp32"
    assert export_main([*args[:-5], "--target", ",", "--out", "none"]) == 2
    assert "--target and --precision name at least one each" in capsys.readouterr().err
    from dvt_edge.export import ExportError
    from dvt_edge.export.install import check_destination

    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "x.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not a dvt-edge bundle") as e:
        check_destination(tmp_path / "notabundle", force=False)
    assert "--force to replace" not in str(e.value)
    # --out . (the working directory, not a bundle) is the parent: the bundle goes inside, nothing there is replaced
    assert export_main([*args, "--out", ".", "--force"]) == 0
    assert (tmp_path / "dvt_micro_fmnist-onnx-fp32" / "manifest.json").is_file() and (tmp_path / "notabundle" / "x.txt").is_file()
    with pytest.raises(ExportError, match="is the current directory"):  # never the working directory itself
        check_destination(Path("."), force=True)


def test_images_of_other_classes_verify_agreement_but_never_score_labels(micro_ckpt, tmp_path):
    """A folder whose classes are not the model's (2 against Fashion-MNIST's 10) still calibrates and checks agreement
    with PyTorch; its labels never report accuracy or choose the default thresholds (they scored 0% and picked
    thresholds against another label set)."""
    import cv2

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(20):
            cv2.imwrite(str(tmp_path / "imgs" / "train" / c / f"{i}.png"), rng.integers(0, 256, (28, 28), dtype=np.uint8))
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), calib_data=f"imagefolder:{tmp_path / 'imgs'}",
                        verify_n=20, progress=False)
    m = Manifest.load(res.path)
    assert m.parity.passed and m.parity.n_real > 0
    assert all(r.top1_agreement >= 97.0 and r.top1_artifact is None and r.top1_pytorch is None for r in m.parity.exits), m.parity
    assert "labels are not used" in m.parity.data and "none of the checkpoint's" in m.parity.data, m.parity.data
    assert m.thresholds is None or m.thresholds_source.startswith("checkpoint"), (m.thresholds, m.thresholds_source)


def test_a_1000_class_imagenet_layout_without_names_exports_imagenets(tmp_path):
    """A published-layout checkpoint carries no class names: its bundle names ImageNet-1k's classes (the webcam
    showed '283 87%'), not output indices; a checkpoint's own names always win."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.imageset import imagenet1k
    from dvt_edge.models import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "in1k.pt", create_model("dvt_t2t_micro", num_classes=1000))
    res = export_bundle(str(ckpt), "onnx", "fp32", out=str(tmp_path / "b"), progress=False)
    m = Manifest.load(res.path)
    assert m.parity.passed and m.classes == list(imagenet1k()[1])
    b = Bundle.open(res.path)
    p = b.predict(np.zeros((64, 64, 3), np.uint8))
    assert p.class_name == imagenet1k()[1][p.label]


def test_onnx_static_int8_keeps_attention_matmuls_float(micro_ckpt, tmp_path):
    """ORT's QDQ quantizer ignores MatMulConstBOnly and quantized attention's two-activation MatMuls too (measured on the
    CIFAR reference's stages: 5-10% slower, no better agreement): they are named and stay float; weight MatMuls are int8."""
    import onnx

    if not get_target("onnx").available:
        pytest.skip("onnx toolchain not installed")
    res = export_bundle(str(micro_ckpt), "onnx", "int8", out=str(tmp_path / "b"), verify_n=60, calib_n=16, scheme="static",
                        progress=False, int8_min_agreement=None)  # the graph is checked here; agreement of a near-chance model varies by CPU
    m = Manifest.load(res.path)
    for e in m.exits:
        g = onnx.load(str(res.path / e.artifact)).graph
        inits = {i.name for i in g.initializer}
        dq = {o: n for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        weight_mm = act_mm = 0
        for n in g.node:
            if n.op_type != "MatMul":
                continue
            if any(i in dq and dq[i].input[0] in inits for i in n.input):
                weight_mm += 1
            else:
                act_mm += 1
                assert not any(i in dq for i in n.input), f"exit {e.index + 1}: {n.name} quantized: {list(n.input)}"
        assert weight_mm > 0 and act_mm > 0, (weight_mm, act_mm)
        assert f"{act_mm} MatMul(s) of two activations (attention) stay float" in e.quantization["excluded_ops"], e.quantization


def test_non_finite_artifact_logits_fail_with_the_parity_table(tmp_path, micro_ckpt, monkeypatch):
    """A NaN logit from an artifact on real images fails the export with its parity table: the thresholds are not
    chosen on it and no decision agreement is computed (the threshold search raised on the NaN first)."""
    import dvt_edge.export.verify as v

    real = v.chained

    def nan_logits(bundle, x, batch):
        out = real(bundle, x, batch)
        out[1][0, 0] = np.nan  # exit 2's logits on the first verification image
        return out

    monkeypatch.setattr(v, "chained", nan_logits)
    (tmp_path / "dvt-edge-export.log").write_text("an earlier export's lines\n")  # kept: a log it did not create
    with pytest.raises(ExportError) as e:
        export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=40, progress=False)
    msg = str(e.value)
    assert msg.startswith("verification failed") and "returned NaN or infinite logits" in msg and "confidences contain" not in msg, msg
    assert not (tmp_path / "b").exists()
    # the log ends saying how the export it holds ended (the error had reached the terminal only)
    last = (tmp_path / "dvt-edge-export.log").read_text().splitlines()[-1]
    assert re.fullmatch(rf"==== \S+ failed, nothing written at {re.escape(str(tmp_path / 'b'))}: VerificationFailed: verification failed \(.* ====", last), last


def test_the_toolchain_log_ends_each_export_with_its_verdict_and_notes(tmp_path, micro_ckpt):
    """A log read later (several exports append to one) said which exports started, not how each ended: each export's
    lines end with its verdict, its default thresholds' source and the notes the terminal got."""
    out = tmp_path / "b"
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(out), verify_n=40, progress=False)
    text = (tmp_path / "dvt-edge-export.log").read_text()
    done = [line for line in text.splitlines() if " done: " in line]
    assert len(done) == 1 and re.fullmatch(rf"==== \S+ done: {re.escape(str(out))} \(check numerical, passed; default thresholds: "
                                           rf"{re.escape(res.manifest.thresholds_source)}\) ====", done[0]), done
    assert text.index(f"export {micro_ckpt} -> onnx fp32 at {out}") < text.index(done[0])  # after the header it closes
    assert all(f"note: {n}" in text for n in res.notes)


def test_reference_cascade_keeps_inputs_only_for_the_images_asked(micro_ckpt):
    """Verification keeps each exit's inputs (MBs per image at 224 px) only for the images the int8 checks use."""
    from dvt_edge.export.common import exit_graphs
    from dvt_edge.export.verify import torch_cascade

    graphs = exit_graphs(load_checkpoint(micro_ckpt)[0])
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    every, some = torch_cascade(graphs, x), torch_cascade(graphs, x, keep_inputs=2)
    assert [len(d["inputs"]) for d in some[1]] == [1, 3, 3] and all(d["inputs"] == {} for per in some[2:] for d in per)
    for a, b in zip(every, some):  # the logits are the same either way
        for da, db in zip(a, b):
            np.testing.assert_array_equal(da["logits"], db["logits"])


def test_no_real_images_note_fits_where_the_target_runs(tmp_path, micro_ckpt, monkeypatch, capsys):
    """Off macOS, a Core ML export said "give images to verify on real images", but with images it still checked none
    here: it says the check is structural and what images would still do; a target that runs here keeps the hint."""
    import dvt_edge.export as E

    if not get_target("coreml").available:
        pytest.skip("coremltools not installed")
    monkeypatch.setattr(E, "checkpoint_data", lambda *a, **k: (None, ""))  # a checkpoint whose data is unknown
    from dvt_runtime.backends import available_backends

    export_bundle(str(micro_ckpt), "coreml", "fp32", out=str(tmp_path / "c"), progress=False)
    err = capsys.readouterr().err
    if "coreml" in available_backends():  # on macOS it verifies numerically: the hint applies
        assert "to verify on real images" in err
    else:
        assert "coreml does not run on this host, so the export is checked structurally here" in err and "to verify on real images" not in err
    export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "o"), progress=False)
    assert "give images (export --calib-data, bench --data) to verify on real images" in capsys.readouterr().err


def test_an_export_never_verifies_on_images_the_model_trained_on(tmp_path, monkeypatch):
    """A dvt_small_cifar trained on the official CIFAR-10 (all 50,000 training images), exported where that set is not
    here: cifar10-ref stood in, and its val images (5,000 of those training images) verified the export and chose its
    default thresholds, called held out."""
    import json

    from dvt_edge.models import create_model

    monkeypatch.setenv("DVT_DATA", str(tmp_path))  # no official CIFAR-10 here
    monkeypatch.setenv("DVT_OFFLINE", "1")
    extras = {"train_summary": json.dumps({"args": {"model": "dvt_small_cifar", "data": "cifar10"}})}
    torch.save({"model_state_dict": create_model("dvt_small_cifar").state_dict(), **extras}, tmp_path / "c.pt")
    with pytest.raises(ExportError, match="every one of which cifar10 trained on: no stand-in to verify on.*pass --calib-data"):
        export_bundle(str(tmp_path / "c.pt"), "onnx", "fp32", out=str(tmp_path / "b"), model_name="dvt_small_cifar", progress=False)
    assert not (tmp_path / "b").exists()


def test_verification_judges_the_images_by_the_checkpoints_own_preprocessing(micro_ckpt, tmp_path):
    """The verification bundle carried a default preprocessing: a checkpoint normalising with std 0.02 failed its own
    export ('input holds values from -25 to 25, but this bundle's preprocessing gives -0.81 to 2.02')."""
    ckpt = torch.load(micro_ckpt, weights_only=True)
    ckpt["preprocess"] = {**ckpt["preprocess"], "mean": [0.5], "std": [0.02]}
    torch.save(ckpt, tmp_path / "narrow.pt")
    res = export_bundle(str(tmp_path / "narrow.pt"), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=30, progress=False)
    assert res.manifest.parity.passed and res.manifest.parity.n_real == 30 and res.manifest.preprocess.std == (0.02,)


def test_blank_calibration_images_are_refused_not_exported_as_passed(micro_ckpt, tmp_path, capsys):
    """300 black images calibrated a static int8 CIFAR bundle and verified it too: exported "passed", 12 to 22 points
    down on real images (a quantization engineer's audit). A set most of whose images are blank is refused, by the
    export (as pixels or preprocessed) and by the runtime's calibrate, naming the problem; a black image is not called
    grayscale."""
    from dvt_edge.fashion_mnist import FASHION_MNIST_CLASSES
    from dvt_runtime.calibration import CalibrationError
    from dvt_runtime.manifest import Manifest
    from dvt_runtime.npzsets import foreign_pixels, load_npz

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    black = np.zeros((40, 28, 28), np.uint8)
    black[:12] = real[:12]  # 28 of 40 blank (one gray level of JPEG-like noise on the rest would not change that)
    black[12:20] += rng.integers(0, 2, (8, 28, 28), dtype=np.uint8)
    for name, imgs in (("black", black), ("real", real)):
        np.savez(tmp_path / f"{name}.npz", images=imgs, labels=np.arange(40) % 10, classes=np.array(FASHION_MNIST_CLASSES))
    with pytest.raises(ExportError, match=r"calibration images from npz:.*black.npz: \d+ of \d+ images looked at are blank"):
        export_bundle(str(micro_ckpt), "onnx", "int8", out=str(tmp_path / "b"), calib_data=f"npz:{tmp_path / 'black.npz'}",
                      scheme="static", int8_min_agreement=None, progress=False)
    assert not (tmp_path / "b").exists()
    res = export_bundle(str(micro_ckpt), "onnx", "fp32", out=str(tmp_path / "ok"), calib_data=f"npz:{tmp_path / 'real.npz'}",
                        verify_n=40, progress=False)
    pre = Manifest.load(res.path).preprocess
    with pytest.raises(CalibrationError, match="28 of 40 images looked at are blank"):
        load_npz(str(tmp_path / "black.npz"), pre)
    x = pre.apply_batch(black)  # (40, 1, 28, 28): stored preprocessed, as data export writes them
    np.savez(tmp_path / "black_pre.npz", images=x, labels=np.arange(40) % 10, preprocess=json.dumps(pre.to_dict()))
    with pytest.raises(CalibrationError, match="28 of 40 images looked at are blank"):
        load_npz(str(tmp_path / "black_pre.npz"), pre)
    assert load_npz(str(tmp_path / "real.npz"), pre)[0].shape == (40, 1, 28, 28)
    turns = np.stack([np.zeros((28, 28), np.uint8) if i % 3 == 0 else real[i % 40] for i in range(600)])  # a blank class of a
    np.savez(tmp_path / "turns.npz", images=turns, labels=np.arange(600) % 3, classes=np.array(FASHION_MNIST_CLASSES))  # third,
    assert load_npz(str(tmp_path / "turns.npz"), pre)[0].shape == (600, 1, 28, 28)  # classes in turn: every 3rd had read it all
    colour = dataclasses.replace(pre, channels="rgb", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert foreign_pixels(list(np.zeros((4, 28, 28, 3), np.uint8)), colour) == []  # blank: not "grayscale images"


def test_int8_schemes_are_timed_in_turn_and_keep_their_lowest_round(monkeypatch):
    """One after the other, a busy spell while one candidate was timed chose a scheme 25% slower than the other (as
    profiled later): the candidates are timed in rounds, in turn, each keeping its lowest round's p50."""
    import types

    import dvt_runtime.profile
    from dvt_edge.export.int8 import TIMED_ROUNDS, _time_in_turn

    order, busy = [], iter([False, True] * 2 + [False] * 100)  # the second candidate's first two rounds ran on a busy CPU

    def fake_profile(bundle, **kw):
        order.append(bundle)
        ms = {"a": 1.0, "b": 0.8}[bundle] * (1.5 if next(busy) else 1.0)
        return types.SimpleNamespace(stages=[{"median": 9.0}, {"median": ms}])

    monkeypatch.setattr(dvt_runtime.profile, "profile_bundle", fake_profile)
    scored = [{"scheme": "static", "vb": "a"}, {"scheme": "dynamic", "vb": "b"}]
    _time_in_turn(scored, np.zeros((4, 1, 28, 28), np.float32), 1)
    assert order == ["a", "b"] * TIMED_ROUNDS and [s["p50_ms"] for s in scored] == [1.0, 0.8]


def test_default_thresholds_are_not_chosen_on_images_the_model_answers_at_chance(micro_ckpt):
    """Random-noise calibration images (labelled, and answered at chance) chose default thresholds 0.33, 0.86 for the
    CIFAR reference: its cascade 8 points under its last exit, unsaid. A last exit at chance on the verification images
    chooses none, and says why."""
    model, info = load_checkpoint(micro_ckpt)
    info.thresholds = None  # chosen on the images, not the checkpoint's own
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    logits = [rng.normal(size=(400, 10)).astype(np.float32) for _ in range(3)]
    for lg in logits:
        lg[np.arange(400), labels] += 3.0  # every exit mostly right: thresholds chosen
    t, why = _default_thresholds(model, info, logits, labels)
    assert t is not None and why.startswith("cheapest FLOPs point")
    t, why = _default_thresholds(model, info, logits, rng.permutation(labels))  # the same answers, other labels: at chance
    assert t is None and re.match(r"none \(the last exit scores \d+\.\d% on these 400 labelled images, at chance for 10 classes:", why), why
    # 70% of the labels one class, the others' in another order: 56% right, over twice chance, under the one class's share
    labels = np.where(rng.random(400) < 0.7, 0, rng.integers(1, 10, 400))
    logits = [rng.normal(size=(400, 10)).astype(np.float32) for _ in range(3)]
    wrong = np.where((labels == 0) & (rng.random(400) < 0.8), 0, labels % 9 + 1)  # class 0 mostly right, the others never
    for lg in logits:
        lg[np.arange(400), wrong] += 6.0
    t, why = _default_thresholds(model, info, logits, labels)
    assert t is None and re.match(r"none \(the last exit scores \d+\.\d% on these 400 labelled images, at chance for 10 classes "
                                  r"\(\d+\.\d% of them one class\)", why), why


def test_default_thresholds_are_not_chosen_on_images_of_one_class(micro_ckpt):
    """A verification set of one class (a user's folder of cats) chose thresholds for every class on how sure the exits
    are on cats. Labelled images holding few of the model's classes choose none, and say why; a set of half the classes
    still chooses."""
    model, info = load_checkpoint(micro_ckpt)
    info.thresholds = None
    rng = np.random.default_rng(0)
    for kept, chosen in ((1, False), (2, False), (5, True)):
        labels = rng.integers(0, kept, 400)
        logits = [rng.normal(size=(400, 10)).astype(np.float32) for _ in range(3)]
        for lg in logits:
            lg[np.arange(400), labels] += 3.0
        t, why = _default_thresholds(model, info, logits, labels)
        assert (t is not None) == chosen, (kept, why)
        if not chosen:
            assert why.startswith(f"none (the labelled images hold {kept} of the model's 10 classes: thresholds chosen on them") and \
                "calibrate" in why, why


def test_default_thresholds_that_spend_a_rare_class_say_so(micro_ckpt):
    """Thresholds chosen for the overall accuracy can trade a rare class's right answers for others': the threshold source
    (manifest and console) names the class and both counts on the verification images."""
    model, info = load_checkpoint(micro_ckpt)
    info.thresholds = None
    labels = np.array([0] * 70 + [2] * 22 + [1] * 8)  # 100 images, 8 of class 1
    right_last = np.ones(100, bool)
    right_last[:4] = False  # the last exit misses 4 of class 0 ...
    right_first = np.ones(100, bool)
    right_first[92:96] = False  # ... exit 1 misses 4 of class 1 instead: the same accuracy, far cheaper
    logits = []
    for right in (right_first, right_first, right_last):
        lg = np.zeros((100, 10), np.float32)
        lg[np.arange(100), np.where(right, labels, (labels + 3) % 10)] = 9.0  # confident, right or wrong
        logits.append(lg)
    t, why = _default_thresholds(model, info, logits, labels)
    name = info.classes[1]
    assert t is not None and t[0] is not None and f"on these images the chosen thresholds answer {name} 4 of 8 (the last exit alone 8) right" in why, why
