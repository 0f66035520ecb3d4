"""Statistics of latency samples: the one implementation every report uses (numpy only).

:func:`sample_stats` summarises samples (ms) for profiles, calibration results, the bench and
the webcam's session summary; :func:`drift` compares the first and last quarter of a run
(thermal throttling); :func:`check_samples` refuses what cannot be a latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any, Optional, Union

import numpy as np

__all__ = ["DRIFT_MIN_QUARTER", "DRIFT_THRESHOLD", "MAX_MS", "MIN_RUNS", "ProfileError", "check_samples", "drift", "percentile", "sample_stats", "accuracy_interval", "AT_CHANCE",
           "at_chance", "chance_bar", "majority_pct", "stratified_indices"]

AT_CHANCE = 2  # a last exit scoring under this many times chance (100 / classes) classifies nothing: thresholds and speedups on it mean nothing


def chance_bar(num_classes: int) -> float:
    """The accuracy (%) under which a model classifies nothing: :data:`AT_CHANCE` times chance, or with few classes a
    ninth of the way from chance to 100% when that is lower (under ten classes; twice chance is 100% for two): 20% for 10
    classes, 55.6% for 2, 0.2% for 1,000."""
    chance = 100 / num_classes
    return min(AT_CHANCE * chance, chance + (100 - chance) / 9)


def majority_pct(labels, correct=None) -> float:
    """The accuracy (%) of answering the labels' most frequent class every time: chance, on imbalanced labels; 0 for
    labels of fewer than two classes (one class's images are another problem: ``calnotes.few_classes``). With
    ``correct`` (each image answered right), 0 too where the answers' balanced accuracy (the mean of the classes'
    recalls) clears :func:`chance_bar` for the classes present: a good model trained with balanced class weights
    scores under the majority's share (88% and 85% of 900 / 100 images: 87.7% against 90%), yet knows every class."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    present = np.unique(labels) if labels.size and labels.min() >= 0 else np.array([], np.int64)
    if present.size < 2:
        return 0.0
    if correct is not None:
        ok = np.asarray(correct, dtype=np.float64).ravel()
        balanced = 100 * float(np.mean([ok[labels == c].mean() for c in present]))
        if balanced >= chance_bar(int(present.size)):
            return 0.0
    return float(np.bincount(labels).max() * 100 / labels.size)


def at_chance(accuracy_pct: float, num_classes: int, n: Optional[int] = None, majority: float = 0.0) -> bool:
    """Whether an accuracy (%) is under :func:`chance_bar` for ``num_classes``, or under ``majority`` (what answering
    the most frequent label every time scores: :func:`majority_pct`; a wrong class order that keeps the majority class's
    index scored 48% on labels 62% of one class, over the 41% bar of 3 classes); a NaN is. Given the ``n`` images it was
    measured on, whether even its 95% interval's upper end is (a few images say little either way)."""
    if n is not None and np.isfinite(accuracy_pct):
        accuracy_pct = accuracy_interval(accuracy_pct, n)[1]
    return not accuracy_pct >= max(chance_bar(num_classes), majority)

DRIFT_THRESHOLD = 1.15  # last-quarter / first-quarter median above this flags throttling
MIN_RUNS = 4  # timed runs a profile needs at least (the drift check judges from 4 x DRIFT_MIN_QUARTER)


class ProfileError(ValueError):
    """An invalid, malformed or incompatible latency profile (or import file, or samples)."""


def percentile(samples: Sequence[float], q: Union[float, str, Fraction]) -> float:
    """The ``q``-th percentile of latency samples as a budget reads it: the smallest sample with at least ``q``% of them at
    or below it (numpy's ``inverted_cdf``, with the rank counted exactly: ``q`` as written, so p99.9 of 1,000 samples is
    the 999th), so "p90 within 2 ms" means 90% of the calls took 2 ms or less. The threshold search prices a percentile
    budget so; numpy's default (linear) had put a measured p90 a tenth of the way from exit 1's time to exit 3's when
    exactly 10% of the images reached exit 3 (the mix a p90 search aims at), and called it over."""
    a = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if a.size == 0:
        raise ProfileError("no latency samples")
    return _ranked(a, q)


def _ranked(ordered: np.ndarray, q: Union[float, str, Fraction]) -> float:
    """:func:`percentile` of samples already sorted (non-empty)."""
    rank = math.ceil(Fraction(str(q)) * ordered.size / 100)  # str: a float as written (99.9), not its binary neighbour
    return float(ordered[min(max(rank, 1), ordered.size) - 1])


