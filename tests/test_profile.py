"""dvt_runtime.profile: measuring a real bundle, statistics, drift, JSON, importers (CSV/JSON/ETDump), CLI, no torch."""

from __future__ import annotations

import copy
import itertools
import json
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from dvt_runtime.backends import BackendUnavailable
from dvt_runtime.bundle import Bundle, InputError
from dvt_runtime.manifest import Manifest
from dvt_runtime.profile import (
    DRIFT_THRESHOLD,
    MAX_PLAUSIBLE_GMACS,
    SCHEMA,
    SCHEMA_VERSION,
    LatencyProfile,
    ProfileError,
    device_facts,
    import_csv,
    import_etdump,
    import_json,
    main,
    profile_bundle,
)
from dvt_runtime.search import StageCosts
from dvt_runtime.stats import check_samples, sample_stats
from tests.test_runtime_torch_free import run_without_torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = 40

bundle_group = pytest.mark.xdist_group("profile-bundle")  # one export per run, not one per worker
etdump_group = pytest.mark.xdist_group("profile-etdump")


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from dvt_edge import create_model, save_checkpoint
    from dvt_edge.data import load_dataset
    from dvt_edge.export import export_bundle

    tmp = tmp_path_factory.mktemp("profile")
    ds = load_dataset("fashion-mnist", "val")
    save_checkpoint(tmp / "m.pt", create_model("dvt_micro_fmnist"), classes=ds.classes, preprocess=ds.preprocess, data="fashion-mnist")
    res = export_bundle(str(tmp / "m.pt"), "onnx", "fp32", out=str(tmp / "bundle"), verify_n=20, progress=False)
    return Path(res.path)


@pytest.fixture(scope="module")
def measured(bundle_dir) -> tuple[Bundle, LatencyProfile]:
    bundle = Bundle.open(bundle_dir, threads=1)
    return bundle, profile_bundle(bundle, warmup=3, runs=RUNS, threads=1, progress=False)


@pytest.fixture(scope="module")
def val_images() -> tuple[np.ndarray, np.ndarray]:
    from dvt_edge.data import load_dataset

    ds = load_dataset("fashion-mnist", "val")
    raw = np.asarray(ds.images[:6])
    return ds.preprocess.apply_batch(raw), raw


# exactly representable values, so cumulative sums and their differences are exact
STAGES = [[0.5, 0.75, 0.625, 0.5, 1.25, 0.5, 0.5, 0.875],
          [1.0, 1.5, 1.25, 1.0, 1.0, 2.0, 1.125, 1.0],
          [2.0, 2.25, 2.5, 2.0, 3.0, 2.0, 2.0, 2.125]]


def same_stats(a: LatencyProfile, b: LatencyProfile) -> None:
    assert a.stages == b.stages
    assert a.cumulative == b.cumulative
    assert a.drift == b.drift
    assert a.throttling_suspected == b.throttling_suspected


# --------------------------------------------------------------------------------------
# a real bundle
# --------------------------------------------------------------------------------------


def test_sample_stats_known_values():
    """Hand-computed: 1..100 ms (a percentile is the smallest sample with that share of samples at or below it: 90 of
    the 100 are <= 90 ms; numpy's default interpolation said 90.1)."""
    from dvt_runtime.stats import sample_stats

    s = sample_stats(np.arange(100, 0, -1, dtype=float))  # order must not matter
    assert (s["n"], s["mean"], s["median"], s["p50"], s["min"], s["max"]) == (100, 50.5, 50.5, 50.0, 1.0, 100.0)
    assert s["p90"] == 90.0 and s["p99"] == 99.0  # p50: 50 of the 100 are <= 50 ms (the median, 50.5, interpolates)
    from dvt_runtime.stats import percentile

    x = [0.5] * 999 + [5.8]  # p99.9 of 1,000: the 999th (as a float, 99.9 had counted a rank past it: the slowest)
    assert percentile(x, 99.9) == percentile(x, "99.9") == 0.5 and percentile(x, 99.91) == 5.8 and percentile(x, 0) == 0.5
    assert s["std"] == pytest.approx(28.86607, rel=1e-6)  # population std of 1..100
    assert sorted(s["samples"]) == list(map(float, range(1, 101)))
    with pytest.raises(ProfileError, match="finite"):
        sample_stats([1.0, float("nan")])
    with pytest.raises(ProfileError, match="no latency samples"):
        sample_stats([])


@bundle_group
def test_measured_stats_match_raw_samples(measured):
    bundle, prof = measured
    assert prof.source == "measured" and prof.num_exits == bundle.num_exits == 3
    raw = prof.stage_samples()
    for s, a in zip(prof.stages, raw):
        assert s["n"] == a.size == RUNS and np.all(a > 0)
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"] and s["p50"] == np.sort(a)[RUNS // 2 - 1]
    cum = np.cumsum(np.stack(raw), axis=0)  # cumulative = per-iteration sums of the stages, not sums of statistics
    for e, c in enumerate(prof.cumulative):
        got = np.asarray(c["samples"])
        np.testing.assert_allclose(got, cum[e], rtol=1e-12)
        assert c["p90"] == sample_stats(cum[e])["p90"]  # statistics of the sums, not sums of statistics
        if e:
            assert np.all(got >= np.asarray(prof.cumulative[e - 1]["samples"]))  # per iteration
    q = RUNS // 4
    for d, a in zip(prof.drift, raw):
        assert d["first_quarter_median"] == pytest.approx(np.median(a[:q]))
        assert d["last_quarter_median"] == pytest.approx(np.median(a[-q:]))
        assert d["ratio"] == pytest.approx(d["last_quarter_median"] / d["first_quarter_median"])
    assert prof.throttling_suspected == any(d["ratio"] > DRIFT_THRESHOLD for d in prof.drift)
    assert prof.load_ms == bundle.load_ms
    assert len(prof.first_inference_ms) == 3 and all(v > 0 for v in prof.first_inference_ms)
    assert prof.preprocess_ms["n"] == RUNS and prof.preprocess_ms["p50"] > 0
    # timed on a camera's frame (a network-sized image skips most of the resize), and the frame is recorded and shown
    assert prof.settings["preprocess_frames"] == "1 uint8 image(s) of 480x640x3 (random camera-sized frame)", prof.settings
    assert "(1 uint8 image(s) of 480x640x3" in prof.format_table()
    assert prof.peak_rss_mb > 10
    assert prof.bundle["model"] == "dvt_micro_fmnist" and prof.bundle["backend"] == "onnxruntime"
    assert prof.bundle["target"] == "onnx" and prof.bundle["precision"] == "fp32"
    assert prof.device["backend"] == "onnxruntime" and prof.device["backend_version"]
    assert prof.threads == prof.device["threads"] == 1
    assert prof.settings["runs"] == RUNS and prof.settings["warmup"] == 3
    assert set(prof.settings["contention"]) == {"wait_pct", "steal_pct"}  # measured over the timed runs (None off Linux)


@bundle_group
def test_measured_json_round_trip(measured, tmp_path):
    _, prof = measured
    path = prof.save(tmp_path / "sub" / "p.json")
    d = json.loads(path.read_text())
    assert SCHEMA == "dvt-profile/4" and SCHEMA_VERSION == 4
    # raw samples whose p90 / p99 are stats.percentile's: an older reader would recompute interpolated ones and call the
    # file edited; version 4 tells it to upgrade
    assert d["schema"] == "dvt-profile/4" and d["schema_version"] == 4
    back = LatencyProfile.load(path)
    assert back == prof
    assert back.to_dict() == prof.to_dict()
    assert LatencyProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof
    # predict's overhead, which a version-2 dvt-runtime would not read (it priced it at 0: 32% over a 0.55 ms budget on a board's profile): version 3,
    # refused there with "upgrade"
    with_overhead = LatencyProfile.from_dict({**prof.to_dict(), "settings": {**prof.settings, "predict_overhead_ms": [0.01] * 3}})
    d = json.loads(with_overhead.save(tmp_path / "o.json").read_text())
    assert d["schema"] == "dvt-profile/4" and d["schema_version"] == 4
    assert LatencyProfile.load(tmp_path / "o.json") == with_overhead
    # no raw samples (a summary, as a calibration embeds it): as low a version as describes it
    assert with_overhead.summary()["schema_version"] == LatencyProfile.from_dict(with_overhead.summary()).to_dict()["schema_version"] == 3
    assert prof.summary()["schema"] == "dvt-profile/2" and LatencyProfile.from_dict(prof.summary()).to_dict()["schema_version"] == 2


