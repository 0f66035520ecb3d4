"""Batched early exit: each stage runs once on the undecided samples, answers identical to one by one."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from dvt_runtime import Bundle
from dvt_runtime.bundle import InputError
from dvt_runtime.manifest import Manifest, ManifestError

pytestmark = pytest.mark.xdist_group("onnx_bundle")


class CountingSession:
    """Wraps a backend session: records the batch size of every call."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def run(self, inputs):
        self.batches.append(len(inputs["image"]))
        return self.inner.run(inputs)


def _images(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _mixed_thresholds(b: Bundle, x: np.ndarray) -> list[float]:
    """Thresholds at the median confidence of exits 1 and 2: samples leave at every exit."""
    logits = b.run_exits(x)
    conf = [np.exp(lg - lg.max(-1, keepdims=True)) for lg in logits]
    conf = [(c / c.sum(-1, keepdims=True)).max(-1) for c in conf]
    return [float(np.median(conf[0])), float(np.median(conf[1]))]


@pytest.fixture()
def bundle(onnx_bundle):
    return Bundle.open(onnx_bundle)


def test_onnx_bundle_takes_any_batch(bundle):
    m = bundle.manifest
    assert m.max_batch is None and m.batch_note == ""
    assert bundle.batch_limit() > 10**6
    p = m.parity
    assert p.batch_checked >= 2
    for row in p.exits:
        assert np.isfinite(row.max_abs_diff_batched)
        assert row.max_abs_diff_batched <= 1e-4  # NaN fails


def test_batch_matches_one_by_one_and_regroups(bundle):
    x = _images(48, bundle.input_shape)
    thr = _mixed_thresholds(bundle, x)
    one = [bundle.predict(x[i], thresholds=thr) for i in range(len(x))]
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    batched = bundle.predict(x, thresholds=thr, max_batch=48)
    assert [p.label for p in batched] == [p.label for p in one]
    assert [p.exit for p in batched] == [p.exit for p in one]
    exits = np.bincount([p.exit for p in one], minlength=3)
    assert (exits > 0).all(), exits  # the check covers samples leaving at every exit
    # one call per stage, on exactly the samples still undecided
    assert [c.batches for c in counters] == [[48], [48 - exits[0]], [exits[2]]]
    for a, b in zip(batched, one):
        # one image takes the single-image fast path, a batch the regrouping one: same answers
        assert np.allclose(a.probs, b.probs, atol=1e-6)
        assert a.class_name == b.class_name and a.confidence == pytest.approx(b.confidence, abs=1e-6)
        assert not a.deadline_skipped and not b.deadline_skipped
        for p in (a, b):
            assert len(p.stage_ms) == p.exit + 1 and p.total_ms == pytest.approx(sum(p.stage_ms))
        # per image: each call's time over the images in it (what the budget controller observes)
        assert a.stage_ms_per_image[0] == pytest.approx(a.stage_ms[0] / 48)
        assert b.stage_ms_per_image == b.stage_ms


def test_one_image_lean_path_matches_the_regrouping_path(bundle):
    """``predict`` on one image takes ``_cascade_one``; the regrouping path (forced with a deadline
    no stage can overrun) must give the same answer, field for field."""
    x = _images(12, bundle.input_shape, seed=4)
    bundle.use_profile([1e-6] * bundle.num_exits)
    mixed = _mixed_thresholds(bundle, x)
    exits = set()
    for thr in ([None, None], [0.0, 0.0], mixed):
        t = bundle._thresholds(thr)
        for xi in x:
            lean = bundle.predict(xi, thresholds=thr)
            general = bundle._cascade(xi[None], t, (1e9, bundle.stage_p90_ms), 1)[0]
            assert (lean.label, lean.class_name, lean.exit, lean.deadline_skipped) == \
                   (general.label, general.class_name, general.exit, general.deadline_skipped)
            assert lean.confidence == general.confidence and np.array_equal(lean.probs, general.probs)
            assert len(lean.stage_ms) == len(lean.stage_ms_per_image) == lean.exit + 1
            assert lean.stage_ms == lean.stage_ms_per_image and lean.total_ms == pytest.approx(sum(lean.stage_ms))
            exits.add(lean.exit)
    assert exits == {0, 1, 2}


def test_thresholds_are_checked_on_every_call_though_cached(bundle):
    """Checked thresholds are cached by value and type: a cached 1.0 does not let True through,
    a list changed in place is read again, and the cached array cannot be written to."""
    xi = _images(1, bundle.input_shape)[0]
    thr = [1.0, 1.0]
    assert bundle.predict(xi, thresholds=thr).exit == 2  # max softmax < 1: nobody stops early
    with pytest.raises(ValueError, match="confidence in"):
        bundle.predict(xi, thresholds=[True, 1.0])
    nan = [float("nan"), 0.5]  # the same objects twice: a NaN cached before its check would hit the second time
    for _ in range(2):
        with pytest.raises(ValueError, match="confidence in"):
            bundle.predict(xi, thresholds=nan)
    thr[0] = 0.0
    assert bundle.predict(xi, thresholds=thr).exit == 0
    t = bundle._thresholds(thr)
    assert t is bundle._thresholds([0.0, 1.0]) and not t.flags.writeable
    assert list(t) == [0.0, 1.0, -np.inf]


def test_max_batch_splits_calls_same_answers(bundle):
    x = _images(30, bundle.input_shape, seed=1)
    thr = _mixed_thresholds(bundle, x)
    full = bundle.predict(x, thresholds=thr)
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    split = bundle.predict(x, thresholds=thr, max_batch=7)
    assert [(p.label, p.exit) for p in split] == [(p.label, p.exit) for p in full]
    assert counters[0].batches == [7, 7, 7, 7, 2]
    assert all(b <= 7 for c in counters for b in c.batches)
    logits = bundle.run_exits(x, max_batch=4)
    ref = Bundle.open(bundle.path).run_exits(x)
    for a, b in zip(logits, ref):
        assert np.abs(a - b).max() <= 1e-5


def test_default_calls_hold_at_most_default_max_batch(bundle):
    """Without max_batch a large batch runs in calls of DEFAULT_MAX_BATCH (ONNX Runtime's arena keeps what
    the largest call needed); an explicit max_batch above it is one call."""
    from dvt_runtime.bundle import DEFAULT_MAX_BATCH

    n = 2 * DEFAULT_MAX_BATCH + 6
    x = _images(n, bundle.input_shape, seed=4)
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    never = [None] * (bundle.num_exits - 1)
    bundle.predict(x, thresholds=never)
    assert counters[0].batches == [DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH, 6]
    bundle.run_exits(x)
    assert counters[-1].batches == [DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH, 6] * 2
    bundle.predict(x, thresholds=never, max_batch=n)
    assert counters[0].batches[-1] == n
    # and at most DEFAULT_BATCH_PIXELS: at 224 px calls of 32 were 30% slower an image than calls of 1 and held 3x the memory
    for size, calls in ((224, 1), (64, 8), (40, 20)):
        bundle.input_shape = (bundle.input_shape[0], size, size)
        assert bundle._chunk(None) == calls and bundle._chunk(5) == 5


def test_batch_one_bundle_loops(bundle):
    """A bundle whose artifacts take one image (ExecuTorch, Core ML) runs the same regrouping one per call."""
    bundle.manifest.max_batch = 1
    x = _images(12, bundle.input_shape, seed=2)
    thr = _mixed_thresholds(bundle, x)
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    preds = bundle.predict(x, thresholds=thr, max_batch=64)
    assert all(b == 1 for c in counters for b in c.batches)
    assert len(counters[0].batches) == 12
    fresh = Bundle.open(bundle.path)
    assert [(p.label, p.exit) for p in preds] == [(p.label, p.exit) for p in fresh.predict(x, thresholds=thr)]


def test_uint8_batches_and_lists(bundle):
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(5)]
    as_list = bundle.predict(imgs, thresholds=[0.5, 0.5])
    assert isinstance(as_list, list) and len(as_list) == 5
    one = [bundle.predict(im, thresholds=[0.5, 0.5]) for im in imgs]
    assert [p.label for p in as_list] == [p.label for p in one]
    color = rng.integers(0, 256, (4, 40, 30, 3), dtype=np.uint8)  # (N, H, W, C) uint8 batch
    assert len(bundle.predict(color)) == 4


