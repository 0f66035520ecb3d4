"""Early-exit threshold search for Dynamic Vision Transformers (numpy + stdlib only).

A DVT is a cascade of ``E`` exits. A sample runs exit 1; if the max softmax probability
(confidence) of exit ``e`` is ``>= eta_e`` it stops there, otherwise it goes on to exit
``e + 1``; the last exit always answers. Stage ``e`` costs ``c_e`` (ms or GFLOPs), so a
sample stopping at exit ``e`` costs ``c_1 + ... + c_e``.

This module chooses the thresholds ``eta`` on a validation set to maximise accuracy
subject to a budget on

* ``metric="mean"``: the expected cost (mean over the validation set), or
* ``metric="pNN"`` (``"p90"``, ``"p99"``, ``"p99.9"``...): a percentile of the per-request
  latency, simulated from raw per-stage latency samples (a latency profile). The tail
  latency of a mixture of exits is *not* the mixture of the per-exit percentiles, hence
  the simulation (see :func:`evaluate_thresholds`).

Three algorithms (:data:`ALGORITHMS`):

* ``"exact"``: exhaustive search over every threshold that matters (the observed
  confidences, plus ``+inf`` = "never stop here"), vectorised; exact for small ``E``.
* ``"ga"``: the genetic algorithm of the DVT paper; works for any ``E``.
* ``"sweep"``: the exit-distribution sweep of the MSDNet/DVT reference code
  (``dynamic_eval_find_threshold``), which also reproduces the paper's budget curve.

Typical use::

    out = ExitOutputs.from_probs(probs, labels)            # probs: (E, N, C) softmax
    costs = StageCosts.from_samples(per_stage_latency_ms)   # or StageCosts.from_cumulative(gflops)
    res = search_thresholds(out, costs, budget=12.0, metric="p90")
    res.best.thresholds, res.best.accuracy, res.to_dict()
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "ALGORITHMS",
    "Evaluation",
    "ExitOutputs",
    "SearchResult",
    "StageCosts",
    "budget_curve",
    "class_losses",
    "evaluate_thresholds",
    "exit_indices",
    "frontier_table",
    "pareto_frontier",
    "search_thresholds",
    "sweep_thresholds",
    "thresholds_from_list",
    "unanswered_classes",
]

ALGORITHMS = ("exact", "ga", "sweep")

DEFAULT_N_SIM = 20_000  # simulated latency draws per exit for percentile metrics
DEFAULT_MAX_CANDIDATES = 2048  # "exact": candidate thresholds per exit (exact below this many unique confidences)
_EXACT_OUTER_ROWS = 4096  # "exact" with E > 3: default cap on the number of outer threshold combinations
_EXACT_MAX_WORK = 2e10  # "exact": refuse searches needing more than this many sample-row operations
_ALWAYS = -np.finfo(np.float64).max  # finite stand-in for "always stop here" on a non-last exit


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExitOutputs:
    """Validation-set outputs of every exit, reduced to what threshold search needs.

    ``confidences``: (E, N) max softmax probability of each exit for each sample.
    ``predictions``: (E, N) predicted class of each exit. ``labels``: (N,) ground truth.
    ``correct`` (computed): (E, N) bool, ``predictions == labels``.
    Build it with :meth:`from_probs` or :meth:`from_predictions`.
    """

    confidences: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    correct: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        conf = _check_confidences(self.confidences)
        pred = np.asarray(self.predictions)
        if self.labels is None:
            raise ValueError("labels are missing: pass the (N,) ground-truth labels of the validation set")
        labels = np.asarray(self.labels)
        n = conf.shape[1]
        if pred.shape != conf.shape:
            raise ValueError(f"predictions shape {pred.shape} does not match confidences shape {conf.shape}")
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels length mismatch: got labels of shape {labels.shape} for {n} samples; pass one label per sample")
        object.__setattr__(self, "confidences", conf)
        object.__setattr__(self, "predictions", pred)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "correct", pred == labels[None, :])

    @classmethod
    def from_probs(cls, probs: np.ndarray, labels: Optional[np.ndarray]) -> ExitOutputs:
        """From softmax outputs ``probs`` (E, N, C): confidence = max over C, prediction = argmax."""
        probs = np.asarray(probs)
        if probs.ndim != 3:
            raise ValueError(
                f"probs must be a 3-D array (exits E, samples N, classes C); got shape {probs.shape}. "
                "For precomputed confidences pass a (confidences, predictions) tuple or ExitOutputs.from_predictions(...)"
            )
        if labels is None:
            raise ValueError("labels are missing: pass the (N,) ground-truth labels of the validation set")
        if probs.shape[1] == 0:
            raise ValueError("empty validation set: probs have 0 samples; pass at least one sample")
        if probs.shape[2] == 0:
            raise ValueError("probs have 0 classes: the last axis must hold the softmax over classes")
        return cls(probs.max(axis=2), probs.argmax(axis=2), labels)

    @classmethod
    def from_predictions(cls, confidences: np.ndarray, predictions: np.ndarray, labels: Optional[np.ndarray]) -> ExitOutputs:
        """From precomputed confidences (E, N) and predictions (E, N)."""
        return cls(confidences, predictions, labels)

    def take(self, idx: np.ndarray) -> ExitOutputs:
        """The outputs of the samples ``idx`` (in that order)."""
        return ExitOutputs(self.confidences[:, idx], self.predictions[:, idx], self.labels[idx])

    @property
    def n_exits(self) -> int:
        return int(self.confidences.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.confidences.shape[1])


OutputsLike = Union[ExitOutputs, np.ndarray, tuple]


def _as_outputs(outputs: OutputsLike, labels: Optional[np.ndarray] = None) -> ExitOutputs:
    """Accept :class:`ExitOutputs`, probs (E, N, C) + labels, or a tuple (conf, pred[, labels])."""
    if isinstance(outputs, ExitOutputs):
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != outputs.labels.shape or not np.array_equal(labels, outputs.labels):
                raise ValueError("labels differ from the labels stored in the ExitOutputs; pass labels=None")
        return outputs
    if isinstance(outputs, tuple):
        if len(outputs) == 2:
            return ExitOutputs.from_predictions(outputs[0], outputs[1], labels)
        if len(outputs) == 3:
            if labels is not None:
                raise ValueError("labels given twice: in the (confidences, predictions, labels) tuple and as an argument")
            return ExitOutputs.from_predictions(*outputs)
        raise ValueError(
            f"a tuple of outputs must be (confidences, predictions) or (confidences, predictions, labels); got {len(outputs)} items"
        )
    return ExitOutputs.from_probs(outputs, labels)


def _confidences_of(outputs: OutputsLike) -> np.ndarray:
    """(E, N) confidences from any accepted outputs form (labels not needed)."""
    if isinstance(outputs, ExitOutputs):
        return outputs.confidences
    if isinstance(outputs, tuple):
        return _check_confidences(outputs[0])
    arr = np.asarray(outputs)
    if arr.ndim != 3:
        raise ValueError(f"probs must be a 3-D array (exits E, samples N, classes C); got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"empty validation set or no classes: probs have shape {arr.shape}")
    return _check_confidences(arr.max(axis=2))


def _check_confidences(confidences: np.ndarray) -> np.ndarray:
    """Validated (E, N) float64 confidences: 2-D, at least one exit and one sample, all finite."""
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.ndim != 2:
        raise ValueError(f"confidences must be a 2-D array (exits E, samples N); got shape {conf.shape}")
    if conf.shape[0] == 0:
        raise ValueError("outputs have 0 exits: pass at least one exit")
    if conf.shape[1] == 0:
        raise ValueError("empty validation set: the outputs have 0 samples; pass at least one sample")
    bad = ~np.isfinite(conf)
    if bad.any():
        e = int(np.nonzero(bad.any(axis=1))[0][0])
        kind = "NaN" if np.isnan(conf[e]).any() else "infinite values"
        raise ValueError(f"confidences contain {kind} (exit {e + 1}); check the model outputs and the softmax before searching")
    return conf


@dataclass(eq=False)
class StageCosts:
    """Per-stage costs.

    ``mean``: (E,) mean cost of each stage (not cumulative). ``samples``: optional list of E
    1-D arrays of raw per-stage latency samples (ms), used for percentile budgets.
    ``stopping``: optional list of E 1-D arrays, the per-image latency (ms) of a stream of
    images that all stop at exit ``e + 1``: what an image answered there costs on a device
    whose caches remember the previous image (stage 1 after stage 1 is cheaper than stage 1
    after the last stage). When given, the cost of stopping at each exit comes from these
    instead of from sums of ``mean``/``samples``. ``unit``: ``'ms'`` or ``'GFLOPs'``.
    """

    mean: np.ndarray
    samples: Optional[list[np.ndarray]] = None
    unit: str = "ms"
    stopping: Optional[list[np.ndarray]] = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"StageCosts.mean must be a non-empty 1-D array (one cost per stage); got shape {mean.shape}")
        if not np.all(np.isfinite(mean)) or np.any(mean < 0):
            raise ValueError(f"stage costs must be finite and non-negative; got {mean.tolist()}")
        self.mean = mean
        if self.samples is not None:
            if len(self.samples) != mean.size:
                raise ValueError(f"got latency samples for {len(self.samples)} stages but {mean.size} stage costs")
            self.samples = [_check_stage_samples(s, i) for i, s in enumerate(self.samples)]
        if self.stopping is not None:
            if len(self.stopping) != mean.size:
                raise ValueError(f"got stopping-stream samples for {len(self.stopping)} exits but {mean.size} stage costs")
            self.stopping = [_check_stage_samples(s, i) for i, s in enumerate(self.stopping)]

    @classmethod
    def from_samples(cls, samples: Sequence[Sequence[float]], unit: str = "ms",
                     stopping: Optional[Sequence[Sequence[float]]] = None) -> StageCosts:
        """From raw per-stage latency samples (a profile); ``mean`` = mean of each stage's samples;
        ``stopping``: per-exit samples of streams stopping there (see the class docstring)."""
        arrays = [_check_stage_samples(s, i) for i, s in enumerate(samples)]
        if not arrays:
            raise ValueError("no stages in the latency samples: pass one array of samples per stage")
        return cls(np.array([a.mean() for a in arrays]), arrays, unit, None if stopping is None else list(stopping))

    @classmethod
    def from_cumulative(cls, cumulative: Sequence[float], unit: str = "GFLOPs") -> StageCosts:
        """From cumulative costs per exit (e.g. FLOPs up to each exit); stage costs are the differences."""
        cum = np.asarray(cumulative, dtype=np.float64)
        if cum.ndim != 1 or cum.size == 0:
            raise ValueError(f"cumulative costs must be a non-empty 1-D sequence; got shape {cum.shape}")
        stage = np.diff(cum, prepend=0.0)
        if np.any(stage < 0):
            raise ValueError(f"cumulative costs must be non-decreasing and non-negative; got {cum.tolist()}")
        return cls(stage, None, unit)

    @property
    def cumulative(self) -> np.ndarray:
        """(E,) mean cost of stopping at each exit: the sum of the stages up to it, or with
        ``stopping`` the mean of each exit's stream (made non-decreasing: a later exit never costs less)."""
        if self.stopping is not None:
            return np.maximum.accumulate(np.array([s.mean() for s in self.stopping]))
        return np.cumsum(self.mean)

    @property
    def n_stages(self) -> int:
        return int(self.mean.size)


