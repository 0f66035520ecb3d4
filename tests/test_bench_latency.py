"""python -m dvt_edge.bench --latency-only: a latency table from real exports with no data, and
the memory check that refuses a model before anything is allocated."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import dvt_edge.bench as bench
import dvt_edge.bench_latency as bl


@pytest.fixture(scope="module")
def latency(tmp_path_factory, micro_ckpt):
    # a trained checkpoint: int8 calibrates on its own data and must pass verification (random
    # weights give near-equal logits, whose top-1 a small int8 error flips)
    out = tmp_path_factory.mktemp("latency")
    rc = bench.main(["--latency-only", "--checkpoint", str(micro_ckpt), "--targets", "onnx", "--precisions", "fp32,int8",
                     "--runs", "9", "--rounds", "2", "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "bench.json").read_text())


def _finite_positive(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_latency_table_from_real_runs(latency):
    out, r = latency
    assert r["mode"] == "latency" and r["model"] == "dvt_micro_fmnist" and r["threads"] == 1
    assert (r["runs"], r["rounds"]) == (10, 2)  # 9 asked over 2 rounds: rounded up, never fewer (it recorded 8)
    assert r["command"].startswith("python -m dvt_edge.bench --latency-only --checkpoint ")  # rerunnable, not bench.py's path
    rows = {f"{row['target']} {row['precision']}": row for row in r["rows"]}
    assert set(rows) == {"eager fp32", "onnx fp32", "onnx int8"}, rows
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("error"))
        st = row["stages"]
        assert [s["exit"] for s in st] == [1, 2, 3]
        for s in st:
            for k in ("p50_ms", "p90_ms", "cum_p50_ms", "cum_p90_ms", "gmacs_per_s", "pct_of_peak", "stage_gmacs"):
                assert _finite_positive(s[k]), (name, k, s[k])
            assert s["p50_ms"] <= s["p90_ms"] and s["cum_p50_ms"] <= s["cum_p90_ms"]
            # the rate is the stage's MACs over its own p50
            assert s["gmacs_per_s"] == pytest.approx(s["stage_gmacs"] / (s["p50_ms"] / 1e3))
        assert st[0]["cum_p50_ms"] == pytest.approx(st[0]["p50_ms"])
        assert st[0]["cum_p50_ms"] < st[1]["cum_p50_ms"] < st[2]["cum_p50_ms"]  # each exit costs more to reach
    # int8 rows are compared with the int8 peak, fp32 rows with the fp32 one
    peak = r["roofline"]["peak"]
    assert _finite_positive(peak["fp32"]["gmacs_per_s"]) and _finite_positive(peak["int8"]["gmacs_per_s"])
    s = rows["onnx int8"]["stages"][0]
    assert s["pct_of_peak"] == pytest.approx(100 * s["gmacs_per_s"] / peak["int8"]["gmacs_per_s"])
    cmp = {c["what"]: c for c in r["comparisons"]}
    assert set(cmp) == {"onnx fp32 / onnx int8"}  # no ExecuTorch rows: no ExecuTorch ratios
    want = [a["cum_p50_ms"] / b["cum_p50_ms"] for a, b in zip(rows["onnx fp32"]["stages"], rows["onnx int8"]["stages"])]
    assert cmp["onnx fp32 / onnx int8"]["per_exit"] == pytest.approx(want)
    md = (out / "bench.md").read_text()
    assert "latency only, checkpoint weights" in md and "| onnx | int8 |" in md and "GEMM peak" in md
    assert (out / "bench_latency.png").stat().st_size > 1000
    assert r["memory"]["estimated_need_mb"] > r["memory"]["weights_mb"] > 0


def test_comparisons_fail_on_non_finite():
    st = lambda *v: [{"cum_p50_ms": x} for x in v]  # noqa: E731
    rows = [{"target": "onnx", "precision": "fp32", "status": "ok", "stages": st(3.0, 6.0)},
            {"target": "onnx", "precision": "int8", "status": "ok", "stages": st(1.0, float("nan"))}]
    (c,) = bl._comparisons(rows)
    assert c["met_per_exit"] == [True, False] and not c["met"]  # nan >= 1.5 is False, and must not pass


def test_latency_only_refuses_a_model_too_big_before_allocating(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bl, "available_memory_mb", lambda: 200.0)

    def allocated(*a, **k):
        raise AssertionError("allocated a model before the memory check")

    monkeypatch.setattr(bench, "random_checkpoint", allocated)
    monkeypatch.setattr(bl, "gemm_roofline", allocated)
    rc = bench.main(["--latency-only", "--model", "dvt_t2t_vit_12", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "dvt_t2t_vit_12 does not fit in memory here" in err and "200 MiB is available" in err, err
    assert not list((tmp_path).rglob("*.pt"))


def test_memory_estimate_counts_weights_without_allocating():
    w = bl._model_weight_bytes("dvt_t2t_vit_12")
    assert 60e6 < w < 120e6  # three T2T-ViT-12 stages of ~6.9 M parameters each, fp32
    facts = bl.check_memory(w, "dvt_t2t_vit_12")
    assert facts["estimated_need_mb"] == pytest.approx(bl.memory_need_mb(w))


def test_latency_only_argument_errors(capsys):
    assert bench.main(["--latency-only", "--model", "dvt_micro_fmnist", "--batches", "1,8"]) == 2
    assert "drop --batches" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exactly one of"):
        bl.run_latency("x.pt", "dvt_micro_fmnist", ["onnx"], ["fp32"], None)


def test_a_run_whose_every_row_failed_exits_1_and_its_advice_names_benchs_flags(tmp_path, capsys):
    """A checkpoint no images are known for, int8: the only row failed with "pass --calib-data SPEC ..., or --scheme
    dynamic" (export's flags: bench has --data and no --scheme), cut mid-word in bench.md, and the run exited 0."""
    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.models import create_model

    ck = save_checkpoint(tmp_path / "m.pt", create_model("dvt_micro_fmnist", img_size=56, splits=((12, 8, 0), (8, 5, 0), (4, 4, 0))))
    out = tmp_path / "o"
    assert bench.main(["--latency-only", "--checkpoint", str(ck), "--targets", "onnx", "--precisions", "int8", "--runs", "8",
                       "--rounds", "1", "--out", str(out)]) == 1
    assert "every target x precision asked for failed (onnx int8)" in capsys.readouterr().err
    md = (out / "bench.md").read_text()
    assert "- onnx int8: ExportError: int8 scheme(s) static need calibration images and none are known for this checkpoint: pass " \
           "--data SPEC (e.g. imagefolder:PATH or npz:PATH)" in md, md
    # one row failed beside one that worked: exit 1 too (a pipeline read 0 and missed the failure in the table)
    assert bench.main(["--latency-only", "--checkpoint", str(ck), "--targets", "onnx", "--precisions", "fp32,int8", "--runs", "8",
                       "--rounds", "1", "--out", str(tmp_path / "o2")]) == 1
    assert "error: 1 of 2 rows failed (onnx int8): see 'Failed rows' above; the others are in the report" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "bench.json").read_text())["rows"][0]["status"] == "ok"
    assert "--calib-data" not in md and "--scheme" not in md