@pytest.mark.parametrize("bad, match", [
    (0, "max_batch must be a whole number >= 1"),
    (-3, "max_batch must be a whole number >= 1"),
    (2.5, "max_batch must be a whole number >= 1"),
    (True, "max_batch must be a whole number >= 1"),
])
def test_bad_max_batch(bundle, bad, match):
    with pytest.raises(ValueError, match=match):
        bundle.predict(_images(2, bundle.input_shape), max_batch=bad)


def test_bad_batches(bundle):
    x = _images(2, bundle.input_shape)
    with pytest.raises(InputError, match="empty batch"):
        bundle.predict(x[:0])
    with pytest.raises(InputError, match="empty list"):
        bundle.predict([])
    with pytest.raises(InputError, match="share one dtype"):
        bundle.predict([x[0], (x[1] * 10).astype(np.uint8)])
    with pytest.raises(InputError, match="preprocessed images must be float32 of shape"):
        bundle.predict([x[0], x[1][:, :20]])


def test_lists_of_preprocessed_and_of_any_size(bundle):
    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 256, (28 + 4 * k, 28 + k, 3), dtype=np.uint8) for k in range(4)]  # sizes differ
    preds = bundle.predict(imgs, thresholds=[0.5, 0.5])
    assert [p.label for p in preds] == [bundle.predict(im, thresholds=[0.5, 0.5]).label for im in imgs]
    pre = [bundle.preprocess(im) for im in imgs]  # (1, C, H, W) each, as bundle.preprocess returns
    assert [p.label for p in bundle.predict(pre, thresholds=[0.5, 0.5])] == [p.label for p in preds]
    assert len(bundle.predict([p[0] for p in pre])) == 4  # (C, H, W) each