def _check_stage_samples(s: Sequence[float], i: int) -> np.ndarray:
    a = np.asarray(s, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"stage {i + 1} has no latency samples: profile each stage at least once")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"stage {i + 1} latency samples must be finite and non-negative")
    return a


def _check_costs(costs: StageCosts, n_exits: int) -> None:
    if not isinstance(costs, StageCosts):
        raise ValueError("costs must be a StageCosts (see StageCosts.from_samples / StageCosts.from_cumulative)")
    if costs.n_stages != n_exits:
        raise ValueError(f"costs describe {costs.n_stages} stages but the outputs have {n_exits} exits; pass one cost per exit")


def _parse_metric(metric: str) -> Optional[Fraction]:
    """None for ``"mean"``, else the percentile level (0 < q <= 100) as an exact fraction."""
    if metric == "mean":
        return None
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", str(metric))
    if m:
        q = Fraction(m.group(1))
        if 0 < q <= 100:
            return q
    raise ValueError(f"unknown metric {metric!r}: use 'mean' or a latency percentile such as 'p50', 'p90', 'p99', 'p99.9'")


def _as_thresholds(thresholds: Sequence[float], n_exits: int) -> np.ndarray:
    """(E,) float thresholds; accepts E or E-1 values. The last one is set to -inf (always stops).

    A -inf on a non-last exit ("always stop here") is stored as the lowest finite float so that
    ``+inf`` / ``None`` unambiguously means "never stop here" in JSON.
    """
    if isinstance(thresholds, (list, tuple)):  # the JSON form: None = never stop there
        if any(isinstance(v, (bool, str)) for v in thresholds):
            raise ValueError(f"thresholds must be numbers (or None = never stop), got {list(thresholds)!r}")
        thresholds = [np.inf if v is None else v for v in thresholds]
    t = np.array(thresholds, dtype=np.float64).ravel()
    if t.size == n_exits - 1:
        t = np.append(t, -np.inf)
    if t.size != n_exits:
        raise ValueError(f"got {t.size} thresholds for {n_exits} exits; pass {n_exits - 1} (or {n_exits}, the last is ignored)")
    if np.isnan(t).any():
        raise ValueError("thresholds contain NaN")
    t[:-1][t[:-1] == -np.inf] = _ALWAYS
    t[-1] = -np.inf
    return t