@bundle_group
def test_measured_stage_costs_p90_summary_table(measured):
    bundle, prof = measured
    costs = prof.stage_costs()
    assert isinstance(costs, StageCosts) and costs.unit == "ms" and costs.n_stages == 3
    np.testing.assert_allclose(costs.mean, [s["mean"] for s in prof.stages], rtol=1e-12)
    for got, s in zip(costs.samples, prof.stages):
        np.testing.assert_array_equal(got, s["samples"])
    assert prof.stage_p90() == [s["p90"] for s in prof.stages]
    bundle.use_profile(prof.stage_p90())  # deadline mode accepts it
    bundle.stage_p90_ms = None
    bundle.use_profile(prof)  # and the profile itself (it was refused, the error dumping every sample)
    assert bundle.stage_p90_ms == prof.stage_p90()
    with pytest.raises(ValueError) as e:
        bundle.use_profile(prof.to_dict())
    assert "need one p90 per stage (3) or a LatencyProfile, got dict" in str(e.value) and len(str(e.value)) < 200
    d = prof.to_dict()  # deadline mode runs one image per call: a batch profile's per-image p90s, or another bundle's, refused
    with pytest.raises(ValueError, match="measured at batch 8: deadline mode runs one image per call"):
        bundle.use_profile(LatencyProfile.from_dict({**d, "batch": 8}))
    with pytest.raises(ValueError, match="measured on another bundle .*precision 'int8'"):
        bundle.use_profile(LatencyProfile.from_dict({**d, "bundle": {**d["bundle"], "precision": "int8"}}))

    summary = prof.summary()
    text = json.dumps(summary)
    assert "samples" not in text
    assert [s["p90"] for s in summary["stages"]] == prof.stage_p90()
    assert summary["cumulative"][2]["p99"] == prof.cumulative[2]["p99"]
    assert "samples" in prof.stages[0]  # summary() does not modify the profile
    summarised = LatencyProfile.from_dict(summary)
    assert summarised.stage_p90() == prof.stage_p90()
    with pytest.raises(ProfileError, match="summary"):
        summarised.stage_costs()

    table = prof.format_table()
    for word in ("exit 1", "exit 2", "exit 3", "p50", "p90", "p99", "mean", "load", "first", "cumulative", "preprocess", "peak RSS"):
        assert word in table
    assert f"{prof.stages[1]['p90']:.3f}" in table
    assert f"{prof.cumulative[2]['p50']:.3f}" in table


@bundle_group
def test_measured_stopping_streams(measured):
    _, prof = measured
    assert prof.stopping is not None and [s["exit"] for s in prof.stopping] == [1, 2, 3]
    assert all(s["n"] == RUNS for s in prof.stopping)
    assert prof.stopping[-1]["samples"] == prof.cumulative[-1]["samples"]  # the last exit's stream: the chains
    # a stream stopping at exit e runs stages 1..e only: cheaper than reaching the next exit (medians: a stall moves a mean)
    assert prof.stopping[0]["median"] < prof.cumulative[1]["median"] and prof.stopping[1]["median"] < prof.cumulative[2]["median"]
    costs = prof.stage_costs()
    for got, s in zip(costs.stopping, prof.stopping):
        np.testing.assert_array_equal(got, s["samples"])
    np.testing.assert_allclose(costs.cumulative, np.maximum.accumulate([s["mean"] for s in prof.stopping]), rtol=1e-12)
    assert "samples" not in json.dumps(prof.summary()["stopping"])
    with pytest.raises(ProfileError, match="summary"):
        LatencyProfile.from_dict(prof.summary()).stage_costs()
    assert "every image stopping at the exit" in prof.format_table()


def test_schedule_interleaves_chains_and_streams():
    """Prices are compared with each other, so they are timed in rotating blocks, not one after
    another: a device that slows for a minute shifts all of them alike."""
    from dvt_runtime.profile import BLOCK, SETTLE, _schedule

    xs = [np.zeros((1, 1)), np.ones((1, 1))]
    plan = _schedule(3, 2, 45, True, xs)
    timed = [d for d, t, _ in plan if t]
    assert [timed.count(d) for d in (1, 2, 3)] == [45, 45, 45]
    assert [d for d, t, _ in plan[:6]] == [3, 3, 1, 1, 2, 2] and not any(t for _, t, _ in plan[:6])  # warm-up per depth
    blocks = [[d, t] for d, t, _ in plan[6:]]
    starts = [i for i in range(len(blocks)) if blocks[i][1] and not blocks[i - 1][1]]  # where each block's timed runs begin
    assert [blocks[i][0] for i in starts[:6]] == [3, 1, 2, 1, 2, 3]  # the order rotates from block to block
    for i in starts:  # each block opens with SETTLE untimed runs of its own depth
        assert blocks[i - SETTLE : i] == [[blocks[i][0], False]] * SETTLE
    assert max(len(list(g)) for _, g in itertools.groupby(timed)) <= BLOCK
    assert {d for d, _, _ in _schedule(3, 2, 25, False, xs)} == {3}
    assert [x[0, 0] for _, _, x in plan[:4]] == [0, 1, 0, 1]  # the inputs cycle


class _OneEntryCache:
    """Sessions sharing a one-entry 'cache': a call to another session than the previous call's
    pays ``miss_ms`` (weights evicted), as on a CPU whose cache holds one stage's weights."""

    def __init__(self, inner, key: int, miss_ms: float, state: dict):
        self.inner, self.key, self.miss, self.state = inner, key, miss_ms / 1e3, state
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, inputs):
        t0 = time.perf_counter()
        out = self.inner.run(inputs)
        if self.state.get("last") != self.key:
            while time.perf_counter() - t0 < self.miss:
                pass
        self.state["last"] = self.key
        return out


@bundle_group
def test_stopping_streams_price_the_cache_a_cascade_meets(bundle_dir):
    """A chain through every exit runs stage 1 after the last stage (a miss); a cascade whose
    images leave at exit 1 runs it after stage 1 (a hit). The profile's exit-1 price must be the
    cascade's, or a latency budget is under-spent."""
    bundle = Bundle.open(bundle_dir, threads=1)
    state: dict = {}
    bundle.sessions = [_OneEntryCache(s, k, 4.0, state) for k, s in enumerate(bundle.sessions)]
    prof = profile_bundle(bundle, warmup=2, runs=12, progress=False)
    chains_only = StageCosts.from_samples(prof.stage_samples()).cumulative  # what the profile priced before
    costs = prof.stage_costs()
    x = np.random.default_rng(0).standard_normal((20, *bundle.input_shape)).astype(np.float32)
    ms = []
    for xi in x:  # every image answered by exit 1
        t0 = time.perf_counter()
        assert bundle.predict(xi, thresholds=[0.0, 0.0]).exit == 0
        ms.append((time.perf_counter() - t0) * 1e3)
    measured = float(np.median(ms[2:]))  # medians: one stall of a shared VM moves a mean of 12 runs by ms
    chain_stage1, stream1 = (float(np.median(a)) for a in (prof.stage_samples()[0], costs.stopping[0]))
    assert chain_stage1 - measured > 3.0, (chain_stage1, measured)
    assert abs(stream1 - measured) < 1.5, (stream1, measured)
    assert costs.cumulative[0] < chains_only[0] - 2.0, (costs.cumulative, chains_only)
    assert costs.cumulative[-1] == pytest.approx(chains_only[-1], rel=1e-12)  # the full chain: both agree
    assert prof.stopping[1]["mean"] > 2 * 4.0  # a stream stopping at exit 2 misses twice per image


def test_version_1_profile_loads_without_streams(tmp_path):
    d = LatencyProfile.from_samples(STAGES).to_dict()
    d.pop("stopping")
    d["schema"], d["schema_version"] = "dvt-profile/1", 1
    (tmp_path / "v1.json").write_text(json.dumps(d))
    prof = LatencyProfile.load(tmp_path / "v1.json")
    assert prof.stopping is None and prof.schema_version == SCHEMA_VERSION
    costs = prof.stage_costs()
    assert costs.stopping is None
    np.testing.assert_allclose(costs.cumulative, np.cumsum([np.mean(s) for s in STAGES]))
    with pytest.raises(ProfileError, match="one sequence of samples per exit"):
        LatencyProfile.from_samples(STAGES, stopping_samples=STAGES[:2])


@bundle_group
def test_profile_on_real_images(bundle_dir, val_images):
    x, raw = val_images
    bundle = Bundle.open(bundle_dir)
    prof = profile_bundle(bundle, warmup=1, runs=8, images=x, images_raw=list(raw), progress=False, device_name="bench")
    assert prof.settings["inputs"] == "6 images" and prof.stages[0]["n"] == 8
    assert prof.device["device_name"] == "bench" and prof.preprocess_ms["n"] == 8
    with pytest.raises(ValueError, match="at least 4"):
        profile_bundle(bundle, runs=3, progress=False)
    with pytest.raises(ValueError, match="warmup"):
        profile_bundle(bundle, warmup=-1, runs=8, progress=False)
    with pytest.raises(InputError):
        profile_bundle(bundle, runs=8, images=np.zeros((2, 3, 28, 28), np.float32), progress=False)