def test_deadline_runs_one_image_per_call(bundle):
    """A deadline is per image against per-image p90s: a batch runs one image per call and
    skips exactly what one image at a time skips."""
    x = _images(6, bundle.input_shape, seed=7)
    bundle.use_profile([1e-6, 1000.0, 1e-6])  # exit 2 "takes" 1 s: a 500 ms deadline always skips it
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    preds = bundle.predict(x, thresholds=[None, None], deadline_ms=500.0)
    assert [p.exit for p in preds] == [0] * 6 and all(p.deadline_skipped for p in preds)
    assert counters[0].batches == [1] * 6 and counters[1].batches == []


def test_a_deadline_counts_the_images_preprocessing(bundle, monkeypatch):
    """A 1080p frame took 6.7 ms to preprocess and the deadline counted only the stage calls: a frame given 2.2 ms took 8.8."""
    import time as _time

    pre = bundle.manifest.preprocess
    real = type(pre).apply
    monkeypatch.setattr(type(pre), "apply", lambda self, img: (_time.sleep(0.05), real(self, img))[1])
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    bundle.use_profile([1e-6, 30.0, 1e-6])  # exit 2 "takes" 30 ms: 50 ms of preprocessing leaves no room in 60
    p = bundle.predict(frame, thresholds=[None, None], deadline_ms=60.0)
    assert p.exit == 0 and p.deadline_skipped
    assert bundle.predict(frame, thresholds=[None, None], deadline_ms=200.0).exit == 2


def test_manifest_max_batch_round_trip_and_validation(onnx_bundle):
    d = json.loads((onnx_bundle / "manifest.json").read_text())
    assert Manifest.from_dict(d).max_batch is None
    old = {k: v for k, v in d.items() if k not in ("max_batch", "batch_note")}  # written before batching existed
    assert Manifest.from_dict(old).max_batch == 1
    for bad in (0, -1, 1.5, "64", True):
        with pytest.raises(ManifestError, match="max_batch"):
            Manifest.from_dict({**d, "max_batch": bad})
    assert Manifest.from_dict({**d, "max_batch": 16}).max_batch == 16


def test_batch_support_rules():
    from dvt_edge.export import _batch_support
    from dvt_edge.export.common import ExitArtifact
    from dvt_edge.export.targets import TARGETS

    static = [ExitArtifact("a", {"scheme": "static"})] * 3
    assert _batch_support(TARGETS["onnx"], static) == (None, "")
    mb, note = _batch_support(TARGETS["onnx"], [*static[:2], ExitArtifact("c", {"scheme": "dynamic"})])
    assert mb == 1 and "batch-mates" in note
    mb, note = _batch_support(TARGETS["executorch"], static)
    assert mb == 1 and "batch 1" in note
    assert TARGETS["ort"].batch == "dynamic" and TARGETS["coreml"].batch == "static"


