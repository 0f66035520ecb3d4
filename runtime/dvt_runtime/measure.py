"""Measuring the cascade through ``predict`` on this host: every exit's outputs, timed runs of threshold settings
(one after another, or interleaved against drift), and ``predict``'s own overhead per exit, which the latency search
adds to the profiled stage costs."""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np

from dvt_runtime.bundle import Bundle, softmax
from dvt_runtime.console import progress as _bar
from dvt_runtime.device import check_batch_memory, contention_since, contention_snapshot
from dvt_runtime.latency import LatencyProfile, check_batch
from dvt_runtime.search import ExitOutputs, StageCosts, check_metric
from dvt_runtime.stats import MAX_MS, ProfileError, percentile, sample_stats

__all__ = ["exit_outputs", "measure_cascade", "measure_interleaved", "cascade_overhead_ms", "with_overhead"]


def exit_outputs(bundle: Bundle, x: np.ndarray, y: np.ndarray, progress: bool = False, chunk: int = 16) -> ExitOutputs:
    """Every exit's max softmax and class on each image, from the bundle's own artifacts, with the labels ``y``. Only those
    are kept, chunk by chunk (every class's softmax of 50,000 images x 1,000 classes x 3 exits was 1.2 GB in float64)."""
    starts = _bar(range(0, len(x), chunk), desc="run exits", unit="batch", enabled=progress)
    conf, pred = [], []
    for s in starts:
        p = [softmax(o.astype(np.float64)) for o in bundle.run_exits(x[s : s + chunk])]  # E arrays (n, classes)
        conf.append(np.stack([q.max(-1) for q in p]))  # (E, n)
        pred.append(np.stack([q.argmax(-1) for q in p]))
    return ExitOutputs.from_predictions(np.concatenate(conf, axis=1), np.concatenate(pred, axis=1), np.asarray(y))


def _timed_calls(bundle: Bundle, x: np.ndarray, y: np.ndarray, thresholds, batch: int) -> tuple[list, list, list, float]:
    """``predict`` on ``x`` in calls of ``batch`` images: per-image ms, exit and correctness, and the wall seconds."""
    ms, exits, correct = [], [], []
    t_all = time.perf_counter()
    for s in range(0, len(x), batch):
        t0 = time.perf_counter()
        preds = bundle.predict(x[s : s + batch], thresholds=thresholds, max_batch=batch)  # one call per stage, as profiled
        ms += [(time.perf_counter() - t0) * 1e3 / len(preds)] * len(preds)  # per image: a short last call weighs its images only
        exits += [p.exit for p in preds]
        correct += [p.label == t for p, t in zip(preds, y[s : s + batch])]
    return ms, exits, correct, time.perf_counter() - t_all


def _summary(num_exits: int, ms: list, exits: list, correct: list, wall: float, batch: int, metric: str = "mean") -> dict:
    st = sample_stats(ms, keep_samples=False)
    out = {
        "accuracy": float(np.mean(correct) * 100), "mean_ms": st["mean"], "p50_ms": st["p50"],
        "p90_ms": st["p90"], "p99_ms": st["p99"], "n": len(exits),
        "exit_fractions": (np.bincount(exits, minlength=num_exits) / len(exits)).tolist(),
        "batch": int(batch), "images_per_s": float(len(exits) / wall),
    }
    if metric != "mean" and f"{metric}_ms" not in out:  # the budget's own percentile (p95, p99.9, ...)
        out[f"{metric}_ms"] = percentile(ms, metric[1:])
    return out