def test_roofline_rows_are_real():
    r = bl.gemm_roofline(threads=1, reps=1, shapes=((64, 64, 64),))
    assert {row["engine"] for row in r["rows"]} >= {"torch.mm", "onnxruntime MatMulInteger (u8 x s8)"}
    for row in r["rows"]:
        assert "error" in row or _finite_positive(row["gmacs_per_s"]), row
    assert np.isfinite(r["peak"]["fp32"]["gmacs_per_s"])


@pytest.mark.slow
def test_latency_results_merge_into_a_report(latency, tmp_path, capsys):
    out, r = latency
    other = dict(r, device=dict(r["device"], device_name="second-device"))  # a second device's file
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert bench.main(["report", str(out / "bench.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("latency only") == 2 and "second-device" in md
    assert (tmp_path / "rep" / "report_latency.png").stat().st_size > 1000


def test_a_row_failing_while_timing_becomes_an_error_the_others_go_on():
    calls = {"bad": 0}

    def good(n):
        return [[1.0] * n, [2.0] * n]

    def bad(n):
        calls["bad"] += 1
        raise RuntimeError("backend crashed")

    got = bl._time_rounds({"good": good, "bad": bad}, rounds=3, runs=12, progress=False)
    assert got["good"] == [[1.0] * 12, [2.0] * 12]  # 3 rounds of 4 runs, stages aligned
    assert isinstance(got["bad"], str) and "backend crashed" in got["bad"] and calls["bad"] == 1  # not retried



def test_exit_status_counts_failed_rows_but_not_toolchains_missing_under_all(capsys):
    """--targets all (the default) on a host with only dvt-edge[onnx]: ExecuTorch and Core ML rows say their toolchain is
    missing and the run still succeeds; named targets, or nothing measured at all, are failures."""
    ok = {"target": "onnx", "precision": "fp32", "status": "ok"}
    gone = {"target": "executorch", "precision": "fp32", "status": "error", "error": "TargetUnavailable: target 'executorch' needs"}
    broken = {"target": "ort", "precision": "fp32", "status": "error", "error": "ManifestError: exit 2 fails its SHA-256 check"}
    assert bench.exit_status({"rows": [ok, gone]}, "all") == 0 and capsys.readouterr().err == ""
    assert bench.exit_status({"rows": [ok, gone]}, "onnx,executorch") == 1
    assert "1 of 2 rows failed (executorch fp32)" in capsys.readouterr().err
    assert bench.exit_status({"rows": [ok, gone, broken]}, "all") == 1
    assert "1 of 3 rows failed (ort fp32)" in capsys.readouterr().err
    assert bench.exit_status({"rows": [gone]}, "all") == 1  # nothing measured
    assert "every target x precision asked for failed (executorch fp32)" in capsys.readouterr().err