@bundle_group
def test_cli_measure(bundle_dir, val_images, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--bundle", str(bundle_dir), "--runs", "8", "--warmup", "1", "--device-name", "lab-pc",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "exit 3" in printed and "wrote" in printed
    prof = LatencyProfile.load(out)
    assert prof.device["device_name"] == "lab-pc" and prof.stages[0]["n"] == 8 and prof.threads == 1
    # --providers (a Jetson's CUDA): profile ran on the CPU whatever predict would run on
    assert main(["--bundle", str(bundle_dir), "--runs", "4", "--warmup", "0", "--providers", "AzureExecutionProvider, CPUExecutionProvider",
                 "--out", str(out), "--no-progress"]) == 0
    assert LatencyProfile.load(out).device["providers"] == ["AzureExecutionProvider", "CPUExecutionProvider"]
    # a deployment at the backend's default threads (predict --threads 0) could not be profiled at its own setting
    assert main(["--bundle", str(bundle_dir), "--runs", "4", "--warmup", "0", "--threads", "0", "--out", str(out), "--no-progress"]) == 0
    assert LatencyProfile.load(out).threads is None  # the backend default, as a bundle opened at 0 runs
    assert "note: 4 timed run(s) for a stage: its percentiles (p90, p99) are rough below 20" in capsys.readouterr().err  # import said it only
    with pytest.raises(SystemExit):
        main(["--bundle", str(bundle_dir), "--threads", "-1"])
    assert "--threads must be >= 1, or 0 for the backend's default, got -1" in capsys.readouterr().err
    # a name no calibration can carry: '' fell back to this host's name unsaid, 'laptop-batch8' was then refused by calibrate
    for name, said in (("", "names no device"), ("laptop-batch8", "ends like a throughput calibration's file (-batch8): name the "
                                                                 "device ('laptop'); give the batch size as --batch 8")):
        with pytest.raises(SystemExit):
            main(["--bundle", str(bundle_dir), "--device-name", name])
        assert said in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["import", "--json", str(tmp_path / "x.json"), "--device-name", name, "--out", str(tmp_path / "y.json")])
        assert said in capsys.readouterr().err

    x, raw = val_images
    for name, images in (("f.npz", x), ("u.npz", raw)):  # preprocessed float32 and raw uint8 images
        np.savez(tmp_path / name, images=images)
        assert main(["--bundle", str(bundle_dir), "--runs", "4", "--warmup", "0", "--data", str(tmp_path / name),
                     "--out", str(out), "--no-progress"]) == 0
        assert LatencyProfile.load(out).settings["inputs"] == "6 images"
    np.savez(tmp_path / "bad.npz", labels=np.zeros(3))
    assert main(["--bundle", str(bundle_dir), "--runs", "4", "--data", str(tmp_path / "bad.npz"), "--no-progress"]) == 2
    assert "no 'images'" in capsys.readouterr().err


def test_cli_bad_input(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "nope"), "--runs", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "manifest.json" in err
    with pytest.raises(SystemExit) as ex:
        main(["--bundle", str(tmp_path), "--runs", "3"])
    assert ex.value.code == 2 and "--runs must be at least 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        main(["import", "--out", str(tmp_path / "p.json")])  # no source
    assert ex.value.code == 2
    assert main(["import", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "p.json")]) == 2
    assert "not found" in capsys.readouterr().err
    # a real process: message, exit code 2, no traceback
    r = subprocess.run([sys.executable, "-m", "dvt_runtime.profile", "--bundle", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT / "runtime"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------
# synthetic samples: drift, validation, schema
# --------------------------------------------------------------------------------------


def test_drift_flags_slowed_second_half():
    rng = np.random.default_rng(0)
    steady = [1.0 + 0.01 * rng.standard_normal(200) for _ in range(3)]
    prof = LatencyProfile.from_samples([np.abs(s) for s in steady], device={"device_name": "x"})
    assert not prof.throttling_suspected
    assert all(abs(d["ratio"] - 1) < 0.05 for d in prof.drift)

    slowed = [np.abs(s) for s in steady]
    slowed[1] = slowed[1].copy()
    slowed[1][100:] *= 1.5  # the second half of stage 2 runs 50% slower
    prof = LatencyProfile.from_samples(slowed, device={"device_name": "x"})
    assert prof.throttling_suspected
    assert prof.drift[1]["ratio"] == pytest.approx(1.5, rel=0.05)
    assert prof.drift[0]["ratio"] < DRIFT_THRESHOLD
    assert "WARNING" in prof.format_table()

    few = LatencyProfile.from_samples([[1.0, 2.0, 3.0]])  # under 4 samples: no quarters
    assert few.drift[0]["ratio"] is None and not few.throttling_suspected
    one_slow = LatencyProfile.from_samples([[0.40, 0.41, 0.40, 0.47]])  # quarters of one run: one slow last run had warned
    assert one_slow.drift[0]["ratio"] is None and not one_slow.throttling_suspected and "WARNING" not in one_slow.format_table()
    assert LatencyProfile.from_samples([[0.40] * 9 + [0.47] * 3]).throttling_suspected  # 12 runs: a slow last quarter is judged
    # a busy core or heat? the profile records how much its timed runs competed for a CPU (an on-call engineer could not tell)
    busy = {"contention": {"wait_pct": 31.5, "steal_pct": 0.0}}
    table = LatencyProfile.from_samples(slowed, settings=busy).format_table()
    assert "and the CPU was busy (its threads waited for a CPU 31.5% of their runnable time" in table and "not heat" in table
    assert "WARNING: the CPU was busy during the run" in LatencyProfile.from_samples(steady, settings=busy).format_table()
    assert "busy" not in LatencyProfile.from_samples(steady, settings={"contention": {"wait_pct": 0.4, "steal_pct": None}}).format_table()


def test_from_samples_validation_and_unequal_counts():
    for bad in ([], [[]], [[1.0, -1.0]], [[1.0, float("nan")]], [[1.0, float("inf")]], [1.0, 2.0], [["fast"]], [[[1.0]]]):
        with pytest.raises(ProfileError):
            LatencyProfile.from_samples(bad)
    with pytest.raises(ProfileError, match="source"):
        LatencyProfile.from_samples([[1.0]], source="guess")
    with pytest.raises(ProfileError, match="load_ms"):
        LatencyProfile.from_samples([[1.0], [2.0]], load_ms=[1.0])
    prof = LatencyProfile.from_samples([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0]])
    assert [s["n"] for s in prof.stages] == [5, 3] and [c["n"] for c in prof.cumulative] == [3, 3]
    assert prof.cumulative[1]["samples"] == [2.0, 3.0, 4.0]
    assert any("different sample counts" in n for n in prof.notes)
    # an early-exit trace (fewer runs at each later exit): the table said the first exit's count as every stage's
    table = prof.format_table()
    assert "5 / 3 runs" in table and "cumulative to exit (ms), the first 3 runs of each exit" in table, table
    assert "2 runs" in LatencyProfile.from_samples([[1.0, 2.0], [1.0, 1.0]]).format_table()


@pytest.mark.parametrize("key,value,match", [
    ("device", "pixel-8", "'device' must be an object"),
    ("bundle", ["onnx"], "'bundle' must be an object"),
    ("load_ms", ["slow", 1.0], "'load_ms'"),
    ("load_ms", [1.0], "'load_ms'"),
    ("first_inference_ms", [float("nan"), 1.0], "'first_inference_ms'"),
    ("peak_rss_mb", -3, "'peak_rss_mb'"),
    ("preprocess_ms", {"p50": "fast"}, "'preprocess_ms'"),
    ("threads", 0, "'threads'"),
    ("notes", "checked", "'notes'"),
    ("throttling_suspected", "no", "'throttling_suspected'"),
    ("drift", [{"ratio": "1.0"}, {"ratio": None}], "'drift'"),
    ("device", {"device_name": "d", "temperatures": [{"celsius": float("nan")}]}, r"'device\.temperatures\[0\]\.celsius' is not a finite"),
    ("settings", {"runs": float("inf")}, r"'settings\.runs' is not a finite"),
])
def test_profile_informational_fields_typed(tmp_path, key, value, match):
    """Fields the search does not price still fail on load when malformed, not later in format_table."""
    prof = LatencyProfile.from_samples([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]], load_ms=[5.0, None], threads=2,
                                       device={"device_name": "d"})
    prof.format_table()
    d = json.loads(json.dumps(prof.to_dict()))
    assert LatencyProfile.from_dict(d) == prof
    p = tmp_path / "p.json"
    p.write_text(json.dumps({**d, key: value}))
    with pytest.raises(ProfileError, match=match):
        LatencyProfile.load(p)
    with pytest.raises(ProfileError, match=match):
        import_json(p)


