"""Budget controller: stay within a latency budget when the device slows down or speeds up.

The calibration file holds a Pareto table of thresholds over latency budgets, predicted
from the profiled latencies. The controller keeps a running estimate of how fast
the stages run now relative to the profile (over the last ``WINDOW`` samples, their observed stage time over the
profiled cost of stopping where each stopped: a ratio of sums, which is what a mean budget needs) and picks the most
accurate table row whose predicted latency, rescaled by that factor, fits the budget. An exponential moving average of
each sample's ratio (weight 0.2) had let one 4 ms spike of an exit-1 sample add 2.6 to the estimate: measured on the
CIFAR reference under a competing process, it changed row 510 times in 1,000 images and overran a 1.2 ms budget by 2%;
replayed through the ratio of sums, 78 times and 16% under it (at idle, 92 -> 34 changes). The estimate describes the device, not the budget: one
controller serves every budget (``thresholds(budget_ms)``), so a caller that alternates
budgets keeps what it has learnt.

A second estimate follows which images come (``mix``): over the last ``MIX_WINDOW`` samples, the profiled price of where
each stopped over the price of where the calibration's images stopped under the row that ran (a ratio of sums). Darker,
blurred or other scenes leave the early exits less often and cost more at the same speed: once ``MIX_MIN`` samples differ
from the calibration's by more than ``MIX_Z`` standard errors (the window's, and the rows' prices' own, measured on
``n_calibration`` images) and ``MIX_EFFECT``, rows are priced at that ratio too (cheaper thresholds, at a cost in
accuracy on those images, to hold the budget), and images like the calibration's bring it back to 1. A row whose images
all stop at one exit (the cheapest: every image at exit 1) says nothing of them and is left out (pooled, a second
caller's cheapest row had pulled the estimate to 1 for every other row); samples older than ``MIX_MAX_AGE`` calls are
forgotten (while only such rows ran, the images may have changed back). It only tightens (images easier than the
calibration's leave the budget partly unspent, as before). The ratio is of means: a percentile budget is corrected in
part only. Rows of older calibration files carry no exit shares: no mix estimate there.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from dvt_runtime.console import quote_arg

if TYPE_CHECKING:
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.calibration import Calibration

HISTORY = 1000  # recent speed estimates kept (bounded: a controller may run for months)
WINDOW = 64  # samples the speed estimate is taken over (about 57 to follow 90% of a sustained slowdown)
PRIOR = 16  # a new controller starts as if this many exit-1 samples had run at their profiled price
MIX_WINDOW = 256  # informative samples the exit-mix estimate is taken over
MIX_MIN = 100  # samples before it may reprice rows (as shift.MIN_IMAGES: at 100, sampling alone moves a share by ~5 points)
MIX_Z = 3.0  # standard errors from 1 it must be before rows are repriced (images like the calibration's: 1)
MIX_EFFECT = 0.05  # ... and at least this far (rows picked on the calibration's own images are priced a little low)
MIX_MAX_AGE = 4 * MIX_WINDOW  # calls after which a sample is forgotten (rows that say nothing ran since: the images may be back)

__all__ = ["BudgetController", "controller_for"]


@dataclass
class BudgetController:
    budget_ms: float
    table: list[dict]  # rows: {"thresholds": [...], "predicted_ms": float, "accuracy": float, "exit_fractions": [...] or None}
    exit_mean_ms: list[float]  # profiled mean cost of a sample stopping at each exit (ms, stage calls only)
    window: int = WINDOW  # recent samples the estimate is taken over
    scale: float = 1.0  # observed / profiled latency of the recent samples (ratio of their sums)
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    batch: int = 1  # images per call the prices were measured at: calls of another size say nothing about them
    headroom: float = 0.0  # fraction of every budget kept spare (the calibration's own): rows must fit budget x (1 - headroom)
    mix: float = 1.0  # where recent samples stopped, priced, over where the calibration's did under the same rows (1 unless significant)
    n_calibration: int = 0  # images the rows' exit shares were measured on (0: unknown, their sampling error not counted)

    def __post_init__(self) -> None:
        if not math.isfinite(self.budget_ms) or self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be a finite positive number of ms, got {self.budget_ms}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window (samples the speed estimate is taken over) must be a whole number >= 1, got {self.window!r}")
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"headroom must be a fraction of the budget in [0, 1), got {self.headroom}")
        if not self.table:
            raise ValueError("the calibration has an empty budget table; re-run python -m dvt_runtime.calibrate")
        self.table = sorted(self.table, key=lambda r: r["predicted_ms"])
        p = max(float(self.exit_mean_ms[0]), 0.0)
        self._recent: deque = deque([(p, p)] * min(PRIOR, self.window), maxlen=self.window)  # (observed, profiled) ms
        self._sums, self._seen = [p * len(self._recent)] * 2, 0
        self._row_ms = {tuple(r["thresholds"]): c for r in self.table if (c := self._priced(r.get("exit_fractions"))) is not None}
        self._mix: deque = deque()  # (call, price of where a sample stopped, its row's expected price, that price's error)
        self._msums, self._calls = [0.0] * 6, 0  # sums of s, e, s*s, s*e, e*e, error over _mix; calls seen

    def _priced(self, shares) -> Optional[tuple[float, float]]:
        """A row's exit shares priced at the profile's cost of stopping at each exit, and that price's standard error from
        the calibration's ``n_calibration`` images; None without valid shares, or for a row whose images all stop at one
        exit (its price cannot move: the cheapest row's samples had pulled the estimate back to 1 for every other row)."""
        if isinstance(shares, (str, bytes)):
            return None
        try:
            f = [float(v) for v in shares]  # a list, tuple or array
        except (TypeError, ValueError):
            return None
        c = [float(v) for v in self.exit_mean_ms]
        if len(f) != len(c) or not all(math.isfinite(v) and v >= 0 for v in f):
            return None
        cost = sum(a * b for a, b in zip(f, c))
        var = max(sum(a * b * b for a, b in zip(f, c)) - cost * cost, 0.0)  # of one image's price under the row
        if not (math.isfinite(cost) and cost > 0) or var <= 1e-12 * cost * cost:
            return None
        return cost, math.sqrt(var / self.n_calibration) if self.n_calibration > 0 else 0.0

    @classmethod
    def from_calibration(cls, cal: "Calibration", budget_ms: float, window: int = WINDOW) -> "BudgetController":
        key = "mean_ms" if cal.metric == "mean" else f"{cal.metric}_ms"  # the budget's own statistic (older files: the mean)
        rows = [{"thresholds": r.thresholds, "predicted_ms": r.predicted.get(key, r.predicted["mean_ms"]), "accuracy": r.predicted["accuracy"],
                 "exit_fractions": r.predicted.get("exit_fractions")} for r in cal.table]  # where the calibration's images stopped
        return cls(budget_ms, rows, cal.exit_mean_ms(), window, batch=int(cal.batch), headroom=float(cal.headroom),
                   n_calibration=_count(cal.n_calibration))

    def row(self, budget_ms: Optional[float] = None) -> dict:
        """Most accurate row whose rescaled predicted latency fits ``budget_ms`` (default: the
        controller's budget) less the headroom, else the cheapest."""
        budget = self.budget_ms if budget_ms is None else budget_ms
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"budget_ms must be a finite positive number of ms, got {budget}")
        # a row's budget_ms is its priced budget / (1 - headroom): back again, it may come out one ulp short
        fit = [r for r in self.table if r["predicted_ms"] * self.scale * self.mix <= budget * (1 - self.headroom) * (1 + 1e-9)]
        if not fit:
            return self.table[0]
        return max(fit, key=lambda r: (r["accuracy"], -r["predicted_ms"]))

    def thresholds(self, budget_ms: Optional[float] = None) -> list[Optional[float]]:
        return list(self.row(budget_ms)["thresholds"])

    def observe(self, stage_ms: Sequence[float], thresholds: Optional[Sequence] = None) -> None:
        """Update the speed estimate from one sample's measured stage times (one per stage it ran) and, given the row's
        ``thresholds`` it ran under, the exit-mix estimate."""
        if not stage_ms:
            return
        expected = self.exit_mean_ms[len(stage_ms) - 1]  # one price per exit: a sample runs at most that many stages
        if expected <= 0:
            return
        if thresholds is not None:
            self._calls += 1
            self._observe_mix(expected, self._row_ms.get(tuple(thresholds)))
        observed = float(sum(stage_ms))
        if not math.isfinite(observed / expected) or observed < 0:  # a broken timer reading must not pin the estimate for good
            return
        if len(self._recent) == self._recent.maxlen:
            gone = self._recent[0]
            self._sums = [self._sums[0] - gone[0], self._sums[1] - gone[1]]
        self._recent.append((observed, expected))
        self._sums = [self._sums[0] + observed, self._sums[1] + expected]
        self._seen += 1
        if self._seen % self.window == 0:  # summed afresh now and then: months of running sums do not drift
            self._sums = [sum(o for o, _ in self._recent), sum(e for _, e in self._recent)]
        self.scale = self._sums[0] / self._sums[1]
        self.history.append(self.scale)

    def _observe_mix(self, s: float, row: Optional[tuple[float, float]]) -> None:
        """One call's sample: the price of where it stopped (``s``) against its row's expected price and that price's
        error (``row``; None: a row whose samples say nothing, only the call counted): :attr:`mix` (see the module)."""
        terms = lambda s, e, err: (s, e, s * s, s * e, e * e, err)  # noqa: E731
        if row is not None:
            self._mix.append((self._calls, s, *row))
            self._msums = [a + b for a, b in zip(self._msums, terms(s, *row))]
        while self._mix and (len(self._mix) > MIX_WINDOW or self._mix[0][0] <= self._calls - MIX_MAX_AGE):
            _, *old = self._mix.popleft()
            self._msums = [a - b for a, b in zip(self._msums, terms(*old))]
        if self._calls % MIX_WINDOW == 0:  # summed afresh now and then, as the speed estimate's
            self._msums = [sum(v) for v in zip(*(terms(*x[1:]) for x in self._mix))] or [0.0] * 6
        n, (S, E, SS, SE, EE, ERR) = len(self._mix), self._msums
        if n < MIX_MIN or E <= 0:
            self.mix = 1.0
            return
        r = S / E
        # the ratio's standard error: this window's sampling, and the rows' prices' own (their errors taken as one: upper bound)
        se = math.sqrt(max(SS - 2 * r * SE + r * r * EE, 0.0) + (r * ERR) ** 2) / E
        # only ever tightens: easier images had moved it below 1 and spent the budget on later exits, which cost accuracy on
        # them (0.5 to 1 point, paired) and overran it when harder ones came (an SRE helper's streams)
        self.mix = r if r - 1 > max(MIX_Z * se, MIX_EFFECT) else 1.0