def measure_cascade(bundle: Bundle, x: np.ndarray, y: np.ndarray, thresholds, warmup: int = 20, batch: int = 1,
                    metric: str = "mean") -> dict:
    """Run the real cascade on ``batch`` images per predict call; wall-clock latency.

    ``mean_ms`` etc. are per call at batch 1 and per image (call / batch) above it, so that
    a throughput budget (ms per image at batch N) compares with them; ``images_per_s``
    is the throughput. A percentile ``metric`` (a budget's) is recorded too, as ``<metric>_ms``.
    """
    batch = check_batch(batch)
    check_metric(metric)
    check_batch_memory(bundle, batch)  # refuses, before the first call, a batch that would not fit
    for s in range(0, min(warmup, -(-len(x) // batch)) * batch, batch):
        bundle.predict(x[s : s + batch], thresholds=thresholds, max_batch=batch)
    snap = contention_snapshot()  # a busy CPU makes every figure below this host's under that load
    out = _summary(bundle.num_exits, *_timed_calls(bundle, x, y, thresholds, batch), batch, metric)
    return {**out, "contention": contention_since(snap)}


def measure_interleaved(bundle: Bundle, x: np.ndarray, y: np.ndarray, configs: Sequence, blocks: int = 10,
                        warmup: int = 20) -> tuple[list[dict], list[list[float]]]:
    """Several threshold settings measured as :func:`measure_cascade` (batch 1), but interleaved:
    ``x`` is cut into ``blocks`` parts and each part runs under every setting in turn (the order
    rotating per part), so that drift of the machine (a busy neighbour, clocks) hits every
    setting alike. Returns one summary per setting and, per setting, each block's mean ms."""
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or blocks < 1:
        raise ValueError(f"blocks must be a whole number >= 1, got {blocks!r}")
    if not configs:
        raise ValueError("configs is empty: pass at least one thresholds setting")
    for thr in configs:
        for s in range(min(warmup, len(x))):
            bundle.predict(x[s : s + 1], thresholds=thr)
    parts = [p for p in np.array_split(np.arange(len(x)), min(int(blocks), len(x))) if len(p)]
    per: list[list[tuple]] = [[] for _ in configs]  # per setting: each block's (ms, exits, correct, wall)
    for b, idx in enumerate(parts):
        for k in np.roll(np.arange(len(configs)), -b):
            per[k].append(_timed_calls(bundle, x[idx], y[idx], configs[k], 1))
    merged = [[sum((c[i] for c in calls), [] if i < 3 else 0.0) for i in range(4)] for calls in per]
    return [_summary(bundle.num_exits, *m, 1) for m in merged], [[float(np.mean(c[0])) for c in calls] for calls in per]


def cascade_overhead_ms(bundle: Bundle, x: np.ndarray, n: int = 60, batch: int = 1) -> list[float]:
    """Per-image time of ``predict`` beyond its stage calls (input checks, each exit's softmax, handing the reuse tensors
    on, bookkeeping), for an image stopping at each exit: one figure per exit, never less than the exit before.

    Measured with every sample stopping at that exit, ``batch`` images per call; median over ``n`` calls. It grows with
    the exits passed (about 0.1 / 0.15 / 0.2 ms on the CIFAR reference's ONNX fp32 bundle, 1 thread, 2-core VM): priced at
    exit 1's alone, calibrations had predicted thresholds that send images deep about 9% faster than they ran."""
    E = bundle.num_exits
    per_call = min(batch, bundle.batch_limit())  # samples per stage call
    calls = max(8, n // batch)  # a median over as many images, not as many calls: a batch of 32 at 224 px takes seconds
    out = []
    for k in range(E):
        thr = [None] * k + [0.0] * (E - 1 - k)  # every sample stops at exit k + 1
        over = []
        for i in range(calls + 5):
            start = (i * batch) % max(1, len(x) - batch + 1)
            t0 = time.perf_counter()
            preds = bundle.predict(x[start : start + batch], thresholds=thr, max_batch=batch)
            wall = (time.perf_counter() - t0) * 1e3
            stages = sum(sum(preds[j].stage_ms) for j in range(0, len(preds), per_call))  # one sample per stage call
            if i >= 5:  # warm-up
                over.append(max(0.0, wall - stages) / len(preds))
        out.append(float(np.median(over)))
    return np.maximum.accumulate(out).tolist()


NO_OVERHEAD = ("priced without predict's own per-image cost (the profile does not record it: an ETDump or a CSV times the "
               "stage programs alone; a board running this runtime: profile it there with python -m dvt_runtime.profile, which "
               "records it)")


def recorded_overhead(profile: LatencyProfile, n_exits: int) -> Optional[list[float]]:
    """``predict``'s own per-image cost of stopping at each exit, as ``python -m dvt_runtime.profile`` measures it beside the
    stage latencies on the device (``settings.predict_overhead_ms``); None for a profile without it (an ETDump, a CSV, an
    older profile), which prices the stage programs alone."""
    v = profile.settings.get("predict_overhead_ms") if isinstance(profile.settings, dict) else None
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == n_exits and all(isinstance(o, (int, float)) and not isinstance(o, bool)
                                                                and math.isfinite(o) and 0 <= o <= MAX_MS for o in v)):
        raise ProfileError(f"the profile's settings.predict_overhead_ms must list {n_exits} non-negative ms (at most {MAX_MS:g}), got {v!r}: "
                           "profile the bundle again")
    return [float(o) for o in v]


def with_overhead(costs: StageCosts, overhead_ms: Sequence[float]) -> StageCosts:
    """Stage costs with predict's per-image overhead of stopping at each exit (:func:`cascade_overhead_ms`): added to
    every exit's stopping stream, and to the stages as the step from one exit's overhead to the next (stage 1 takes
    exit 1's: every sample runs it)."""
    o = np.broadcast_to(np.asarray(overhead_ms, dtype=float), (len(costs.mean),)) if np.ndim(overhead_ms) == 0 else \
        np.asarray(overhead_ms, dtype=float)  # one figure: every exit's (the earlier signature)
    if o.shape != (len(costs.mean),) or not np.all(np.isfinite(o)) or np.any(o < 0):
        raise ValueError(f"overhead_ms must be one non-negative ms per exit ({len(costs.mean)}) or one for all, got {overhead_ms!r}")
    o = np.maximum.accumulate(o)  # a later exit never costs predict less than an earlier one
    step = np.diff(o, prepend=0.0)  # what going on to exit k + 1 adds to predict's own cost
    stopping = None if costs.stopping is None else [np.asarray(s) + o[k] for k, s in enumerate(costs.stopping)]
    if costs.samples is not None:
        samples = [np.asarray(s) + step[k] for k, s in enumerate(costs.samples)]
        return StageCosts.from_samples(samples, unit=costs.unit, stopping=stopping)
    return StageCosts(mean=np.asarray(costs.mean, dtype=float) + step, unit=costs.unit, stopping=stopping)
