"""``dvt-runtime info``: what a bundle is and how far its export checked it, from its files alone (torch-free)."""

from __future__ import annotations

import json
import re
import shutil

from dvt_runtime.cli import main as runtime_main
from dvt_runtime.info import bundle_info
from dvt_runtime.manifest import Manifest
from tests.test_runtime_torch_free import run_without_torch


def test_info_says_each_exits_record_and_every_calibration(onnx_bundle, tmp_path, capsys):
    """Each exit's size and accuracy as the manifest records them, the verification's verdict, the default thresholds'
    source, and each calibration file with whether this bundle can use it (a damaged one: why not)."""
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    (b / "calibration").mkdir(exist_ok=True)
    (b / "calibration" / "broken.json").write_text("{not json")
    m = Manifest.load(b)
    assert runtime_main(["info", "--bundle", str(b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema"] == "dvt-bundle-info" and (d["model"], d["target"], d["precision"]) == (m.model, m.target, m.precision)
    assert [e["top1_artifact"] for e in d["exits"]] == [r.top1_artifact for r in m.parity.exits]
    assert [e["size_kb"] for e in d["exits"]] == [round(e.size_bytes / 1024, 1) for e in m.exits]
    assert d["verification"]["passed"] is m.parity.passed and d["thresholds_source"] == m.thresholds_source
    (cal,) = d["calibrations"]
    assert cal["file"] == "broken.json" and not cal["usable"] and "not valid JSON" in cal["problem"]
    assert runtime_main(["info", "--bundle", str(b)]) == 0
    out = capsys.readouterr().out
    row = m.parity.exits[0]
    assert f"{m.model} onnx/fp32 (onnxruntime)" in out and f"{row.top1_artifact:.2f}" in out
    assert "verification (numerical, " in out and "calibration broken.json: not usable by this bundle: " in out
    assert "artifacts: SHA-256 match the manifest" in out
    from dvt_runtime.checks import parse_thresholds

    assert m.thresholds is not None  # the fixture's export chose some: rounded for reading, exactly as --thresholds takes them
    exact = re.search(r"\[as --thresholds: ([^\]]*)\]", out).group(1)
    assert parse_thresholds(exact) == [None if t is None else float(t) for t in m.thresholds[:-1]]


def test_info_refuses_a_changed_artifact_and_runs_without_torch(onnx_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    r = run_without_torch(f"""
        from dvt_runtime.info import bundle_info
        d = bundle_info({str(b)!r})
        assert "torch" not in sys.modules and "onnxruntime" not in sys.modules  # no backend loaded either
        print("ok", d["model"])
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    art = b / Manifest.load(b).exits[1].artifact
    art.write_bytes(art.read_bytes()[:-1] + b"\0")
    assert runtime_main(["info", "--bundle", str(b)]) == 2
    assert "error: " in capsys.readouterr().err
    assert bundle_info(str(onnx_bundle))["checksums"] == "match"