def test_parity_fails_on_batched_difference():
    from dvt_edge.export.verify import check_parity
    from dvt_runtime.manifest import ExitParity, ParityReport

    def report(v):
        return ParityReport("onnxruntime", "numerical", [ExitParity(2, max_abs_diff_batched=v)])

    for v in (1e-2, float("nan")):
        probs = check_parity(report(v), "fp32")
        assert probs and "batched logits differ" in probs[0]
    assert check_parity(report(0.0), "fp32") == []
    # int8: within the artifact's own error against PyTorch (dvt_t2t_vit_12's static int8 failed every export on 1e-2)
    def q(batched, real, fixed=None):
        return ParityReport("onnxruntime", "numerical", [ExitParity(1, max_abs_diff_batched=batched, max_abs_diff_real=real,
                                                                    max_abs_diff_fixed=fixed)])

    assert check_parity(q(1e-2, 2e-2), "int8", None) == [] and check_parity(q(1e-2, 2e-2, 5.0), "int8", None) == []
    # the error on random fixed inputs (far outside calibration) loosens nothing; NaN fails
    for bad in (q(3e-2, 2e-2), q(float("nan"), 2e-2), q(1e-2, float("nan")), q(1e-2, None), q(1e-2, None, 3e-2),
                q(3e-2, 2e-2, 5.0)):
        probs = check_parity(bad, "int8", None)
        assert probs and "batched logits differ" in probs[0], bad
    assert "> 2.00e-02 (int8: the artifact's own error" in check_parity(q(3e-2, 2e-2), "int8", None)[0]
    assert check_parity(q(1e-2, 2e-2), "fp32") and check_parity(q(1e-2, 2e-2), "fp16", None)  # only int8 is loosened


def test_profile_at_batch(bundle, tmp_path):
    from dvt_runtime.profile import MIN_RUNS, LatencyProfile, ProfileError, profile_bundle

    x = _images(16, bundle.input_shape)
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    prof = profile_bundle(bundle, warmup=2, runs=MIN_RUNS, images=x, batch=8, progress=False)
    assert prof.batch == 8 and "batch 8: ms per image" in prof.format_table()
    assert set(counters[2].batches) == {8}  # every stage ran on 8 images per call
    back = LatencyProfile.load(prof.save(tmp_path / "p.json"))
    assert back.batch == 8
    d = prof.to_dict()
    for bad in (0, "8", 2.5):
        with pytest.raises(ProfileError, match="batch"):
            LatencyProfile.from_dict({**d, "batch": bad})


def test_calibrate_for_throughput(onnx_bundle, tmp_path):
    import shutil

    from dvt_runtime.calibrate import CalibrationError, calibrate
    from dvt_runtime.profile import MIN_RUNS, profile_bundle

    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    b = Bundle.open(dst)
    x = _images(64, b.input_shape, seed=4)
    y = np.argmax(b.run_exits(x)[-1], -1)
    r = calibrate(b, x, y, budget_ms=10.0, runs=MIN_RUNS, warmup=2, device_name="t", progress=False, batch=8)
    assert r.batch == 8 and r.budget_unit == "ms per image"
    assert r.chosen.measured["batch"] == 8 and r.chosen.measured["images_per_s"] > 0
    # no p90 at batch 8: the predicted one was over each image's own stages, the measured one over calls' averages (2x apart)
    from dvt_runtime.calibrate import format_result

    text = format_result(r)
    assert r.chosen.predicted["p90_ms"] is None and "no p90: each image waits for its whole call" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["predicted"], ["measured"]) and line.split()[1][0].isdigit()]
    assert len(rows) == 2 and all(row[3] == "-" for row in rows), text
    prof1 = profile_bundle(b, warmup=1, runs=MIN_RUNS, images=x, progress=False, device_name="t2")
    with pytest.raises(CalibrationError, match="batch 1, not 8"):
        calibrate(b, x, y, budget_ms=10.0, profile=prof1, device_name="t2", progress=False, batch=8)