def test_profile_samples_schema_and_source_checked_on_load(tmp_path):
    """Raw samples are priced by the search: a malformed one fails when the file is read (naming it), not after
    calibrate has run every exit; a schema string, version or source that cannot be right is refused too."""
    d = json.loads(json.dumps(LatencyProfile.from_samples([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]]).to_dict()))
    for key, i, samples, match in (("stages", 1, [0.1, "0.2", None], "stages' entry 2 samples: .*not text"),
                                   ("stages", 0, {"oops": 1}, "stages' entry 1 samples: expected a sequence"),
                                   ("cumulative", 0, [1.0, float("nan")], "cumulative' entry 1 samples: .*finite")):
        bad = json.loads(json.dumps(d))
        bad[key][i]["samples"] = samples
        with pytest.raises(ProfileError, match=match):
            LatencyProfile.from_dict(bad)
    for key, i, stat, match in (("stages", 1, "p90", "stages' entry 2: its p90 is 99.0 but its own samples give 5.0"),
                                ("cumulative", 0, "mean", "cumulative' entry 1: its mean is 99.0 but its own samples give 2.5")):
        bad = json.loads(json.dumps(d))
        bad[key][i][stat] = 99.0  # a hand-edited summary: deadline mode would price it, the search the samples
        with pytest.raises(ProfileError, match=match):
            LatencyProfile.from_dict(bad)
        del bad[key][i]["samples"]  # a summary-only row has nothing to disagree with
        for row in bad["stages"] + bad["cumulative"]:
            row.pop("samples", None)
        if stat == "p90":  # ... but its quantiles must still be in order (a p90 above its p99, or below its p50, loaded)
            with pytest.raises(ProfileError, match=r"'stages' entry 2: p50 3.0, p90 99.0, p99 5.0 are not in order"):
                LatencyProfile.from_dict(bad)
        else:
            assert LatencyProfile.from_dict(bad).to_dict()[key][i][stat] == 99.0
    older = json.loads(json.dumps(d))  # written before percentiles were the budget's (numpy's interpolation: 4.7)
    older["stages"][1]["p90"], older["stages"][1]["p99"] = 4.7, 4.97
    older["schema"], older["schema_version"] = "dvt-profile/3", 3
    prof = LatencyProfile.from_dict(older)
    assert (prof.stages[1]["p90"], prof.stages[1]["p99"]) == (5.0, 5.0) and older["stages"][1]["p90"] == 4.7  # read as today's
    with pytest.raises(ProfileError, match="its p90 is 4.7 but its own samples give 5.0"):  # a version-4 file holds ours only
        LatencyProfile.from_dict({**older, "schema": "dvt-profile/4", "schema_version": 4})
    swapped = json.loads(json.dumps(d))  # stages reordered by hand: calibrate priced exit 2's times as exit 1's
    swapped["stages"].reverse()
    with pytest.raises(ProfileError, match=r"'stages' entry 1 says exit 2: entries are listed in exit order, 1 to 2"):
        LatencyProfile.from_dict(swapped)
    zero = json.loads(json.dumps(LatencyProfile.from_samples([[1.0, 2.0], [2.0, 3.0]]).to_dict(), allow_nan=False))
    for row in zero["stages"] + zero["cumulative"]:
        row.pop("samples")
    zero["stages"][1].update(mean=0.0, p90=0.0)  # loaded, then calibrate refused it after profiling and searching
    with pytest.raises(ProfileError, match=r"'stages' entry 2: its mean is 0.0 ms"):
        LatencyProfile.from_dict(zero)
    for change, match in (({"schema_version": -7}, "schema_version >= 1"), ({"schema": "dvt-profile/banana"}, "does not match"),
                          ({"source": "bogus"}, "source 'bogus' is not one of")):
        with pytest.raises(ProfileError, match=match):
            LatencyProfile.from_dict({**d, **change})


def test_from_samples_never_writes_what_load_refuses(tmp_path):
    for kw, match in ((dict(threads=0), "'threads'"), (dict(threads=True), "'threads'"), (dict(peak_rss_mb=float("nan")), "peak_rss_mb"),
                      (dict(load_ms=[float("inf")]), "load_ms"), (dict(device={"gpu": {"mhz": float("nan")}}), r"'device\.gpu\.mhz'"),
                      (dict(stopping_samples=[[0.0, 0.0]]), r"'stopping' entry 1: its mean is 0.0 ms, and no stage runs in no time")):
        with pytest.raises(ProfileError, match=match):
            LatencyProfile.from_samples([[1.0, 2.0]], **kw)
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"stages_ms": [[1.0, 2.0]], "threads": 0}))
    with pytest.raises(ProfileError, match="'threads'"):  # refused at import, not after it was written
        import_json(p)
    # check_samples: a scalar, a generator, text
    with pytest.raises(ProfileError, match="expected a sequence"):
        LatencyProfile.from_samples([[1.0]], preprocess_samples=3.0)
    np.testing.assert_array_equal(check_samples((v for v in (1.0, 2.0)), "g"), [1.0, 2.0])  # read once, not used up
    with pytest.raises(ProfileError, match="not text"):
        LatencyProfile.from_samples([["1", "2"]])
    with pytest.raises(ProfileError, match="numbers"):
        LatencyProfile.from_samples([np.array(["1", "2"])])


def test_newer_schema_refused(tmp_path):
    d = LatencyProfile.from_samples(STAGES).to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ProfileError, match=r"schema_version 5 is newer than this dvt-runtime \S+ understands \(4\).*upgrade"):
        LatencyProfile.from_dict(d)
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="newer"):
        LatencyProfile.load(tmp_path / "p.json")
    with pytest.raises(ProfileError, match="newer"):
        import_json(tmp_path / "p.json")
    for not_profile in ({"stages": []}, {"schema": "other/1", "schema_version": 1}, [], {"schema": SCHEMA, "schema_version": "1"}):
        with pytest.raises(ProfileError, match="not a dvt latency profile|JSON object"):
            LatencyProfile.from_dict(not_profile)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ProfileError, match="not valid JSON"):
        LatencyProfile.load(tmp_path / "bad.json")


def test_device_facts_never_raise(monkeypatch):
    facts = device_facts(threads=2, backend="onnxruntime")
    assert facts["threads"] == 2 and facts["backend"] == "onnxruntime" and facts["logical_cores"] >= 1
    assert facts["device_name"] and facts["os"] and facts["python"]
    for key in ("cpu_model", "affinity_cores", "cpu_governor", "temperatures", "jetson_power_mode", "nv_tegra_release"):
        assert key in facts
    import dvt_runtime.device as P

    def boom(*a, **k):
        raise OSError("unreadable")

    monkeypatch.setattr(P.os, "cpu_count", boom)
    monkeypatch.setattr(P.platform, "platform", boom)
    monkeypatch.setattr(P, "_temperatures", boom)
    monkeypatch.setattr(P.shutil, "which", lambda name: "/bin/false")  # a failing "nvpmodel"
    facts = device_facts(backend="no-such-backend")
    assert facts["logical_cores"] is None and facts["os"] is None and facts["temperatures"] is None
    assert facts["backend_version"] is None and facts["jetson_power_mode"] is None


# --------------------------------------------------------------------------------------
# CSV / JSON importers
# --------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_csv_layouts_match_from_samples(tmp_path):
    ref = LatencyProfile.from_samples(STAGES)
    rows = list(zip(*STAGES))
    wide = write(tmp_path / "wide.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    # columns in any order, spaces and blank lines tolerated
    shuffled = write(tmp_path / "shuffled.csv", "stage3_ms, stage1_ms ,stage2_ms\n\n" + "".join(f"{c}, {a},{b}\n" for a, b, c in rows))
    long = write(tmp_path / "long.csv", "exit,ms\n" + "".join(f"{e + 1},{v}\n" for r in rows for e, v in enumerate(r)))
    cum = np.cumsum(np.array(STAGES), axis=0).T
    cumulative = write(tmp_path / "cum.csv", "exit1_cumulative_ms,exit2_cumulative_ms,exit3_cumulative_ms\n"
                       + "".join(",".join(str(v) for v in r) + "\n" for r in cum))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + wide.read_bytes().replace(b"\n", b"\r\n"))  # as a spreadsheet saves it
    for path, layout in ((wide, "wide"), (shuffled, "wide"), (long, "long"), (cumulative, "cumulative"), (bom, "wide")):
        prof = import_csv(path, device_name="phone")
        same_stats(prof, ref)
        assert prof.source == "csv" and prof.device == {"device_name": "phone"} and prof.settings["layout"] == layout
    assert import_csv(wide).device == {"device_name": None}


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("a,b\n1,2\n", "stage1_ms,stage2_ms"),
    ("ms,exit\n1,2\n", "exit,ms"),
    ("stage1_ms,stage2_ms\n", "no samples"),
    ("stage1_ms,stage3_ms\n1,2\n", "numbered 1..2"),
    ("stage1_ms,stage1_ms\n1,2\n", "numbered 1..2"),
    ("stage1_ms,stage2_ms\n1,2\n3\n", "line 3: 1 cells for 2 columns"),
    ("stage1_ms,stage2_ms\n1,fast\n", "line 2: 'fast' is not a number"),
    ("stage1_ms,stage2_ms\n1,-2\n", "finite and non-negative"),
    ("exit1_cumulative_ms,exit2_cumulative_ms\n1,3\n2,1.5\n", "must not decrease"),
    ("exit,ms\n0,1.0\n", "1-based integer"),
    ("exit,ms\n1,1.0\n3,1.0\n", "without gaps"),
    ("exit,ms\n1.5,1.0\n", "1-based integer"),
    # a spreadsheet's semicolons (it said "'2.0;4.0' is not a number"); a whole-ms clock's zeros (refused only by calibrate)
    ("stage1_ms;stage2_ms\n2.0;4.0\n", "one column separated by ';'.*comma-separated"),
    ("stage1_ms,stage2_ms\n2,0\n3,0\n", r"bad.csv: latency profile 'stages' entry 2: its mean is 0.0 ms, and no stage runs in no time: the clock was too coarse"),
])
def test_csv_malformed(tmp_path, text, match):
    with pytest.raises(ProfileError, match=match):
        import_csv(write(tmp_path / "bad.csv", text))


