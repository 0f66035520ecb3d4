"""Throughput: images/s of the static model and of the dynamic cascade per batch size (``bench --batches``)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from dvt_edge.bench_match import ACC_EPS, never_stop
from dvt_edge.bench_report import MATCH_POINTS

__all__ = ["THROUGHPUT_ROUNDS", "throughput"]

THROUGHPUT_ROUNDS = 3  # interleaved passes over every batch size; figures are medians over them


def throughput(bundle, x: np.ndarray, y: Optional[np.ndarray], thresholds: list, batches: Sequence[int],
               rounds: int = THROUGHPUT_ROUNDS) -> list[dict]:
    """Images/s of the static model (every stage, last exit answers) and of the dynamic cascade
    at ``thresholds``, ``batch`` images per ``predict`` call (the measured analog of the
    paper's Table 2). Both run on the same images in the same process (every batch size too), every batch size once per
    round, ``rounds`` rounds interleaved (machine drift hits every batch size alike; static or dynamic first,
    alternately); images/s are medians over rounds, ``speedup`` and ``dynamic_vs_one_by_one`` the medians of
    each round's ratio."""
    from dvt_runtime.calibrate import measure_cascade
    from dvt_runtime.device import BatchMemoryError

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    labelled = y is not None
    y = np.zeros(len(x), np.int64) if y is None else y  # no labels: accuracies are not reported (None)
    never = never_stop(bundle.num_exits)
    batches = list(dict.fromkeys(batches))  # a repeated size is measured (and reported) once
    runs: dict[int, list[tuple[dict, dict]]] = {bs: [] for bs in batches if bs <= len(x)}
    failed = {bs: f"only {len(x)} images to measure on" for bs in batches if bs not in runs}
    lcm = math.lcm(*runs) if runs else 1
    # every batch size on the same images: in whole calls of every size when that keeps 90% of them, else all of them (each
    # size's last call short, said in its row); it had kept whole calls of the largest, dropping up to a call's worth unsaid
    m = len(x) // lcm * lcm if len(x) // lcm * lcm >= 0.9 * len(x) else len(x)
    for rnd in range(rounds):
        order = (never, thresholds) if rnd % 2 == 0 else (thresholds, never)  # which side runs first alternates per round
        for bs in [b for b in runs if b not in failed]:
            try:  # whole calls of every size, or all the images with a short last call (row: last_call)
                pair = [measure_cascade(bundle, x[:m], y[:m], t, warmup=1, batch=bs) for t in order]
            except BatchMemoryError as e:  # checked before its first call: a batch that would not fit is a row with its error
                failed[bs] = str(e)
                continue
            runs[bs].append(tuple(pair) if rnd % 2 == 0 else (pair[1], pair[0]))
    rows = []
    for bs in batches:
        if bs in failed:
            rows.append({"batch": bs, "error": failed[bs]})
            continue
        st, dy = runs[bs][0]
        med = {k: float(np.median([r[i]["images_per_s"] for r in runs[bs]])) for i, k in enumerate(("static", "dynamic"))}
        rows.append({"batch": bs, "n": st["n"], "of": len(x), "rounds": rounds, "calls_per_stage": "one per batch" if bundle.batch_limit() >= bs else
                     f"{-(-bs // bundle.batch_limit())} per batch (max_batch {bundle.batch_limit()})",
                     "static_images_per_s": med["static"], "dynamic_images_per_s": med["dynamic"],
                     "static_images_per_s_rounds": [r[0]["images_per_s"] for r in runs[bs]],
                     "dynamic_images_per_s_rounds": [r[1]["images_per_s"] for r in runs[bs]],
                     "speedup": float(np.median([d["images_per_s"] / s_["images_per_s"] for s_, d in runs[bs]])),  # paired per round
                     "static_accuracy": st["accuracy"] if labelled else None,
                     "dynamic_accuracy": dy["accuracy"] if labelled else None, "exit_fractions": dy["exit_fractions"],
                     # this row's own images: a point matched on the holdout can miss on them (NaN: not matched)
                     "within_match": bool(dy["accuracy"] >= st["accuracy"] - MATCH_POINTS - ACC_EPS) if labelled else None,
                     "last_call": m % bs or bs})  # images in each pass's last call: bs when the images run in whole calls of every size
    if 1 in runs:  # batched vs one image per call, same thresholds, paired within each round
        for r in rows:
            if "error" not in r:
                ratios = [b[1]["images_per_s"] / o[1]["images_per_s"] for b, o in zip(runs[r["batch"]], runs[1])]
                r["dynamic_vs_one_by_one"] = float(np.median(ratios))
    return rows