def thresholds_from_list(values: Sequence[Optional[float]], n_exits: Optional[int] = None) -> np.ndarray:
    """Inverse of the JSON form (``Evaluation.to_dict()["thresholds"]``): None -> +inf (never stop), the last exit's -> -inf.

    ``n_exits`` given, E-1 values (the manifest's form) get the last exit's appended; without it the list is taken as E
    values, its last entry the last exit's."""
    if any(v is not None and (isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.integer, np.floating))) for v in values):
        raise ValueError(f"thresholds must be numbers or None (never stop), got {list(values)!r}")
    t = np.array([np.inf if v is None else float(v) for v in values], dtype=np.float64)
    if n_exits is not None:
        if t.size not in (n_exits - 1, n_exits):
            raise ValueError(f"got {t.size} thresholds for {n_exits} exits; pass {n_exits - 1} (or {n_exits}, the last is ignored)")
        t = t[: n_exits - 1]
        t = np.append(t, -np.inf)
    elif t.size:
        t[-1] = -np.inf
    if np.isnan(t).any():
        raise ValueError(f"thresholds contain NaN: {list(values)!r}")
    return t


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def exit_indices(confidences: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N,) 0-based exit taken by each sample: the first ``e`` with ``conf[e] >= thresholds[e]``.

    ``confidences``: (E, N). The last exit is always taken (its threshold, if given, is ignored).
    """
    conf = _check_confidences(confidences)
    thr = _as_thresholds(thresholds, conf.shape[0])
    return _exit_batch(conf, thr[None, :])[0]


def unanswered_classes(outputs: ExitOutputs, thresholds: Sequence[float], min_right: int = 3) -> list[int]:
    """Classes the cascade at ``thresholds`` never answers right on these images although the last exit alone answers
    ``min_right`` or more of their images right: those leave at an earlier exit that never predicts them (unbalanced
    training data). Fewer right answers say too little (a class of 3 images in a holdout of 30)."""
    taken = exit_indices(outputs.confidences, thresholds)  # (N,)
    answered = outputs.predictions[taken, np.arange(outputs.n_samples)]  # (N,) the cascade's answer to each image
    last = outputs.predictions[-1][outputs.labels == outputs.predictions[-1]]  # right answers of the last exit alone
    classes, right = np.unique(last, return_counts=True)
    return sorted(int(k) for k in set(classes[right >= min_right].tolist()) - set(answered[answered == outputs.labels].tolist()))


def class_losses(outputs: ExitOutputs, thresholds: Sequence[float], min_images: int = 3, min_points: float = 10.0) -> list[dict]:
    """Classes the cascade at ``thresholds`` answers right on far fewer of their images than the last exit alone: at least
    ``min_images`` fewer, and ``min_points`` points of the class's images (on imbalanced data, thresholds chosen for the
    overall accuracy spend a rare class: a user's dogs 5 of 11 right at the last exit, 2 of 11 through the cascade).
    Each: ``label``, ``n`` (its images), ``cascade`` and ``last`` (right answers), worst first."""
    taken = exit_indices(outputs.confidences, thresholds)  # (N,)
    cascade_right = outputs.correct[taken, np.arange(outputs.n_samples)]  # (N,)
    out = []
    for c in np.unique(outputs.labels).tolist():
        mine = outputs.labels == c
        n, cas, last = int(mine.sum()), int(cascade_right[mine].sum()), int(outputs.correct[-1][mine].sum())
        if last - cas >= min_images and 100 * (last - cas) / n >= min_points:
            out.append({"label": int(c), "n": n, "cascade": cas, "last": last})
    return sorted(out, key=lambda d: (d["cascade"] - d["last"]) / d["n"])


def _exit_batch(conf: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """(P, N) exits for P threshold vectors ``thr`` (P, E)."""
    n_exits, n = conf.shape
    stop = np.ones((thr.shape[0], n_exits, n), dtype=bool)
    stop[:, :-1, :] = conf[None, :-1, :] >= thr[:, :-1, None]
    return stop.argmax(axis=1)


def _evaluate_batch(out: ExitOutputs, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct counts (P,) and per-exit sample counts (P, E) for threshold vectors (P, E)."""
    n_exits, n = out.confidences.shape
    n_correct = np.empty(thr.shape[0], dtype=np.int64)
    counts = np.empty((thr.shape[0], n_exits), dtype=np.int64)
    step = max(1, 4_000_000 // (n_exits * n))
    cols = np.arange(n)[None, :]
    for s in range(0, thr.shape[0], step):
        ex = _exit_batch(out.confidences, thr[s : s + step])
        n_correct[s : s + step] = out.correct[ex, cols].sum(axis=1)
        rows = np.arange(ex.shape[0])[:, None] * n_exits
        counts[s : s + step] = np.bincount((ex + rows).ravel(), minlength=ex.shape[0] * n_exits).reshape(-1, n_exits)
    return n_correct, counts


class _CostModel:
    """Cost of an exit assignment, which depends only on the number of samples at each exit.

    Mean: ``counts @ cumulative / N``. Percentile ``pQ``: stage latencies are drawn independently
    (seeded), ``n_sim`` draws per stage; ``totals[e, m] = sum of draw m of stages 1..e`` is the
    simulated latency of a request stopping at exit ``e`` (common random numbers, so totals are
    non-decreasing in ``e``). The latency of a request is the mixture of these per-exit
    distributions weighted by the validation exit fractions, i.e. the limit of resampling the
    validation set to infinitely many requests; its Q-th percentile is the inverted-CDF quantile
    of that weighted mixture, computed with integer arithmetic (exact and monotone: moving a
    sample to a later exit never lowers it). With ``costs.stopping`` the per-exit distributions
    are drawn from each exit's measured stream instead of summed from independent stages.
    """

    def __init__(self, costs: StageCosts, metric: str, n_samples: int, seed: int = 0, n_sim: int = DEFAULT_N_SIM) -> None:
        self.metric = metric
        self.unit = costs.unit
        self.n = int(n_samples)
        self.cumulative = costs.cumulative
        self.q = _parse_metric(metric)
        if self.q is None:
            return
        if costs.samples is None and costs.stopping is None:
            raise ValueError(
                f"metric {metric!r} needs per-stage latency samples: pass a latency profile, "
                "e.g. StageCosts.from_samples([[stage-1 ms...], [stage-2 ms...], ...])"
            )
        if int(n_sim) < 1:
            raise ValueError(f"n_sim must be a positive number of simulated draws; got {n_sim}")
        self.m = int(n_sim)
        rng = np.random.default_rng(seed)
        if costs.stopping is not None:
            # each exit's own stream; sorted draws made non-decreasing over exits keep every
            # later exit's distribution at or above the earlier one's (the monotonicity above)
            draws = np.stack([np.sort(rng.choice(s, size=self.m, replace=True)) for s in costs.stopping])
            totals = np.maximum.accumulate(draws, axis=0)  # (E, M)
        else:
            draws = np.stack([rng.choice(s, size=self.m, replace=True) for s in costs.samples])
            totals = np.cumsum(draws, axis=0)  # (E, M)
        self.grid = np.unique(totals)
        self.cdf_counts = np.stack([np.searchsorted(np.sort(t), self.grid, side="right") for t in totals]).astype(np.int64)

    def mean_cost(self, counts: np.ndarray) -> np.ndarray:
        return (np.asarray(counts, dtype=np.float64) @ self.cumulative) / self.n

    def cost(self, counts: np.ndarray) -> np.ndarray:
        """(K,) budget-metric cost for per-exit sample counts (K, E)."""
        counts = np.asarray(counts, dtype=np.int64)
        if self.q is None:
            return self.mean_cost(counts)
        # smallest grid point x with  sum_e counts_e * #{totals_e <= x} >= q/100 * N * M
        target = self.q.numerator * self.n * self.m
        scale = self.q.denominator * 100
        lo = np.zeros(counts.shape[0], dtype=np.int64)
        hi = np.full(counts.shape[0], self.grid.size - 1, dtype=np.int64)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            reached = (counts * self.cdf_counts[:, mid].T).sum(axis=1) * scale >= target
            hi = np.where(reached, mid, hi)
            lo = np.where(reached, lo, mid + 1)
        return self.grid[lo]

    def all_at(self, exit_index: int, n_exits: int) -> float:
        counts = np.zeros((1, n_exits), dtype=np.int64)
        counts[0, exit_index] = self.n
        return float(self.cost(counts)[0])


def check_metric(metric: str) -> Optional[Fraction]:
    """ValueError for a budget metric that is neither ``"mean"`` nor a percentile such as ``"p90"``; else None for
    the mean, or the percentile level as an exact fraction."""
    return _parse_metric(metric)


def metric_span(costs: StageCosts, metric: str, n_samples: int, n_exits: int, seed: int = 0) -> tuple[float, float]:
    """The ``metric`` cost of every sample stopping at exit 1, and at the last exit (a budget grid's ends)."""
    model = _CostModel(costs, metric, n_samples, seed)
    return model.all_at(0, n_exits), model.all_at(n_exits - 1, n_exits)


def _fits(cost: np.ndarray, budget: float) -> np.ndarray:
    """Feasibility with a tiny relative tolerance for floating-point rounding of the cost."""
    return np.asarray(cost) <= budget + 1e-9 * max(1.0, abs(budget))


@dataclass(eq=False)
class Evaluation:
    """One threshold vector and what it achieves on the validation set.

    ``thresholds``: (E,), the last is -inf (always stops), +inf means "never stop here".
    ``accuracy``: percent. ``cost``: value of the budget metric (``metric``) in ``unit``.
    ``mean_cost``: expected cost. ``exit_fractions``: (E,) fraction of samples stopping at each exit.
    """

    thresholds: np.ndarray
    accuracy: float
    cost: float
    mean_cost: float
    exit_fractions: np.ndarray
    metric: str = "mean"
    unit: str = "ms"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; non-finite thresholds become None (see :func:`thresholds_from_list`)."""
        return {
            "thresholds": [float(t) if np.isfinite(t) else None for t in np.asarray(self.thresholds).tolist()],
            "accuracy": _json_float(self.accuracy),
            "cost": _json_float(self.cost),
            "mean_cost": _json_float(self.mean_cost),
            "exit_fractions": [_json_float(f) for f in np.asarray(self.exit_fractions).tolist()],
            "metric": self.metric,
            "unit": self.unit,
        }


def _json_float(x: float) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def evaluate_thresholds(
    probs_or_conf: OutputsLike,
    labels: Optional[np.ndarray],
    thresholds: Sequence[float],
    costs: StageCosts,
    metric: str = "mean",
    seed: int = 0,
    n_sim: int = DEFAULT_N_SIM,
) -> Evaluation:
    """Accuracy and cost of ``thresholds`` on the validation set.

    ``probs_or_conf``: :class:`ExitOutputs`, softmax probs (E, N, C), or a tuple
    ``(confidences, predictions)``; ``labels`` (N,) may be None for :class:`ExitOutputs`.
    ``metric``: ``"mean"`` or ``"pNN"``; percentiles are simulated from ``costs.samples``
    (``n_sim`` seeded draws per stage, see :class:`_CostModel`).
    """
    out = _as_outputs(probs_or_conf, labels)
    _check_costs(costs, out.n_exits)
    model = _CostModel(costs, metric, out.n_samples, seed, n_sim)
    thr = _as_thresholds(thresholds, out.n_exits)[None, :]
    n_correct, counts = _evaluate_batch(out, thr)
    return _Points(thr, n_correct, counts, model.cost(counts), model.mean_cost(counts)).evaluations(model)[0]


@dataclass(eq=False)
class _Points:
    """A set of evaluated threshold vectors (arrays, row-aligned)."""

    thresholds: np.ndarray  # (P, E)
    n_correct: np.ndarray  # (P,)
    counts: np.ndarray  # (P, E)
    cost: np.ndarray  # (P,)
    mean_cost: np.ndarray  # (P,)

    @staticmethod
    def concat(parts: Sequence[_Points]) -> _Points:
        return _Points(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("thresholds", "n_correct", "counts", "cost", "mean_cost"))
        )

    def take(self, idx: np.ndarray) -> _Points:
        return _Points(self.thresholds[idx], self.n_correct[idx], self.counts[idx], self.cost[idx], self.mean_cost[idx])

    def pareto(self) -> _Points:
        return self.take(_pareto_indices(self.n_correct, self.cost))

    def evaluations(self, model: _CostModel) -> list[Evaluation]:
        n = model.n
        return [
            Evaluation(
                thresholds=self.thresholds[i].copy(),
                accuracy=100.0 * float(self.n_correct[i]) / n,
                cost=float(self.cost[i]),
                mean_cost=float(self.mean_cost[i]),
                exit_fractions=self.counts[i] / n,
                metric=model.metric,
                unit=model.unit,
            )
            for i in range(self.n_correct.shape[0])
        ]


def _evaluate_points(out: ExitOutputs, model: _CostModel, thr: np.ndarray) -> _Points:
    n_correct, counts = _evaluate_batch(out, thr)
    return _Points(thr, n_correct, counts, model.cost(counts), model.mean_cost(counts))


def _pareto_indices(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the Pareto frontier, cost ascending and accuracy strictly increasing."""
    if len(acc) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-np.asarray(acc), np.asarray(cost)))  # cost asc, then accuracy desc
    a = np.asarray(acc)[order]
    keep = np.ones(a.size, dtype=bool)
    keep[1:] = a[1:] > np.maximum.accumulate(a)[:-1]
    return order[keep]