def test_json_import(tmp_path):
    ref = LatencyProfile.from_samples(STAGES)
    device = {"device_name": "pixel-8", "cpu_model": "Tensor G3"}
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"device": device, "stages_ms": STAGES, "threads": 4, "notes": ["app v2"]}))
    prof = import_json(p)
    same_stats(prof, ref)
    assert prof.source == "json" and prof.device == device and prof.threads == 4 and "app v2" in prof.notes
    assert import_json(p, device_name="renamed").device == {**device, "device_name": "renamed"}
    p.write_text(json.dumps({"device": {"name": "iphone15"}, "stages_ms": STAGES}))
    assert import_json(p, device_name="iphone15").device == {"name": "iphone15", "device_name": "iphone15"}  # named by the flag
    p.write_text(json.dumps({"device": "iphone15", "stages_ms": STAGES}))  # a plain string is the device's name
    assert import_json(p).device == {"device_name": "iphone15"} and import_json(p, device_name="x").device == {"device_name": "x"}

    cum = np.cumsum(np.array(STAGES), axis=0).tolist()
    p.write_text(json.dumps({"cumulative_ms": cum}))
    prof = import_json(p, device_name="jetson")
    same_stats(prof, ref)
    assert prof.device == {"device_name": "jetson"}

    full = tmp_path / "full.json"
    ref.save(full)
    assert import_json(full) == ref  # a dvt-profile file is loaded as is

    for bad, match in (({"stages_ms": STAGES, "cumulative_ms": cum}, "exactly one"), ({}, "exactly one"), ([1, 2], "exactly one"),
                       ({"stages_ms": [1, 2]}, "list of per-exit"), ({"stages_ms": []}, "list of per-exit"),
                       ({"stages_ms": [[1.0], []]}, "no latency samples"),
                       ({"cumulative_ms": [[1.0, 2.0], [1.0]]}, "same number of iterations"),
                       # a plain-string note was dropped unsaid; a NaN sample was not said to be this file's
                       ({"stages_ms": STAGES, "notes": "app v2"}, r"s\.json: 'notes' must be a list of strings"),
                       ({"stages_ms": [[1.0, float("nan")]]}, r"s\.json: stage 1: .*finite"),
                       # a device's name under another key, or as a plain string, was dropped unsaid: calibrate then said none
                       ({"stages_ms": STAGES, "device": {"name": "iphone15"}}, r"s\.json: 'device' has \['name'\] but no 'device_name'"),
                       ({"stages_ms": STAGES, "device": 15}, r"s\.json: 'device' must be an object of device facts, .* or the device's name, got 15")):
        p.write_text(json.dumps(bad))
        with pytest.raises(ProfileError, match=match):
            import_json(p)
    p.write_text("not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        import_json(p)
    # a nested NaN fact is nulled as a top-level one is (it was warned about, then refused); the file is named once
    p.write_text(json.dumps({"stages_ms": STAGES, "device": {"cpu_mhz": float("nan"), "temps": [40.0, float("inf")]}, "notes": None}))
    with pytest.warns(UserWarning, match=r"\['cpu_mhz', 'temps\[1\]'\] are not finite numbers; recorded as null"):
        assert import_json(p).device["temps"] == [40.0, None]
    p.write_text(json.dumps({"stages_ms": STAGES, "threads": 0}))
    with pytest.raises(ProfileError) as e:
        import_json(p)
    assert str(e.value).count(str(p)) == 1, str(e.value)


def test_cli_import_csv_json(tmp_path, capsys):
    rows = list(zip(*STAGES))
    csv_path = write(tmp_path / "w.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    out = tmp_path / "o" / "p.json"
    assert main(["import", "--csv", str(csv_path), "--out", str(out), "--device-name", "rpi5"]) == 0
    assert "exit 3" in capsys.readouterr().out
    prof = LatencyProfile.load(out)
    assert prof.source == "csv" and prof.device["device_name"] == "rpi5"
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"stages_ms": STAGES}))
    assert main(["import", "--json", str(js), "--out", str(out)]) == 0
    same_stats(LatencyProfile.load(out), prof)
    write(tmp_path / "bad.csv", "x,y\n1,2\n")
    assert main(["import", "--csv", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    assert "stage1_ms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import", "--csv", str(csv_path), "--etrecord", "r", "--out", str(out)])