def test_bench_throughput_rows(bundle):
    from dvt_edge.bench import throughput
    from dvt_edge.bench_report import throughput_markdown

    x = _images(32, bundle.input_shape, seed=5)
    y = np.argmax(bundle.run_exits(x)[-1], -1)
    thr = _mixed_thresholds(bundle, x)
    rows = throughput(bundle, x, y, thr, [1, 8, 64])
    assert [r["batch"] for r in rows] == [1, 8, 64]
    assert "error" in rows[2]  # more than the images there are
    for r in rows[:2]:
        assert r["static_accuracy"] == 100.0  # labels are the last exit's own answers
        assert r["exit_fractions"][0] > 0 and abs(sum(r["exit_fractions"]) - 1) < 1e-9
        assert r["static_images_per_s"] > 0 and r["dynamic_images_per_s"] > 0
        assert r["rounds"] == 3 and r["dynamic_images_per_s"] == float(np.median(r["dynamic_images_per_s_rounds"]))
        assert np.isfinite(r["dynamic_vs_one_by_one"]) and r["dynamic_vs_one_by_one"] > 0
    assert rows[0]["dynamic_vs_one_by_one"] == 1.0  # each round's batch-1 pass against itself
    assert [r["batch"] for r in throughput(bundle, x, y, thr, [1, 8, 8, 1], rounds=1)] == [1, 8]  # repeats measured once
    with pytest.raises(ValueError, match="rounds"):
        throughput(bundle, x, y, thr, [1], rounds=0)
    md = "\n".join(throughput_markdown({"threads": 1, "rows": [{"target": "onnx", "precision": "fp32", "status": "ok",
                                                              "throughput": {"thresholds": thr, "max_batch": None, "rows": rows}}]}))
    assert "| 8 |" in md and "only 32 images" in md and "medians of 3 interleaved rounds" in md


@pytest.mark.parametrize("key", ["cifar10", "fashion-mnist"])
def test_reference_models_batch_equals_one_by_one(key, tmp_path):
    """On the published references and their own evaluation images: identical labels and exits,
    batched (one call per stage) and one image at a time, at the bundle's default thresholds."""
    from dvt_edge.data import default_data, load_dataset
    from dvt_edge.export import export_bundle
    from dvt_edge.references import REFERENCES

    ref = REFERENCES[key]
    r = export_bundle(str(ref.checkpoint), "onnx", "fp32", out=str(tmp_path / "b"), verify_n=128, progress=False)
    assert r.manifest.max_batch is None and r.manifest.parity.batch_checked == 64
    b = Bundle.open(r.path)
    model = r.manifest
    ds = load_dataset(ref.eval_data or default_data(model.model), "val", preprocess=model.preprocess)
    x, _ = ds.arrays(256, seed=3, progress=False)
    thr = b.default_thresholds()
    assert thr is not None and any(t is not None for t in thr)
    batched = b.predict(x, thresholds=thr)
    one = [b.predict(x[i], thresholds=thr) for i in range(len(x))]
    assert [(p.label, p.exit) for p in batched] == [(p.label, p.exit) for p in one]
    assert len({p.exit for p in one}) == b.num_exits  # images leave at every exit


def test_batch_calibration_never_replaces_the_batch_one_file(onnx_bundle, tmp_path):
    """A throughput calibration (batch 8) goes to <device>-batch8.json; the camera path keeps its batch-1 file,
    and a file of another batch size is refused where it would be used one frame at a time."""
    import shutil

    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.calibration import CalibrationError
    from dvt_runtime.profile import MIN_RUNS

    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    b = Bundle.open(dst)
    x = _images(32, b.input_shape, seed=6)
    y = np.argmax(b.run_exits(x)[-1], -1)
    one = calibrate(b, x, y, budget_ms=10.0, runs=MIN_RUNS, warmup=2, device_name="d", progress=False)
    before = (dst / "calibration" / "d.json").read_bytes()
    calibrate(b, x, y, budget_ms=10.0, runs=MIN_RUNS, warmup=2, device_name="d", progress=False, batch=8)
    assert (dst / "calibration" / "d.json").read_bytes() == before and (dst / "calibration" / "d-batch8.json").is_file()
    assert Bundle.open(dst, device_name="d").calibration.batch == one.batch == 1
    assert Bundle.open(dst).use_calibration("d", batch=8).batch == 8
    shutil.copy(dst / "calibration" / "d-batch8.json", dst / "calibration" / "d.json")  # an older runtime wrote it there
    with pytest.raises(CalibrationError, match="calibrated at batch 8, not 1"):
        Bundle.open(dst, device_name="d")