def pareto_frontier(evals: Sequence[Evaluation]) -> list[Evaluation]:
    """Accuracy/cost Pareto frontier: cost ascending, accuracy strictly increasing."""
    evals = list(evals)
    idx = _pareto_indices(np.array([e.accuracy for e in evals]), np.array([e.cost for e in evals]))
    return [evals[i] for i in idx]


# --------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class SearchResult:
    """Outcome of a threshold search.

    ``best``: max accuracy with cost <= budget (ties: lower cost). ``frontier``: accuracy/cost
    Pareto frontier of everything evaluated (cost ascending, accuracy strictly increasing).
    ``info``: algorithm details (e.g. ``exact``: whether the candidate grid was complete) and notes.
    """

    best: Evaluation
    frontier: list[Evaluation]
    algorithm: str
    budget: float
    metric: str
    unit: str = "ms"
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "algorithm": self.algorithm,
            "metric": self.metric,
            "budget": _json_float(self.budget),
            "unit": self.unit,
            "best": self.best.to_dict(),
            "frontier": [e.to_dict() for e in self.frontier],
            "info": dict(self.info),
        }


def _cheapest_thresholds(out: ExitOutputs) -> np.ndarray:
    """Every sample stops at exit 1: threshold 0 (a confidence never below it), or the smallest observed
    exit-1 score when scores go below 0 (not softmax confidences)."""
    thr = np.full(out.n_exits, np.inf)
    thr[0] = min(0.0, float(out.confidences[0].min()))
    thr[-1] = -np.inf
    return thr