def _count(v) -> int:
    """A calibration's image count as a positive int, else 0 (unknown: an older or hand-edited file's NaN, text or list)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return int(v) if ok else 0


def controller_for(bundle: "Bundle", budget_ms: float) -> BudgetController:
    """The bundle's one controller (made from its calibration on first use); warns once per budget below the cheapest point."""
    with bundle._budget_lock:  # one read: use_calibration() in another thread may drop it between two
        cal = bundle.calibration
    if cal is None:
        from dvt_runtime.calibration import bundle_args

        where = (f"no {bundle.calibration_path(bundle.device_name)} yet: run python -m dvt_runtime.calibrate "
                 f"{bundle_args(bundle.path, bundle.calibration_dir)} --device-name {quote_arg(bundle.device_name)} ..." if bundle.device_name else
                 "open the bundle with device_name=... of a calibrated device (python -m dvt_runtime.calibrate)")
        if bundle.device_name and bundle.calibration_path(bundle.device_name).exists():  # dropped by use_calibration(), not missing
            where = (f"the bundle runs none now (dropped by use_calibration(), or made after the bundle was opened): "
                     f"bundle.use_calibration({bundle.device_name!r}) uses it")
        raise ValueError(f"budget_ms needs a calibration for this device: {where}")
    with bundle._budget_lock:
        current = bundle.calibration is cal  # else use_calibration() replaced it meanwhile: this call's own, never kept
        ctl = bundle.controller if current else None
        key, unpriced = f"{cal.metric}_ms", False
        if ctl is None:  # one for every budget: alternating budgets keep the speed estimate
            ctl = BudgetController.from_calibration(cal, budget_ms)
            bundle.controller = ctl if current else bundle.controller
            unpriced = cal.metric != "mean" and any(key not in r.predicted for r in cal.table)
        cheapest = ctl.table[0]["predicted_ms"]
        # once per budget; a budget that varies freely warns for its first 64 values only (bounded)
        warn = budget_ms * (1 - ctl.headroom) < cheapest and budget_ms not in bundle._warned_budgets and len(bundle._warned_budgets) < 64
        if warn:
            bundle._warned_budgets.add(budget_ms)
    if unpriced:  # an older file (the table priced by the mean alone), or a metric edited by hand
        from dvt_runtime.calibration import rewrite_command

        path = bundle.calibration_path(cal.device, cal.batch)
        warnings.warn(f"{path} budgets the {cal.metric} but its table's rows carry no predicted {key} (an older file, or an "
                      f"edited metric): they are priced by their mean, so {cal.metric} budgets can be overrun; rewrite it: "
                      f"{rewrite_command(path, bundle.path)}", stacklevel=3)
    if warn and budget_ms < cheapest:  # the cheapest thresholds, and the budget overrun all the same
        warnings.warn(f"budget_ms {budget_ms:g} is below the cheapest point calibrated on {cal.device!r} "
                      f"({cheapest:.4g} ms a sample): every sample gets the cheapest thresholds and the budget is overrun",
                      stacklevel=3)
    elif warn:  # within the budget, not within its headroom
        warnings.warn(f"budget_ms {budget_ms:g} less the calibration's {100 * ctl.headroom:.3g}% headroom ({budget_ms * (1 - ctl.headroom):.4g} ms) "
                      f"is below the cheapest point calibrated on {cal.device!r} ({cheapest:.4g} ms a sample): every sample gets the "
                      "cheapest thresholds, without the headroom", stacklevel=3)
    return ctl