def test_calibration_summary_compares_the_budgets_own_metric():
    """A p90 budget is checked against the measured p90 (the summary compared the mean, hiding a 52% overrun)."""
    from types import SimpleNamespace

    from dvt_runtime.calibrate import _budget_line

    m = {"mean_ms": 0.939, "p50_ms": 0.5, "p90_ms": 2.285}
    line = _budget_line(SimpleNamespace(metric="p90", budget_ms=1.5, n_holdout=100, headroom=0.0), m)
    assert "measured p90 2.285 ms is +52.3% vs the p90 budget" in line and "WARNING: over the budget" in line
    assert "WARNING" not in _budget_line(SimpleNamespace(metric="mean", budget_ms=1.5, n_holdout=100, headroom=0.0), m)
    assert "WARNING" in _budget_line(SimpleNamespace(metric="mean", budget_ms=1.5, n_holdout=100, headroom=0.0), {**m, "mean_ms": float("nan")})
    assert "not recorded" in _budget_line(SimpleNamespace(metric="p75", budget_ms=1.5, n_holdout=100, headroom=0.0), m)


def test_a_calibration_on_a_given_profile_says_when_its_prediction_is_over_budget():
    """With --profile (a phone's timings) nothing is measured here: a prediction 5.5% over the budget passed unsaid."""
    from types import SimpleNamespace

    from dvt_runtime.calibrate import format_result

    predicted = {"accuracy": 84.0, "mean_ms": 1.055, "p90_ms": 1.4, "exit_fractions": [0.5, 0.3, 0.2]}
    r = SimpleNamespace(chosen=SimpleNamespace(predicted=predicted, measured=None, thresholds=[0.9, 0.8, None]),
                        bundle={"model": "m", "target": "onnx", "precision": "fp32"}, device="phone", metric="mean", budget_ms=1.0,
                        batch=1, algorithm="exact", profile_source="given (--profile)", n_holdout=100, note="", headroom=0.0,
                        profile={"stages": [{"median": 0.3, "p90": 0.4}] * 3})
    text = format_result(r)
    assert "predicted mean 1.055 ms is +5.5% vs the mean budget" in text and "WARNING: over the budget on the holdout images (predicted)" in text
    assert "accuracy on 100 holdout images: 95% interval 75.58-89.90% (Wilson)" in text  # calibrate printed a bare accuracy
    r.budget_ms = 1.1
    assert "WARNING" not in format_result(r)


def test_the_batch_said_to_fit_counts_the_inputs_it_would_hold(bundle, monkeypatch):
    """Inputs grow with the batch: the suggestion subtracted the requested batch's inputs from the memory available, so
    any batch whose inputs alone exceeded it was told "at most 1" (20,000 was told 8480, 5,000,000 was told 1)."""
    import re

    import dvt_runtime.device as D

    monkeypatch.setattr(D, "_CHECKED", {})
    per = D.check_batch_memory(bundle, 1000)["mb_per_image"]
    monkeypatch.setattr(D, "_CHECKED", {})
    monkeypatch.setattr(D, "available_memory_mb", lambda: 1000 * D.MEMORY_MARGIN * per)  # calls of 1000, no inputs: fit exactly
    held = lambda b: b * D.MEMORY_MARGIN * per  # inputs as large as the calls' growth: 500 fit
    with pytest.raises(D.BatchMemoryError) as e:
        D.check_batch_memory(bundle, 10 ** 6, held_mb=held)
    fits = int(re.search(r"at most (\d+)$", str(e.value)).group(1))
    assert fits in (499, 500), str(e.value)  # (the per-image figure is rounded)
    assert D.check_batch_memory(bundle, fits, held_mb=held) is not None  # and it passes