def sample_stats(samples: Sequence[float], keep_samples: bool = True) -> dict[str, Any]:
    """Summary statistics of latency samples (ms).

    Keys: ``n, mean, median, p50, p90, p99, std (population, ddof=0), min, max``
    and, with ``keep_samples``, ``samples`` (the raw values as floats). Percentiles are :func:`percentile`'s.
    Non-finite samples are refused.
    """
    a = np.asarray(samples, dtype=np.float64).ravel()
    if a.size == 0:
        raise ProfileError("no latency samples")
    if not np.all(np.isfinite(a)):
        raise ProfileError(f"latency samples must be finite, got {int((~np.isfinite(a)).sum())} non-finite value(s)")
    ordered = np.sort(a)  # once, for the median and the three percentiles
    out: dict[str, Any] = {
        "n": int(a.size),
        "mean": float(a.mean()),
        "median": float(np.median(ordered)),
        "p50": _ranked(ordered, 50),  # the median's lower middle for an even count, as a p50 budget is priced
        "p90": _ranked(ordered, 90),
        "p99": _ranked(ordered, 99),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }
    if keep_samples:
        out["samples"] = [float(v) for v in a]
    return out


DRIFT_MIN_QUARTER = 3  # samples in a quarter for the drift check: a median of 3 is not one slow run (12 runs or more)


def drift(samples: np.ndarray) -> dict[str, Optional[float]]:
    """Median of the first vs the last quarter of the samples (in measurement order); none under
    :data:`DRIFT_MIN_QUARTER` samples a quarter (``profile --runs 4`` compared single runs: one slow last run of four
    warned of throttling)."""
    q = samples.size // 4
    if q < DRIFT_MIN_QUARTER:
        return {"first_quarter_median": None, "last_quarter_median": None, "ratio": None}
    first, last = float(np.median(samples[:q])), float(np.median(samples[-q:]))
    return {"first_quarter_median": first, "last_quarter_median": last, "ratio": (last / first) if first > 0 else None}


MAX_MS = 1e7  # the longest latency a sample may hold: one image in almost 3 hours is a unit mistake, not a device


def check_samples(samples: Sequence[float], what: str) -> np.ndarray:
    """``samples`` as a flat float64 array; ProfileError unless finite, non-negative numbers."""
    if isinstance(samples, (str, bytes, dict)) or not isinstance(samples, Iterable):
        raise ProfileError(f"{what}: expected a sequence of latency samples (ms), got {type(samples).__name__}")
    if not isinstance(samples, np.ndarray):
        samples = list(samples)  # a generator is read once, here
        if any(isinstance(v, (str, bytes)) for v in samples):
            raise ProfileError(f"{what}: latency samples must be numbers (ms), not text")
    elif samples.dtype.kind not in "iuf":
        raise ProfileError(f"{what}: latency samples must be numbers (ms), got an array of {samples.dtype}")
    if any(isinstance(v, (bool, np.bool_)) for v in samples):
        raise ProfileError(f"{what}: latency samples must be numbers (ms), not true/false")
    try:
        a = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError(f"{what}: latency samples must be numbers (ms)") from None
    if a.ndim != 1:
        raise ProfileError(f"{what}: expected a flat sequence of latency samples, got shape {a.shape}")
    if a.size == 0:
        raise ProfileError(f"{what} has no latency samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ProfileError(f"{what}: latency samples must be finite and non-negative")
    if np.any(a > MAX_MS):  # 1e308 ms passed here and overflowed the sums into "30 non-finite value(s)" it did not hold
        raise ProfileError(f"{what}: a latency sample of {float(a.max()):.4g} ms is over {MAX_MS:g} ms (almost 3 hours): not "
                           "milliseconds? (seconds x 1000, microseconds / 1000)")
    return a


def accuracy_interval(accuracy_pct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy in percent measured on ``n`` images, in percent:
    where the model's own accuracy lies, at 95% confidence, given this sample (0.2 points is 2 images of 1,000). It is
    no range for another sample's score: that differs from this one by about 1.4 times as much (a second sample of as
    many images falls inside it about 84% of the time)."""
    if n < 1 or not np.isfinite(accuracy_pct) or not 0 <= accuracy_pct <= 100:
        raise ValueError(f"an accuracy in [0, 100] on at least one image is needed, got {accuracy_pct!r} on {n}")
    p = accuracy_pct / 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(100 * max(0.0, centre - half)), float(100 * min(1.0, centre + half))


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified random subset of ``n`` samples, in random order.

    Each class gets ``n`` times its share (largest remainders get the leftovers), so a
    subset of class-sorted data (image folders) still covers every class; the order is
    shuffled so that any prefix or half of the subset is a random sample too. (``dvt_edge.imageset.stratified_subset``
    for the host's subsets; a calibration's holdout here.)
    """
    labels = np.asarray(labels)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"a subset size (--limit, --n, --train-limit, --val-limit) must be a positive whole number; got {n!r}")
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(labels))
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    if n < len(classes):  # fewer samples than classes: which classes appear follows the seed (ties broke to the first classes)
        order = np.lexsort((np.random.default_rng([int(seed), 1]).random(len(classes)), -(exact - take)))
    take[order[: n - int(take.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(picked))