# ---- exact ---------------------------------------------------------------------------


def _candidates(conf_e: np.ndarray, cap: int) -> tuple[np.ndarray, bool]:
    """Descending candidate thresholds for one exit: +inf, then one per observed confidence (subsampled to
    ``cap``), each halfway down to the next lower observed confidence: the same split of these samples as
    the confidence itself, with no sample sitting on a threshold (a last-bit difference in a deployed
    artifact's output then flips nothing). The lowest is 0 (everything stops, new images included), or the
    lowest score when scores go below 0."""
    u = np.unique(conf_e)
    complete = u.size <= cap
    idx = np.arange(u.size) if complete else np.unique(np.round(np.linspace(0, u.size - 1, cap)).astype(np.int64))
    below = u[np.maximum(idx - 1, 0)]
    mid = below + (u[idx] - below) / 2  # no overflow; equal to ``below`` only when the two are one ulp apart
    thr = np.where((idx > 0) & (mid > below), mid, u[idx])
    thr[idx == 0] = min(0.0, float(u[0]))  # "everything stops here": on images not seen here too
    return np.concatenate([[np.inf], thr[::-1]]), complete


def _run_exact(
    out: ExitOutputs, model: _CostModel, budget: Optional[float], seed: int, max_candidates: Optional[int] = None
) -> tuple[_Points, dict]:
    """Exhaustive search over the candidate grid; returns the Pareto set of all candidates.

    Candidates for exit e: +inf ("never stop here") and the sorted unique confidences of exit e
    (only these values change which samples stop). The grid is complete -- hence the search exact --
    when every non-final exit has at most ``max_candidates`` unique confidences (default 2048;
    for E > 3 the outer exits default to ~4096**(1/(E-2)) candidates); otherwise each exit's
    candidates are an evenly spaced quantile subset of its observed confidences.

    Outer exits 1..E-2 are enumerated (in chunks); the last searchable exit (E-1) is vectorised:
    with samples sorted by exit-(E-1) confidence, "stop at E-1" is a prefix, so accuracy and counts
    for every candidate follow from cumulative sums. Along that axis the cost (mean or percentile)
    only decreases as more samples stop early, so each row's Pareto points are its strict
    accuracy records; only those are costed, then merged into a global Pareto set. The best
    feasible point of the full grid always lies on that set, so picking from it is exact.
    """
    conf, correct = out.confidences, out.correct
    n_exits, n = conf.shape
    inner = n_exits - 2  # index of the vectorised exit
    cands, complete = _exact_grid(conf, max_candidates)
    outer_shape = tuple(len(c) for c in cands[:inner])
    n_rows = int(np.prod(outer_shape, dtype=np.int64))
    if float(n_rows) * n > _EXACT_MAX_WORK:
        raise ValueError(
            f"exact search over {n_rows} outer threshold combinations x {n} samples is too large; "
            "lower max_candidates or use algorithm='ga'"
        )
    order = np.argsort(-conf[inner], kind="stable")
    k = np.searchsorted(-conf[inner, order], -cands[inner], side="right")  # samples with conf >= t, per candidate t
    chunk = max(1, 1_000_000 // n)
    parts: list[_Points] = []
    for start in range(0, n_rows, chunk):
        rows = np.arange(start, min(start + chunk, n_rows))
        parts.append(_exact_rows(conf, correct, cands, outer_shape, rows, order, k, model))
        if len(parts) >= 16:
            parts = [_Points.concat(parts).pareto()]
    info = {
        "exact": bool(complete),
        "n_candidates": [int(len(c)) for c in cands],
        "n_evaluated": int(n_rows) * int(len(cands[inner])),
    }
    return _Points.concat(parts).pareto(), info


def _exact_grid(conf: np.ndarray, max_candidates: Optional[int]) -> tuple[list[np.ndarray], bool]:
    """Candidate thresholds per non-final exit, and whether the grid is complete (the search exact)."""
    n_exits = conf.shape[0]
    inner = n_exits - 2
    if max_candidates is not None and int(max_candidates) < 1:
        raise ValueError(f"max_candidates must be >= 1; got {max_candidates}")
    inner_cap = int(max_candidates) if max_candidates is not None else DEFAULT_MAX_CANDIDATES
    if max_candidates is not None or n_exits <= 3:
        outer_cap = inner_cap
    else:
        outer_cap = max(1, int(_EXACT_OUTER_ROWS ** (1.0 / (n_exits - 2)) + 1e-9) - 1)
    cands, complete = [], True
    for e in range(n_exits - 1):
        c, ok = _candidates(conf[e], inner_cap if e == inner else outer_cap)
        cands.append(c)
        complete &= ok
    return cands, complete


def _exact_rows(conf: np.ndarray, correct: np.ndarray, cands: list[np.ndarray], outer_shape: tuple, rows: np.ndarray,
                order: np.ndarray, k: np.ndarray, model: _CostModel) -> _Points:
    """Pareto points of the outer-grid ``rows`` x every candidate of the vectorised exit.

    ``order``: samples sorted by the vectorised exit's confidence (descending); ``k[j]``: how many
    of them stop there at candidate ``j``.
    """
    n_exits, n = conf.shape
    inner = n_exits - 2
    correct_inner, correct_last = correct[inner, order], correct[n_exits - 1, order]
    cols = np.arange(n)[None, :]
    b = rows.size
    thr_outer = np.empty((b, inner))
    if inner:
        for e, idx in enumerate(np.unravel_index(rows, outer_shape)):
            thr_outer[:, e] = cands[e][idx]
        stop = np.ones((b, inner + 1, n), dtype=bool)
        stop[:, :inner, :] = conf[None, :inner, :] >= thr_outer[:, :, None]
        ex = stop.argmax(axis=1)  # (b, N); == inner means "reaches the vectorised exit"
    else:
        ex = np.zeros((b, n), dtype=np.int64)
    early = ex < inner
    correct_pre = (correct[ex, cols] & early).sum(axis=1)
    offs = np.arange(b)[:, None] * (inner + 1)
    counts_pre = np.bincount((ex + offs).ravel(), minlength=b * (inner + 1)).reshape(b, inner + 1)
    reach = ~early[:, order]
    zero = np.zeros((b, 1), dtype=np.int64)
    cum_reach = np.concatenate([zero, np.cumsum(reach, axis=1)], axis=1)
    cum_inner = np.concatenate([zero, np.cumsum(reach & correct_inner, axis=1)], axis=1)
    cum_last = np.concatenate([zero, np.cumsum(reach & correct_last, axis=1)], axis=1)
    acc = correct_pre[:, None] + cum_inner[:, k] + (cum_last[:, -1:] - cum_last[:, k])  # (b, K)
    # row Pareto points: strict accuracy records scanning from the cheapest column (largest k)
    rev = acc[:, ::-1]
    prev = np.concatenate([np.full((b, 1), -1), np.maximum.accumulate(rev, axis=1)[:, :-1]], axis=1)
    r, j = np.nonzero((rev > prev)[:, ::-1])
    n_inner = cum_reach[r, k[j]]
    counts = np.empty((r.size, n_exits), dtype=np.int64)
    counts[:, :inner] = counts_pre[r, :inner]
    counts[:, inner] = n_inner
    counts[:, inner + 1] = counts_pre[r, inner] - n_inner
    thr = np.empty((r.size, n_exits))
    thr[:, :inner] = thr_outer[r]
    thr[:, inner] = cands[inner][j]
    thr[:, -1] = -np.inf
    return _Points(thr, acc[r, j], counts, model.cost(counts), model.mean_cost(counts)).pareto()


# ---- sweep (MSDNet / DVT reference procedure) ----------------------------------------


def sweep_thresholds(outputs: OutputsLike, n_budgets: int = 59) -> list[np.ndarray]:
    """Per-budget threshold vectors of the MSDNet/DVT ``dynamic_eval_find_threshold`` procedure.

    For ``p = 1..n_budgets``, ``q = p / 20`` and the target exit distribution is
    ``probs_e ∝ q**(e+1)`` (e = 0..E-1). For each exit e < E-1, among the samples that have not
    exited yet, sorted by exit-e confidence descending, the threshold is the confidence of the
    ``floor(N * probs_e)``-th one (+inf if that count is 0 or exceeds what remains); samples with
    confidence ``>=`` it exit (ties may add a few). The last threshold is -inf. Returns one (E,)
    vector per p (+inf plays the reference's 1e8, -inf its -1e8).
    """
    if int(n_budgets) < 1:
        raise ValueError(f"n_budgets must be >= 1; got {n_budgets}")
    conf = _confidences_of(outputs)
    n_exits, n = conf.shape
    orders = [np.argsort(-conf[e], kind="stable") for e in range(n_exits - 1)]
    vectors = []
    for p in range(1, int(n_budgets) + 1):
        q = p / 20.0
        probs = q ** np.arange(1, n_exits + 1, dtype=np.float64)
        probs /= probs.sum()
        thr = np.full(n_exits, np.inf)
        thr[-1] = -np.inf
        exited = np.zeros(n, dtype=bool)
        for e in range(n_exits - 1):
            out_n = math.floor(n * probs[e])
            remaining = orders[e][~exited[orders[e]]]
            if 1 <= out_n <= remaining.size:
                thr[e] = conf[e, remaining[out_n - 1]]
            exited |= conf[e] >= thr[e]
        vectors.append(thr)
    return vectors


def _run_sweep(out: ExitOutputs, model: _CostModel, budget: Optional[float], seed: int, n_budgets: int = 59) -> tuple[_Points, dict]:
    thr = np.stack(sweep_thresholds(out, n_budgets))
    return _evaluate_points(out, model, thr), {"n_budgets": int(n_budgets)}


def budget_curve(
    outputs: OutputsLike,
    costs: StageCosts,
    n_budgets: int = 59,
    metric: str = "mean",
    seed: int = 0,
    *,
    labels: Optional[np.ndarray] = None,
    n_sim: int = DEFAULT_N_SIM,
) -> list[Evaluation]:
    """Evaluate every :func:`sweep_thresholds` vector (in p order): the paper's accuracy-vs-budget curve."""
    out = _as_outputs(outputs, labels)
    _check_costs(costs, out.n_exits)
    model = _CostModel(costs, metric, out.n_samples, seed, n_sim)
    return _evaluate_points(out, model, np.stack(sweep_thresholds(out, n_budgets))).evaluations(model)


# ---- genetic algorithm ---------------------------------------------------------------


def _check_ga_rates(crossover_rate: float, mutation_rate: Optional[float], mutation_scale: float) -> None:
    """Probabilities in [0, 1] and a finite positive scale (NaN fails every comparison: refused, not ignored)."""
    for name, v in (("crossover_rate", crossover_rate), ("mutation_rate", mutation_rate)):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0):
            raise ValueError(f"ga {name} must be a probability in [0, 1], got {v!r}")
    if isinstance(mutation_scale, bool) or not isinstance(mutation_scale, (int, float)) or not (0.0 < mutation_scale < math.inf):
        raise ValueError(f"ga mutation_scale must be a finite number > 0, got {mutation_scale!r}")


