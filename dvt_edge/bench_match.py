"""The benchmark's matched-accuracy rule: thresholds chosen on one half of the images (the cheapest point at
least as accurate as the last exit there), the cascade and the last exit alone measured on the other half, and
the same rule replayed on other random halvings to say how far one split can be trusted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from dvt_edge.bench_report import MATCH_POINTS
from dvt_runtime.stats import at_chance

if TYPE_CHECKING:
    from dvt_runtime.search import ExitOutputs

# Accuracies are multiples of 100/n computed two ways (search: 100*k/n; measurement: mean*100), which differ in
# the last bit: comparisons of them allow this much, far below one image's 100/n (NaN still fails them).
ACC_EPS = 1e-9
MATCH_BLOCKS = 10  # the matched cascade and the last exit alone are timed interleaved, in this many blocks


def _matched_point(b, f, xh: np.ndarray, yh: np.ndarray, last: dict) -> Optional[dict]:
    """Speedup over the last exit alone at matched accuracy: thresholds chosen on the calibration
    split (cheapest point at least as accurate as the last exit there), then measured on the
    holdout, where "matched" means within MATCH_POINTS of the last exit. The cascade and the last
    exit alone are timed interleaved on the same images (machine drift hits both alike); the
    speedup is the ratio of their mean latencies, with each block's ratio for its spread."""
    from dvt_runtime.calibrate import measure_interleaved

    last_cal = float(f.cal.correct[-1].mean() * 100)
    p = _cheapest_matching(f.cal, f.costs)
    if p is None:
        return None
    thr = p.to_dict()["thresholds"]
    (alone, meas), (alone_blocks, blocks) = measure_interleaved(b, xh, yh, [never_stop(b.num_exits), thr], blocks=MATCH_BLOCKS, warmup=10)
    return {"thresholds": thr, "calibration_accuracy": p.accuracy, "last_exit_calibration_accuracy": last_cal,
            **_meas(meas, None), "last_exit_mean_ms": alone["mean_ms"], "speedup_vs_last_exit": alone["mean_ms"] / meas["mean_ms"],
            "block_speedups": [a / c for a, c in zip(alone_blocks, blocks)],
            "accuracy_delta": meas["accuracy"] - last["accuracy"],
            "within_match": meas["accuracy"] >= last["accuracy"] - MATCH_POINTS - ACC_EPS,
            # weights that do not classify these images (random, or another label set) match any cascade: no claim. Judged on
            # the point estimate (a claim needs the model to classify); calibrate refuses only when even its interval's top is
            # under the bar (a refusal needs to be sure)
            "chance_accuracy": 100 / len(b.classes), "at_chance": at_chance(last["accuracy"], len(b.classes))}


def _cheapest_matching(cal, costs):
    """The benchmark's threshold rule: the cheapest point of the exact search at least as accurate as
    the last exit on ``cal`` (an ``ExitOutputs``), or None."""
    from dvt_runtime.search import search_thresholds

    last = float(cal.correct[-1].mean() * 100)
    front = search_thresholds(cal, costs, float(costs.cumulative[-1]) * (1 + 1e-9), algorithm="exact").frontier
    ok = [p for p in front if p.accuracy >= last - ACC_EPS]
    return min(ok, key=lambda p: p.mean_cost) if ok else None


HALVINGS = 20  # other random splits on which the matched-accuracy rule is replayed (predicted, not re-timed)


def matched_over_halvings(outputs: "ExitOutputs", costs, n_hold: int, n: int = HALVINGS) -> Optional[dict]:
    """How far one split can be trusted: the matched-accuracy rule on ``n`` other seeded halvings of the
    same images (``outputs``: every exit's on all of them), thresholds chosen on one part, accuracy and
    mean cost predicted on the other ``n_hold`` from the measured stage prices ``costs``; speedup = the
    last exit's price over the cascade's."""
    from dvt_runtime.search import evaluate_thresholds

    if n <= 0:
        return None
    last_price, speedups, deltas, fallbacks = float(costs.cumulative[-1]), [], [], 0
    for seed in range(1, n + 1):  # seed 0 is the measured split
        perm = np.random.default_rng(seed).permutation(outputs.n_samples)
        hold, cal = perm[:n_hold], perm[n_hold:]
        oh = outputs.take(hold)
        p = _cheapest_matching(outputs.take(cal), costs)
        if p is None or float(np.asarray(p.exit_fractions)[-1]) >= 1.0:  # nothing cheaper matched: the last exit alone runs
            # (the last exit alone is itself a matching point, so None never came: such halvings were counted unsaid)
            fallbacks += 1
            speedups.append(1.0)
            deltas.append(0.0)
            continue
        ev = evaluate_thresholds(oh, None, p.thresholds, costs)
        speedups.append(last_price / ev.mean_cost)
        deltas.append(ev.accuracy - float(oh.correct[-1].mean() * 100))
    ok = [s for s, d in zip(speedups, deltas) if d >= -MATCH_POINTS - ACC_EPS]
    return {"n": n, "n_holdout": int(n_hold), "seeds": list(range(1, n + 1)), "speedups": speedups, "accuracy_deltas": deltas, "matched": len(ok),
            "last_exit_fallbacks": fallbacks, "speedup_median": float(np.median(speedups)), "matched_speedup_median": float(np.median(ok)) if ok else None}


def never_stop(num_exits: int) -> list:
    return [None] * (num_exits - 1)


def _meas(meas: dict, budget: Optional[float]) -> dict:
    out = {"accuracy": meas["accuracy"], "measured_mean_ms": meas["mean_ms"], "measured_p90_ms": meas["p90_ms"],
           "exit_fractions": meas["exit_fractions"]}
    if budget:
        out["error_vs_budget_pct"] = 100 * (meas["mean_ms"] / budget - 1)
    return out