def test_import_records_the_thread_count_and_refuses_what_cannot_be_this_bundles(bundle_dir, tmp_path, capsys):
    """What a user importing a phone's timings met: the thread count was lost (--threads did not exist, device.threads was
    dropped), an ExecuTorch trace was accepted for an ONNX Runtime bundle, traces given out of exit order were read as
    given, and seconds under a millisecond header passed without a word."""
    out = tmp_path / "p.json"
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"device": {"device_name": "pixel8", "threads": 4}, "stages_ms": STAGES}))
    assert import_json(js).threads == 4
    assert main(["import", "--json", str(js), "--out", str(out)]) == 0 and LatencyProfile.load(out).threads == 4
    assert main(["import", "--json", str(js), "--out", str(out), "--threads", "2"]) == 2
    assert "--threads 2, but the file says the device ran 4 thread(s)" in capsys.readouterr().err
    for bad, match in (({"threads": 6, "device": {"threads": 4}}, "'threads' 6 and 'device.threads' 4 disagree"),
                       ({"device": {"threads": "4"}}, r"'device.threads' must be a whole number of threads >= 1, got '4'"),
                       ({"threads": 0}, "'threads' must be a whole number")):
        js.write_text(json.dumps({"stages_ms": STAGES, **bad}))
        with pytest.raises(ProfileError, match=match):
            import_json(js)
    rows = list(zip(*STAGES))
    csv_path = write(tmp_path / "w.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    assert main(["import", "--csv", str(csv_path), "--out", str(out), "--device-name", "rpi5"]) == 0
    assert "records no thread count: pass --threads N" in capsys.readouterr().err and LatencyProfile.load(out).threads is None
    assert main(["import", "--csv", str(csv_path), "--out", str(out), "--device-name", "rpi5", "--threads", "4"]) == 0
    assert LatencyProfile.load(out).threads == 4 and "thread count" not in capsys.readouterr().err
    # an ExecuTorch trace for an ONNX Runtime bundle; traces named out of exit order (refused before any file is read)
    assert main(["import", "--etdump", "a.etdp", "b.etdp", "c.etdp", "--bundle", str(bundle_dir), "--out", str(out)]) == 2
    assert "ETDump files are ExecuTorch traces, but bundle" in capsys.readouterr().err
    assert main(["import", "--etdump", "exit3.etdp", "exit2.etdp", "exit1.etdp", "--out", str(out)]) == 2
    assert "pass them as exit1.etdp exit2.etdp exit3.etdp" in capsys.readouterr().err
    assert main(["import", "--etdump", "exit0.etdp", "exit1.etdp", "exit2.etdp", "--out", str(out)]) == 2  # numbered from 0: in order
    assert "pass them as" not in capsys.readouterr().err
    # seconds under a millisecond header: faster than any device runs one image
    secs = write(tmp_path / "s.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "1e-6,2e-6,3e-6\n" * 30)
    assert main(["import", "--csv", str(secs), "--out", str(out), "--bundle", str(bundle_dir), "--threads", "1"]) == 0
    assert "faster than any device runs one image" in capsys.readouterr().err
    # a small model's seconds (1 to 1.5 ms written as 0.001 to 0.0015) pass the rate check, not the floor
    tiny = write(tmp_path / "t.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "1e-3,1.2e-3,1.5e-3\n" * 30)
    assert max(e.stage_gflops for e in Manifest.load(bundle_dir).exits) / 1e-3 * 1e3 < MAX_PLAUSIBLE_GMACS
    assert main(["import", "--csv", str(tiny), "--out", str(out), "--bundle", str(bundle_dir), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "stage 1: a median of 0.001 ms is less than any runtime takes to call a model" in err and "multiply them by 1000" in err
    assert main(["import", "--csv", str(csv_path), "--out", str(out), "--bundle", str(bundle_dir), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "faster than any device" not in err and "less than any runtime" not in err and "slower than any" not in err
    # microseconds under a millisecond header (a 224 px model's 30 ms read as 30,000 ms): accepted with nothing said
    micro = write(tmp_path / "u.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "30000,40000,50000\n" * 30)
    assert main(["import", "--csv", str(micro), "--out", str(out), "--bundle", str(bundle_dir), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "stage 1: a median of 3e+04 ms" in err and "slower than any device runs one image" in err and "divide them by 1000" in err


def test_import_never_relabels_another_bundles_profile_nor_drops_what_the_file_declares(bundle_dir, measured, tmp_path, capsys):
    """A reader found: --bundle relabelled a file that names another bundle (an int8 ExecuTorch profile became this fp32
    ONNX one), --skip-first was ignored for a CSV (its warm-up rows kept), a raw JSON's 'unit' or 'batch' was dropped, and a
    profile at another thread count was used for deadlines without a word."""
    out = tmp_path / "p.json"
    js = tmp_path / "other.json"
    js.write_text(json.dumps({"stages_ms": STAGES, "bundle": {"model": "dvt_small_cifar", "target": "executorch", "precision": "int8"}}))
    assert main(["import", "--json", str(js), "--bundle", str(bundle_dir), "--threads", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "says it timed another bundle (model 'dvt_small_cifar', target 'executorch', precision 'int8')" in err and not out.exists()
    assert main(["import", "--json", str(js), "--threads", "1", "--out", str(out)]) == 0
    assert "does not say which model it timed" not in capsys.readouterr().err  # it does say
    rows = list(zip(*STAGES))
    csv_path = write(tmp_path / "w.csv", "stage1_ms,stage2_ms,stage3_ms\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    with pytest.raises(SystemExit):
        main(["import", "--csv", str(csv_path), "--skip-first", "5", "--out", str(tmp_path / "w.json")])
    assert "--skip-first goes with --etdump" in capsys.readouterr().err
    js.write_text(json.dumps({"stages_ms": STAGES, "unit": "us", "batch": 8}))
    with pytest.raises(ProfileError, match=r"unknown key\(s\) \['batch', 'unit'\]"):
        import_json(js)
    bundle, prof = measured
    two = Bundle.open(bundle_dir, threads=2)
    with pytest.warns(UserWarning, match=r"taken at another setting \(1 thread\(s\) per session, this bundle runs 2\)") as rec:
        two.use_profile(prof)
    assert rec[0].filename == __file__  # the caller's line
    # the backend's default threads (every core) and other execution providers were never said
    with pytest.warns(UserWarning, match=r"1 thread\(s\) per session, this bundle runs the backend default \(every core\)"):
        Bundle.open(bundle_dir, threads=None).use_profile(prof)
    assert prof.device["providers"] == ["CPUExecutionProvider"]
    azure = Bundle.open(bundle_dir, threads=1, providers=["AzureExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning, match=r"execution providers \['CPUExecutionProvider'\], this bundle runs \['AzureExecutionProvider', "):
        azure.use_profile(prof)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Bundle.open(bundle_dir, threads=1).use_profile(prof)  # the setting it was measured at: nothing to say
    # a profile taken at the backend default (or imported without a count) against a bundle at 1 thread was never said
    unsaid = copy.deepcopy(prof)  # the fixture's profile is shared
    unsaid.threads = None
    with pytest.warns(UserWarning, match=r"the backend default \(every core\) or an unrecorded thread count, this bundle runs 1 thread"):
        Bundle.open(bundle_dir, threads=1).use_profile(unsaid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "the backend's default threads")  # in a CPU-limited container (CI's may be one)
        Bundle.open(bundle_dir, threads=None).use_profile(unsaid)  # both the backend default


# --------------------------------------------------------------------------------------
# no torch
# --------------------------------------------------------------------------------------


def test_profile_module_imports_without_torch(tmp_path):
    (tmp_path / "w.csv").write_text("stage1_ms,stage2_ms\n1.0,2.0\n1.5,2.5\n1.0,2.0\n1.25,2.0\n")
    r = run_without_torch(
        f"""
        import dvt_runtime.profile as P
        prof = P.LatencyProfile.from_samples([[1.0, 2.0, 1.5, 1.0], [2.0, 2.5, 2.0, 2.0]], device=P.device_facts(threads=1))
        assert P.LatencyProfile.from_dict(prof.to_dict()) == prof
        assert prof.stage_costs().n_stages == 2
        assert P.import_csv({str(tmp_path / 'w.csv')!r}).stages[1]["n"] == 4
        prof.format_table(); prof.summary()
        assert P.main(["import", "--csv", {str(tmp_path / 'w.csv')!r}, "--out", {str(tmp_path / 'p.json')!r}]) == 0
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


# --------------------------------------------------------------------------------------
# ETDump
# --------------------------------------------------------------------------------------


def _profile_event(schema, name: str, chain: int, instruction: int, start: int, end: int, delegate_id: int = -1):
    ev = schema.ProfileEvent(name=name, chain_index=chain, instruction_id=instruction, delegate_debug_id_int=delegate_id,
                             delegate_debug_id_str="", delegate_debug_metadata=b"", start_time=start, end_time=end)
    return schema.Event(profile_event=ev, allocation_event=None, debug_event=None)


def write_etdump(path: Path, durations_ns, *, execute_event: bool = True, load_ns: int | None = None, odd_run: int | None = None) -> Path:
    """A real ETDump flatbuffer laid out like the runtime's (size-prefixed, as ETDumpGen writes it).

    One "Default" block (Program::load_method, Method::init), then one "Execute" block per
    run: Method::execute around an OPERATOR_CALL and a DELEGATE_CALL (with an XNNPACK-style
    delegate-internal event nested in it). ``odd_run``: that run has an extra event, so the
    Inspector files it in an event block of its own, after the others (order must come from
    the start times).
    """
    from executorch.devtools.etdump import schema_flatcc as s
    from executorch.devtools.etdump.serialize import serialize_to_etdump_flatcc

    runs = []
    if load_ns is not None:
        runs.append(s.RunData(name="Default", bundled_input_index=-1, allocators=[], events=[
            _profile_event(s, "Program::load_method", -1, 0, 0, load_ns), _profile_event(s, "Method::init", -1, 0, 10, load_ns - 10)]))
    t = 1_000_000
    for i, d in enumerate(durations_ns):
        half = d // 2
        events = [_profile_event(s, "OPERATOR_CALL", 0, 0, t + 100, t + half),  # framework overhead: 100 ns before, 200 after
                  _profile_event(s, "DELEGATE_CALL", 0, 1, t + half, t + d - 200),
                  _profile_event(s, "Fully Connected (NC, F32) GEMM #1", 0, 1, t + half + 50, t + d - 300, delegate_id=7)]
        if execute_event:
            events.insert(0, _profile_event(s, "Method::execute", -1, 0, t, t + d))
        if i == odd_run:
            events.append(_profile_event(s, "OPERATOR_CALL", 0, 2, t + d - 200, t + d - 150))
        runs.append(s.RunData(name="Execute", bundled_input_index=-1, allocators=[], events=events))
        t += d + 5_000
    blob = serialize_to_etdump_flatcc(s.ETDumpFlatCC(version=0, run_data=runs))
    path.write_bytes(struct.pack("<I", len(blob)) + blob)
    return path


DURATIONS_NS = [[900_000, 200_000, 250_000, 210_000, 220_000, 205_000],
                [1_500_000, 400_000, 410_000, 500_000, 405_000, 420_000],
                [2_000_000, 800_000, 810_000, 805_000, 900_000, 820_000]]


@pytest.fixture(scope="module")
def executorch_devtools():
    return pytest.importorskip("executorch.devtools")


@etdump_group
def test_etdump_import_method_execute(executorch_devtools, tmp_path):
    paths = [write_etdump(tmp_path / f"exit{e + 1}.etdp", d, load_ns=3_000_000 + e, odd_run=2 if e == 1 else None) for e, d in enumerate(DURATIONS_NS)]
    prof = import_etdump(paths, device_name="pixel-8")
    ms = [[v / 1e6 for v in d] for d in DURATIONS_NS]
    ref = LatencyProfile.from_samples([m[1:] for m in ms])
    assert prof.source == "etdump" and prof.device == {"device_name": "pixel-8"} and prof.bundle["backend"] == "executorch"
    for got, want in zip(prof.stage_samples(), ref.stage_samples()):
        np.testing.assert_allclose(got, want, rtol=1e-12)  # chronological, the first run left out
    for a, b in zip(prof.cumulative, ref.cumulative):
        assert a["p90"] == pytest.approx(b["p90"], rel=1e-12)
    assert prof.first_inference_ms == pytest.approx([m[0] for m in ms])
    assert prof.load_ms == pytest.approx([3.0, 3.000001, 3.000002])
    assert any("Method::execute" in n for n in prof.notes)

    kept = import_etdump(paths, skip_first=0)
    assert kept.stages[0]["n"] == 6 and kept.first_inference_ms is None
    # from a shell: ExecuTorch's devtools import prints torchao's GPU-kernel and torch's pytree notices; held, not shown
    r = subprocess.run([sys.executable, "-m", "dvt_runtime.profile", "import", "--etdump", *map(str, paths), "--threads", "1",
                        "--out", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Failed to load" not in r.stderr and "_pytree" not in r.stderr, r.stderr[-2000:]
    single = import_etdump(paths[0])
    assert single.num_exits == 1 and single.stages[0]["n"] == 5


@etdump_group
def test_etdump_import_falls_back_to_instruction_events(executorch_devtools, tmp_path):
    paths = [write_etdump(tmp_path / f"e{e}.etdp", d, execute_event=False) for e, d in enumerate(DURATIONS_NS)]
    prof = import_etdump(paths, skip_first=0)
    # OPERATOR_CALL + DELEGATE_CALL per run (the nested delegate event is not added again)
    want = [[(d - 300) / 1e6 for d in run] for run in DURATIONS_NS]
    for got, w in zip(prof.stage_samples(), want):
        np.testing.assert_allclose(got, w, rtol=1e-12)
    assert prof.load_ms is None
    assert any("OPERATOR_CALL+DELEGATE_CALL" in n for n in prof.notes)


@etdump_group
def test_etdump_errors(executorch_devtools, tmp_path, monkeypatch):
    good = write_etdump(tmp_path / "g.etdp", DURATIONS_NS[0])
    with pytest.raises(FileNotFoundError):
        import_etdump([good, tmp_path / "missing.etdp"])
    with pytest.raises(ValueError, match="one ETRecord"):
        import_etdump([good, good], etrecord_path=str(good))
    with pytest.raises(ValueError, match="2 ETDump files but 1 ETRecords"):
        import_etdump([good, good], etrecord_path=[good])
    (tmp_path / "junk.etdp").write_bytes(b"\x10\x00\x00\x00not a flatbuffer")
    with pytest.raises(ProfileError, match="cannot read ETDump"):
        import_etdump(tmp_path / "junk.etdp")
    only_load = tmp_path / "init.etdp"
    write_etdump(only_load, [], load_ns=1000)
    with pytest.raises(ProfileError, match="EXECUTORCH_ENABLE_EVENT_TRACER"):
        import_etdump(only_load)
    monkeypatch.setitem(sys.modules, "executorch.devtools", None)  # as if executorch were not installed
    with pytest.raises(BackendUnavailable, match=r"pip install executorch==1.5.1 torch==2.13.0 .*pip install './runtime\[executorch\]'"):
        import_etdump(good)


@pytest.fixture(scope="module")
def tiny_program(executorch_devtools, tmp_path_factory):
    """A real .pte and its ETRecord (a small matmul+relu program)."""
    import copy

    import torch
    from executorch.devtools import generate_etrecord
    from executorch.exir import to_edge_transform_and_lower

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x @ x.T + 1)

    d = tmp_path_factory.mktemp("pte")
    edge = to_edge_transform_and_lower(torch.export.export(M(), (torch.randn(8, 8),)))
    edge_copy = copy.deepcopy(edge)
    program = edge.to_executorch()
    (d / "m.pte").write_bytes(program.buffer)
    generate_etrecord(str(d / "m.etrecord"), edge_copy, program)
    return d / "m.pte", d / "m.etrecord"


@etdump_group
def test_etdump_with_real_etrecord(tiny_program, tmp_path, capsys):
    pte, etrecord = tiny_program
    paths = [write_etdump(tmp_path / f"x{e}.etdp", d) for e, d in enumerate(DURATIONS_NS[:2])]
    prof = import_etdump(paths, etrecord_path=[etrecord, etrecord])
    assert prof.stages[1]["n"] == 5 and prof.settings["etrecords"] == [str(etrecord)] * 2
    out = tmp_path / "p.json"
    assert main(["import", "--etdump", *map(str, paths), "--etrecord", str(etrecord), str(etrecord), "--out", str(out)]) == 0
    assert LatencyProfile.load(out).stages == prof.stages
    assert "exit 2" in capsys.readouterr().out


@etdump_group
def test_etdump_from_the_python_runtime(tiny_program, tmp_path):
    """ETDump written by ExecuTorch's own runtime, when this build has the event tracer."""
    import torch
    from executorch.runtime import Runtime

    pte, _ = tiny_program
    program = Runtime.get().load_program(pte, enable_etdump=True, debug_buffer_size=1 << 20)
    method = program.load_method("forward")
    for _ in range(6):
        method.execute((torch.randn(8, 8),))
    etdump = tmp_path / "rt.etdp"
    program.write_etdump_result_to_file(str(etdump), str(tmp_path / "rt.bin"))
    assert etdump.is_file(), "the pinned executorch (>= 1.5.1) writes ETDump from its pip wheel"
    prof = import_etdump(etdump)
    assert prof.stages[0]["n"] == 5 and prof.stages[0]["min"] > 0


@etdump_group
def test_runtime_writes_etdump_per_exit(executorch_devtools, micro_ckpt, onnx_bundle, tmp_path, capsys):
    """`profile --etdump-dir` on an ExecuTorch bundle: ExecuTorch's own trace of every exit, read back by `import --etdump`."""
    from dvt_edge.export import export_bundle

    b = export_bundle(str(micro_ckpt), "executorch", "fp32", out=str(tmp_path / "b"), verify_n=10, progress=False).path
    d = tmp_path / "etdump"
    assert main(["--bundle", str(b), "--runs", "8", "--warmup", "2", "--etdump-dir", str(d), "--no-progress"]) == 0
    files = sorted(d.glob("exit*.etdp"))
    assert [f.name for f in files] == ["exit1.etdp", "exit2.etdp", "exit3.etdp"]
    out = tmp_path / "p.json"
    assert main(["import", "--etdump", *map(str, files), "--out", str(out)]) == 0
    prof = LatencyProfile.load(out)
    assert prof.source == "etdump" and prof.num_exits == 3
    for st in prof.stages:  # first inference, warm-up and settling runs were traced too; only the 8 timed ones count
        assert st["n"] == 8 and st["min"] > 0 and st["median"] < 1000
    assert prof.first_inference_ms and prof.settings["timed_runs"] == 8
    record = json.loads((d / "etdump_runs.json").read_text())
    # the record names the bundle that ran and its threads: a trace of the int8 bundle beside it was imported as this one's
    manifest = Manifest.load(b)
    assert record["bundle"] == {"model": manifest.model, "target": "executorch", "precision": "fp32",
                                "artifacts": [e.sha256 for e in manifest.exits]} and record["threads"] == 1 == prof.threads
    capsys.readouterr()
    assert main(["import", "--etdump", *map(str, files), "--bundle", str(b), "--out", str(out)]) == 0
    assert "nothing checks that they traced" not in capsys.readouterr().err
    assert main(["import", "--etdump", *map(str, files), "--out", str(out)]) == 0  # no --bundle: the record names it
    assert {k: LatencyProfile.load(out).bundle[k] for k in ("model", "precision")} == {"model": manifest.model, "precision": "fp32"}
    (d / "etdump_runs.json").write_text(json.dumps({**record, "bundle": {**record["bundle"], "precision": "int8"}}))
    assert main(["import", "--etdump", *map(str, files), "--bundle", str(b), "--out", str(out)]) == 2
    assert "says these ETDump files traced another bundle (precision 'int8'), not" in capsys.readouterr().err
    (d / "etdump_runs.json").write_text(json.dumps({**record, "bundle": {**record["bundle"], "artifacts": ["0" * 64] * 3}}))
    assert main(["import", "--etdump", *map(str, files), "--bundle", str(b), "--out", str(out)]) == 2
    assert "traced another bundle (other artifacts (SHA-256))" in capsys.readouterr().err
    (d / "etdump_runs.json").write_text(json.dumps(record))
    assert main(["import", "--etdump", *map(str, files), "--threads", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--threads 4, but" in err and "says the trace was taken at 1 thread(s)" in err
    (d / "etdump_runs.json").write_text(json.dumps({**record, "schema": "dvt-etdump-runs/2"}))  # a newer runtime's: not 'delete it'
    assert main(["import", "--etdump", *map(str, files), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ETDump run record dvt-etdump-runs/2 is newer than this dvt-runtime" in err and "understands (dvt-etdump-runs/1)" in err and "delete" not in err, err
    (d / "etdump_runs.json").write_text(json.dumps({**record, "timed": record["timed"][:-1]}))  # from another run
    assert main(["import", "--etdump", *map(str, files), "--out", str(out)]) == 2
    assert "different profiling runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the record says which runs were timed: --skip-first has nothing to do
        main(["import", "--etdump", *map(str, files), "--skip-first", "3", "--out", str(out)])
    assert "--skip-first is for traces without a run record" in capsys.readouterr().err
    (d / "etdump_runs.json").unlink()  # a phone's trace comes without it: the user is told what was kept, and can skip more
    assert main(["import", "--etdump", *map(str, files), "--out", str(out)]) == 0
    n_all = LatencyProfile.load(out).stages[0]["n"]
    assert f"kept every run after each exit's first 1 ({n_all} per exit)" in capsys.readouterr().err and n_all > 8
    assert main(["import", "--etdump", *map(str, files), "--skip-first", "4", "--out", str(out)]) == 0
    assert LatencyProfile.load(out).stages[0]["n"] == n_all - 3
    with pytest.raises(SystemExit):  # one event per call: per-call times would pass for per-image ones
        main(["--bundle", str(b), "--batch", "4", "--etdump-dir", str(tmp_path / "y")])
    assert "profile at --batch 1" in capsys.readouterr().err
    assert len({st["n"] for st in prof.stages}) == 1  # chains only: no per-exit streams in the trace
    with pytest.raises(SystemExit):  # ETDump is ExecuTorch's: an ONNX bundle is refused
        main(["--bundle", str(onnx_bundle), "--etdump-dir", str(tmp_path / "x")])
    assert "--etdump-dir is for ExecuTorch bundles" in capsys.readouterr().err
    import warnings

    bundle = Bundle.open(b)
    ro = np.zeros(bundle.input_shape, np.float32)
    ro.setflags(write=False)  # e.g. np.frombuffer: torch warned on it (and could write through it)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bundle.predict(ro).exit >= 0


def test_device_side_messages_name_the_real_problem(bundle_dir, tmp_path, capsys):
    """What a user walking the device side met: a folder given for a file was 'not found' (or failed a SHA-256 check
    with an empty folder's hash), a CSV without its stage3_ms column 'was measured on another model', one timed run
    imported silently, device names '' / '.' / 'x.json' became the host's name, '..json' and 'x.json.json', a
    calibration from 6 images said nothing, and a p99.9 budget's measured check was 'not recorded'."""
    import shutil

    from dvt_runtime.calibrate import CalibrationError, calibrate
    from dvt_runtime.calibrate import main as cal_main
    from dvt_runtime.manifest import ManifestError

    (tmp_path / "adir.npz").mkdir()
    assert cal_main(["--bundle", str(bundle_dir), "--data", str(tmp_path / "adir.npz"), "--budget-ms", "1"]) == 2
    assert "adir.npz is a folder, not a .npz file" in capsys.readouterr().err
    assert main(["import", "--csv", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    assert "is a folder, not a CSV file" in capsys.readouterr().err
    with pytest.raises(ManifestError, match=r"manifest\.json is a file, not a bundle .*: pass its folder"):
        Bundle.open(bundle_dir / "manifest.json")
    b2 = tmp_path / "b2"
    shutil.copytree(bundle_dir, b2)
    (b2 / "exit2.onnx").unlink()
    (b2 / "exit2.onnx").mkdir()
    with pytest.raises(ManifestError, match=r"exit 2: artifact exit2\.onnx in .* is a folder, not the file that was exported"):
        Bundle.open(b2)
    two = write(tmp_path / "two.csv", "stage1_ms,stage2_ms\n" + "0.5,1.0\n" * 30)
    assert main(["import", "--csv", str(two), "--bundle", str(bundle_dir), "--out", str(tmp_path / "p.json")]) == 2
    assert "two.csv has latencies of 2 stage(s), but bundle" in (err := capsys.readouterr().err) and "a stage is missing" in err
    assert "stage1_ms..stage3_ms" in err
    one = write(tmp_path / "one.csv", "stage1_ms,stage2_ms,stage3_ms\n0.5,1.0,2.0\n")
    assert main(["import", "--csv", str(one), "--bundle", str(bundle_dir), "--out", str(tmp_path / "p.json"), "--device-name", "ph"]) == 0
    assert "note: 1 timed run(s) for a stage: its percentiles (p90, p99) are rough below 20" in capsys.readouterr().err
    bundle_copy = Path(shutil.copytree(bundle_dir, tmp_path / "b3"))
    b = Bundle.open(bundle_copy)
    x = np.random.default_rng(0).standard_normal((12, *b.input_shape)).astype(np.float32)
    y = np.arange(12) % 10
    for name, msg in (("", "names no device"), (".", "names no device"), ("x.json", r"name the device, not the file .* 'x'"),
                      ("../../etc", r"names no device, or starts with '\.' \(a hidden file\)")):
        with pytest.raises(CalibrationError, match=msg):
            calibrate(b, x, y, 1e6, device_name=name, progress=False)
    assert not (bundle_copy / "calibration").exists()
    r = calibrate(b, x, y, 1e6, metric="p99.9", device_name="few", runs=8, warmup=1, progress=False)
    assert "only 6 images to search thresholds on and 6 to check them on" in r.note and "calibrate on 400 or more in all" in r.note
    assert "the p99.9 of 6 holdout images is their slowest: it needs 10000 or more" in r.note
    assert r.chosen.measured["p99.9_ms"] > 0 and np.isfinite(r.chosen.measured["p99.9_ms"])
    from dvt_runtime.calnotes import few_images as _few_images

    assert _few_images(500, 500, "p100.0") == "" and _few_images(500, 500, "mean") == ""  # no division by zero at q = 100
    assert "calibrate on 1000 or more in all" in _few_images(400, 100, "mean")  # a 0.2 holdout: 200 of 1000 (it said 400)
    assert "p10 of 50 holdout images is their 5th fastest: it needs 100 or more" in _few_images(500, 50, "p10")  # the low tail
    assert "p90 of 60 holdout images is their 7th slowest: it needs 100" in _few_images(60, 60, "p90")  # 'about their slowest' had said
    assert "the latency profile has only 5 timed run(s) for a stage" in _few_images(1000, 1000, "p90", runs=5)
    assert _few_images(1000, 1000, "p90", runs=20) == ""
    assert _few_images(1000, 1000, "p99") == "" and "p99 of 999 holdout images is their 10th slowest: it needs 1000" in _few_images(999, 999, "p99")
    # a name taken from a given profile is checked as a --device-name is
    prof = LatencyProfile.from_samples(STAGES, device={"device_name": "x.json"})
    with pytest.raises(CalibrationError, match="name the device, not the file .* 'x'"):
        calibrate(b, x, y, 1e6, profile=prof, progress=False)


def test_batch_on_a_one_image_bundle_is_said(bundle_dir, capsys):
    """`profile --batch 32` / `calibrate --batch 32` on a bundle whose artifacts take one image per call (ExecuTorch,
    Core ML, dynamic int8) printed 'batch 32: ms per image' as if images were batched: it says they are not."""
    import dataclasses

    from dvt_runtime.latency import batch_note

    b = Bundle.open(bundle_dir)
    assert b.manifest.max_batch != 1 and batch_note(b, 32) is None  # ONNX fp32 takes any batch
    b.manifest = dataclasses.replace(b.manifest, max_batch=1)
    assert batch_note(b, 1) is None
    assert "--batch 32 runs 32 calls of one image, so its ms per image are batch 1's" in batch_note(b, 32)


@bundle_group
def test_a_full_disk_keeps_the_measurements_aside_and_says_how_to_move_them(bundle_dir, tmp_path, monkeypatch, capsys):
    """A profile or calibration measured for minutes was lost when its file could not be written (a full disk): the bytes are
    kept in the temporary folder (often another disk), and the error gives the command that moves them into place."""
    import errno
    import shlex
    import shutil
    import tempfile

    from dvt_edge.data import load_dataset
    from dvt_runtime import io
    from dvt_runtime.calibrate import calibrate

    full = tmp_path / "full"
    real = io.atomic_write

    def no_room(path, data):
        if Path(path).parent.parent == full or Path(path).parent == full:
            raise io._cannot_write(OSError(errno.ENOSPC, "No space left on device"), Path(path))
        return real(path, data)

    monkeypatch.setattr(io, "atomic_write", no_room)
    aside = tmp_path / "elsewhere"
    aside.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(aside))
    out = full / "p.json"
    assert main(["--bundle", str(bundle_dir), "--runs", "4", "--warmup", "0", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    [kept] = aside.iterdir()
    assert f"cannot write {out}: No space left on device; the profile's measurements are kept in {kept}: once there is room, move " \
           f"them into place with: mv {shlex.quote(str(kept))} {shlex.quote(str(out))}" in err and not out.exists()
    assert err.splitlines()[-1].startswith("error: cannot write") and "[Errno" not in err  # the message, not Python's repr of the errno
    assert LatencyProfile.load(kept).stages[0]["n"] == 4  # the measurements, whole
    from dvt_runtime.io import current_umask

    assert kept.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as a written file's: mkstemp's 0600 kept a service's user out
    kept.unlink()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # nowhere to keep them: the plain error, no half-made file
    assert main(["--bundle", str(bundle_dir), "--runs", "4", "--warmup", "0", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: No space left on device; free some space there" in err and "kept" not in err

    monkeypatch.setattr(tempfile, "tempdir", str(aside))
    shutil.copytree(bundle_dir, full)  # a calibration is written into its bundle
    x, y = load_dataset("fashion-mnist", "val").arrays(40, seed=5)
    with pytest.raises(OSError, match="the calibration's thresholds and measurements are kept in "):
        calibrate(Bundle.open(full), x, y, 1.0, device_name="dev", runs=4, warmup=0, progress=False, allow_chance=True)  # random weights
    [kept] = aside.iterdir()
    assert json.loads(kept.read_text())["device"] == "dev" and not (full / "calibration" / "dev.json").exists()


def test_latencies_too_long_to_be_milliseconds_are_refused_by_name():
    """1e308 ms samples passed the finite check, then overflowed the sums into "30 non-finite value(s)" the file did not hold;
    an overhead of 1e308 was blamed on "stage costs"."""
    from dvt_runtime.measure import recorded_overhead

    with pytest.raises(ProfileError, match=r"stage 2: a latency sample of 1e\+308 ms is over 1e\+07 ms .*not milliseconds\?"):
        check_samples([1.0, 1e308, 2.0], "stage 2")
    assert check_samples([1e7], "stage 1").tolist() == [1e7]
    prof = LatencyProfile.from_samples(STAGES, threads=1)
    prof = LatencyProfile.from_dict({**prof.to_dict(), "settings": {**prof.settings, "predict_overhead_ms": [0.01, 1e308, 0.02]}})
    with pytest.raises(ProfileError, match=r"settings\.predict_overhead_ms must list 3 non-negative ms \(at most 1e\+07\), got \[0\.01, 1e\+308"):
        recorded_overhead(prof, 3)


def test_an_imported_json_is_read_as_utf8_with_or_without_a_byte_order_mark(tmp_path):
    """A phone app's JSON with a non-ASCII device name, written by PowerShell 5 (a UTF-8 BOM): "Unexpected UTF-8 BOM" on
    every OS, and on Windows (cp1252 by default) 'Pixel-é' became 'Pixel-Ã©'. Read as UTF-8, BOM or not."""
    stages = [[0.5, 0.6, 0.55, 0.52] * 5, [1.0, 1.1, 1.05, 1.02] * 5]
    for bom in (b"", b"\xef\xbb\xbf"):
        p = tmp_path / f"phone{len(bom)}.json"
        p.write_bytes(bom + json.dumps({"device": {"device_name": "Pixel-é 小米"}, "stages_ms": stages}, ensure_ascii=False).encode())
        assert import_json(p).device["device_name"] == "Pixel-é 小米"