def _run_ga(
    out: ExitOutputs,
    model: _CostModel,
    budget: float,
    seed: int,
    population: int = 64,
    generations: int = 60,
    elite: int = 2,
    tournament: int = 3,
    crossover_rate: float = 0.9,
    mutation_rate: Optional[float] = None,
    mutation_scale: float = 0.1,
    seed_with_sweep: bool = True,
) -> tuple[_Points, dict]:
    """Genetic algorithm over the E-1 thresholds (as in the DVT paper), seeded and deterministic.

    Genes are thresholds in [lo, hi] = [min(0, min conf), max(1, max conf)] (i.e. [0, 1] for
    softmax); a gene at ``hi`` decodes to +inf (never stop). Fitness = accuracy (%) when the cost
    fits the budget, else ``-1 - violation / budget`` (every feasible vector beats every
    infeasible one). Tournament selection, BLX-0.25 blend crossover, Gaussian mutation with
    occasional jumps to a bound, elitism. The initial population holds the all-``lo`` vector
    (every sample at exit 1, always feasible), the all-``hi`` vector, and optionally sweep
    vectors. Everything evaluated feeds the frontier; the best feasible one is returned.
    """
    population, generations, elite, tournament = int(population), int(generations), int(elite), int(tournament)
    if population < 4 or generations < 1 or not 0 <= elite < population or tournament < 1:
        raise ValueError("ga needs population >= 4, generations >= 1, 0 <= elite < population and tournament >= 1")
    _check_ga_rates(crossover_rate, mutation_rate, mutation_scale)
    conf = out.confidences
    n_exits, n_genes = out.n_exits, out.n_exits - 1
    lo = min(0.0, float(conf[:-1].min()))
    hi = max(1.0, float(conf[:-1].max()))
    pm = 1.0 / n_genes if mutation_rate is None else float(mutation_rate)
    rng = np.random.default_rng(seed)
    scale = max(float(budget), 1e-12)

    def decode(genes: np.ndarray) -> np.ndarray:
        thr = np.empty((genes.shape[0], n_exits))
        thr[:, :-1] = np.where(genes >= hi, np.inf, genes)
        thr[:, -1] = -np.inf
        return thr

    def fitness(pts: _Points) -> np.ndarray:
        acc = 100.0 * pts.n_correct / out.n_samples
        return np.where(_fits(pts.cost, budget), acc, -1.0 - (pts.cost - budget) / scale)

    seeds = [np.full(n_genes, lo), np.full(n_genes, hi)]
    if seed_with_sweep:
        sweep = np.clip(np.stack(sweep_thresholds(out))[:, :-1], lo, hi)
        pick = np.unique(np.round(np.linspace(0, len(sweep) - 1, min(len(sweep), population // 4))).astype(int))
        seeds.extend(sweep[pick])
    genes = rng.uniform(lo, hi, size=(population, n_genes))
    genes[: len(seeds)] = np.stack(seeds)[:population]
    pts = _evaluate_points(out, model, decode(genes))
    fit = fitness(pts)
    history = [pts.pareto()]
    n_children = population - elite
    for _ in range(generations):
        contenders = rng.integers(population, size=(2 * n_children, tournament))
        winners = contenders[np.arange(2 * n_children), fit[contenders].argmax(axis=1)]
        p1, p2 = genes[winners[:n_children]], genes[winners[n_children:]]
        u = rng.uniform(-0.25, 1.25, size=p1.shape)
        cross = rng.random(n_children) < crossover_rate
        children = np.where(cross[:, None], p1 + u * (p2 - p1), p1)
        mutate = rng.random(children.shape) < pm
        children = children + mutate * rng.normal(0.0, mutation_scale * (hi - lo), size=children.shape)
        jump = mutate & (rng.random(children.shape) < 0.1)
        children = np.where(jump, np.where(rng.random(children.shape) < 0.5, lo, hi), children)
        children = np.clip(children, lo, hi)
        elite_idx = np.argsort(-fit, kind="stable")[:elite]
        child_pts = _evaluate_points(out, model, decode(children))
        history.append(child_pts.pareto())
        genes = np.concatenate([genes[elite_idx], children])
        pts = _Points.concat([pts.take(elite_idx), child_pts])
        fit = fitness(pts)
        if len(history) >= 16:
            history = [_Points.concat(history).pareto()]
    info = {"population": population, "generations": generations, "n_evaluated": population + generations * n_children}
    return _Points.concat(history).pareto(), info


# ---- driver --------------------------------------------------------------------------

_RUNNERS = {"exact": _run_exact, "ga": _run_ga, "sweep": _run_sweep}
_OPTIONS = {
    "exact": {"max_candidates"},
    "ga": {"population", "generations", "elite", "tournament", "crossover_rate", "mutation_rate", "mutation_scale", "seed_with_sweep"},
    "sweep": {"n_budgets"},
}


def _check_budget(budget: float) -> float:
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a finite, non-negative number; got {budget!r}") from None
    if not math.isfinite(b) or b < 0:
        raise ValueError(f"budget must be a finite, non-negative number; got {budget!r}")
    return b


def _prepare(outputs, costs, metric, algorithm, seed, labels, kw) -> tuple[ExitOutputs, _CostModel, dict]:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    _parse_metric(metric)
    opts = dict(kw)
    n_sim = int(opts.pop("n_sim", DEFAULT_N_SIM))
    unknown = sorted(set(opts) - _OPTIONS[algorithm])
    if unknown:
        valid = ", ".join(sorted(_OPTIONS[algorithm] | {"n_sim"}))
        raise ValueError(f"unknown option(s) for algorithm {algorithm!r}: {', '.join(unknown)}; valid: {valid}")
    out = _as_outputs(outputs, labels)
    _check_costs(costs, out.n_exits)
    return out, _CostModel(costs, metric, out.n_samples, seed, n_sim), opts


def _check_reachable(budget: float, model: _CostModel, n_exits: int) -> None:
    floor = model.all_at(0, n_exits)
    if not _fits(floor, budget):
        raise ValueError(
            f"budget {budget:g} {model.unit} is below the cheapest achievable {model.metric} cost "
            f"{floor:.6g} {model.unit} (every sample stopping at exit 1); raise the budget to at least {floor:.6g} {model.unit}"
        )


def check_budget_reachable(costs: StageCosts, budget: float, metric: str = "mean", seed: int = 0) -> None:
    """ValueError when ``budget`` is below the ``metric`` cost of every sample stopping at exit 1: known from the costs
    alone, before any exit has run."""
    _check_reachable(_check_budget(budget), _CostModel(costs, metric, 1, seed), costs.n_stages)


def _finish(out: ExitOutputs, model: _CostModel, points: _Points, info: dict, algorithm: str, budget: float) -> SearchResult:
    info = dict(info)
    front = points.pareto()
    feasible = np.nonzero(_fits(front.cost, budget))[0]
    if feasible.size == 0:  # e.g. a sweep whose cheapest vector still exceeds the budget
        front = _Points.concat([front, _evaluate_points(out, model, _cheapest_thresholds(out)[None, :])]).pareto()
        feasible = np.nonzero(_fits(front.cost, budget))[0]
        info["note"] = "no searched thresholds fit the budget; returned the cheapest setting (every sample stops at exit 1)"
    ceiling = model.all_at(out.n_exits - 1, out.n_exits)
    if _fits(ceiling, budget) and out.n_exits > 1:
        info["note"] = (
            f"budget >= the cost of running every exit for every sample ({ceiling:.6g} {model.unit}): "
            "all exits fit, the best is simply the max-accuracy thresholds"
        )
    evals = front.evaluations(model)
    return SearchResult(evals[int(feasible[-1])], evals, algorithm, budget, model.metric, model.unit, info)


def _search_points(out: ExitOutputs, model: _CostModel, algorithm: str, budget: float, seed: int, opts: dict) -> tuple[_Points, dict]:
    if out.n_exits == 1:
        thr = np.array([[-np.inf]])
        return _evaluate_points(out, model, thr), {"note": "single exit: nothing to search"}
    return _RUNNERS[algorithm](out, model, budget, seed, **opts)


def search_thresholds(
    outputs: OutputsLike,
    costs: StageCosts,
    budget: float,
    metric: str = "mean",
    algorithm: str = "exact",
    seed: int = 0,
    *,
    labels: Optional[np.ndarray] = None,
    **kw: Any,
) -> SearchResult:
    """Thresholds maximising validation accuracy with ``metric`` cost <= ``budget`` (in ``costs.unit``).

    ``outputs``: :class:`ExitOutputs`, probs (E, N, C) with ``labels=``, or a tuple
    ``(confidences, predictions[, labels])``. ``algorithm``: one of :data:`ALGORITHMS`.
    Options (``**kw``): ``n_sim`` (percentile draws per stage, default 20000); exact:
    ``max_candidates``; ga: ``population`` (64), ``generations`` (60), ``elite``, ``tournament``,
    ``crossover_rate``, ``mutation_rate``, ``mutation_scale``, ``seed_with_sweep``; sweep: ``n_budgets`` (59).
    Raises ValueError when the budget is below the cheapest achievable cost (all samples at exit 1).
    """
    budget = _check_budget(budget)
    out, model, opts = _prepare(outputs, costs, metric, algorithm, seed, labels, kw)
    _check_reachable(budget, model, out.n_exits)
    points, info = _search_points(out, model, algorithm, budget, seed, opts)
    return _finish(out, model, points, info, algorithm, budget)


def frontier_table(
    outputs: OutputsLike,
    costs: StageCosts,
    budgets: Sequence[float],
    metric: str = "mean",
    algorithm: str = "exact",
    seed: int = 0,
    *,
    labels: Optional[np.ndarray] = None,
    **kw: Any,
) -> list[SearchResult]:
    """One :func:`search_thresholds` result per budget (for a Pareto table of thresholds over budgets).

    ``exact`` and ``sweep`` do not depend on the budget, so their candidates are computed once.
    """
    budgets = [_check_budget(b) for b in budgets]
    out, model, opts = _prepare(outputs, costs, metric, algorithm, seed, labels, kw)
    for b in budgets:
        _check_reachable(b, model, out.n_exits)
    shared = None
    results = []
    for b in budgets:
        if algorithm == "ga" or shared is None:
            points, info = _search_points(out, model, algorithm, b, seed, opts)
            if algorithm != "ga":
                shared = (points, info)
        else:
            points, info = shared
        results.append(_finish(out, model, points, info, algorithm, b))
    return results