def test_a_batch_that_would_not_fit_is_refused_before_it_runs(bundle, onnx_bundle, monkeypatch, capsys):
    """A profile, calibration or throughput run whose stage calls would outgrow the available memory (ONNX Runtime's
    arena keeps what the largest call needed: the CIFAR reference at batch 4000 grew to 10 GB) is refused before its
    first call, with the batch that fits; one that takes most of it is a warning."""
    import dvt_runtime.device as D
    from dvt_edge.bench import throughput
    from dvt_edge.bench_match import never_stop
    from dvt_runtime.calibrate import measure_cascade
    from dvt_runtime.profile import MIN_RUNS, main, profile_bundle

    assert D.check_batch_memory(bundle, D.MEMORY_PROBE[-1]) is None  # small calls: nothing is measured
    est = D.check_batch_memory(bundle, 1000)  # measured in a fresh process
    assert est["images_per_call"] == 1000 and est["mb_per_image"] > 0 and np.isfinite(est["estimated_mb"])
    assert est["estimated_mb"] == pytest.approx(D.MEMORY_MARGIN * est["mb_per_image"] * 1000, rel=0.05)
    monkeypatch.setattr(D, "available_memory_mb", lambda: est["estimated_mb"] / 2)
    # a batch that passed and ran is not refused when checked again: its arena is already held (counted once)
    again = D.check_batch_memory(bundle, 1000)
    assert again["estimated_mb"] == est["estimated_mb"] and D.check_batch_memory(bundle, 500)["images_per_call"] == 500
    with pytest.raises(D.BatchMemoryError, match="batch 3000"):  # what the larger batch adds is still checked
        D.check_batch_memory(bundle, 3000)
    monkeypatch.setattr(D, "_CHECKED", {})  # a fresh process: nothing held yet
    counters = [CountingSession(s) for s in bundle.sessions]
    bundle.sessions = counters
    with pytest.raises(D.BatchMemoryError, match=r"^batch 1000: stage calls of 1000 images need about .* use a batch of at most \d+$"):
        profile_bundle(bundle, runs=MIN_RUNS, warmup=1, batch=1000, progress=False)
    x = _images(1000, bundle.input_shape, seed=6)
    with pytest.raises(D.BatchMemoryError, match="batch 1000"):
        measure_cascade(bundle, x, np.zeros(1000, np.int64), never_stop(bundle.num_exits), batch=1000)
    assert all(c.batches == [] for c in counters)  # refused before any call
    rows = throughput(bundle, x[:64], np.zeros(64, np.int64), never_stop(bundle.num_exits), [1, 64], rounds=1)
    assert "error" not in rows[0] and "error" not in rows[1]  # 64 images per call fit
    monkeypatch.setattr(D, "available_memory_mb", lambda: D.MEMORY_MARGIN * est["mb_per_image"] * 32)
    monkeypatch.setattr(D, "_CHECKED", {})  # a fresh process again: batch 64 has not run in it
    rows = throughput(bundle, x[:64], np.zeros(64, np.int64), never_stop(bundle.num_exits), [1, 64], rounds=1)
    assert "error" not in rows[0] and "batch 64: stage calls of 64 images" in rows[1]["error"]
    assert main(["--bundle", str(onnx_bundle), "--batch", "1000", "--runs", str(MIN_RUNS), "--no-progress"]) == 2
    assert "use a --batch of at most" in capsys.readouterr().err
    monkeypatch.setattr(D, "available_memory_mb", lambda: est["estimated_mb"] * 1.5)
    with pytest.warns(UserWarning, match="other programs may be pushed out of memory"):
        assert D.check_batch_memory(bundle, 1000, "--batch")["available_mb"] == est["estimated_mb"] * 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per bundle and batch (the profile CLI checks, then the profiler)
        D.check_batch_memory(bundle, 1000, "--batch")


def test_a_percentile_budget_at_batch_n_is_refused_and_a_short_last_call_weighs_its_images_only(bundle, monkeypatch):
    """At --batch N the search priced each image's own stages for a p90 while every image of a call waits for the call:
    refused before anything runs. A 130-image holdout at batch 64 is calls of 64, 64 and 2 images, and the last call's
    per-image time counted as much as a full call's (mean 0.472 ms/image reported for 0.15 ms/image)."""
    from dvt_runtime.calibrate import calibrate
    from dvt_runtime.calibration import CalibrationError

    b = bundle
    x, y = np.zeros((8, *b.input_shape), np.float32), np.zeros(8, int)
    with pytest.raises(CalibrationError, match=r"--metric p90 with --batch 8: a percentile budget is one image's latency.*--metric mean"):
        calibrate(b, x, y, budget_ms=10.0, metric="p90", batch=8, device_name="d", progress=False)

    class P:
        exit, label = 0, 0

    class Slow:  # a call costs 2 ms + 0.1 ms per image
        def predict(self, xs, thresholds=None, max_batch=None):
            return [P()] * len(xs)

    import dvt_runtime.measure as Me  # the cascade's timing (moved out of calibrate)

    clock = iter(np.cumsum([0.0] + [0.0, 8.4e-3, 0.0, 8.4e-3, 0.0, 2.2e-3, 0.0]))
    monkeypatch.setattr(Me.time, "perf_counter", lambda: float(next(clock)))
    ms, exits, correct, _ = Me._timed_calls(Slow(), np.zeros((130, 1)), np.zeros(130, int), None, 64)
    s = Me._summary(1, ms, exits, correct, 1.0, 64)
    assert len(ms) == 130 and s["mean_ms"] == pytest.approx(19.0 / 130, rel=1e-6), s
