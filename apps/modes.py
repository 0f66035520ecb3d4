"""How the webcam asks the runtime's cascade to run: default thresholds, a latency budget or a
per-frame deadline, with a clear fallback when the device's calibration is missing."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dvt_runtime.calibration import bundle_args
from dvt_runtime.console import quote_arg
from dvt_runtime.device import this_host

from .common import CALIBRATE_HINT, AppError, fmt_ms, warn

__all__ = ["Mode", "deadline_fits", "profile_stages", "setup_mode"]


@dataclass
class Mode:
    """How the cascade is asked to run: default thresholds, or a budget, or a deadline.

    ``active`` is False when a budget was asked for but cannot be honoured (no calibration):
    the cascade then runs with the default thresholds and frames are still counted against
    ``ms``.
    """

    kind: str = "none"  # none | budget | deadline
    ms: Optional[float] = None
    thresholds: Optional[list[Optional[float]]] = None  # explicit --thresholds
    active: bool = True
    source: str = ""  # where thresholds / p90s come from, for the overlay
    note: str = ""  # why the mode fell back, for stderr and the stats

    def predict_kwargs(self, spent_ms: float = 0.0) -> dict:
        """``Bundle.predict``'s arguments for a frame whose preprocessing took ``spent_ms`` (a deadline counts it)."""
        kw: dict = {}
        if self.thresholds is not None:
            kw["thresholds"] = self.thresholds
        if self.active and self.kind == "budget":
            kw["budget_ms"] = self.ms
        if self.active and self.kind == "deadline":
            kw["deadline_ms"], kw["spent_ms"] = self.ms, spent_ms
        return kw

    def scale(self, factor: float) -> bool:
        """Raise/lower the budget or deadline (the +/- keys); False when there is none."""
        if self.kind == "none" or self.ms is None:
            return False
        self.ms = float(self.ms * factor)
        return True

    def label(self) -> str:
        if self.kind == "none":
            return f"no budget | thresholds: {self.source}"
        text = f"{self.kind} {fmt_ms(self.ms)} ms"
        if not self.active:
            return text + " | UNCALIBRATED: default thresholds"
        return text + (f" | {self.source}" if self.source else "")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ms": self.ms, "thresholds": self.thresholds, "active": self.active, "source": self.source,
                "note": self.note}


def setup_mode(bundle, budget_ms: Optional[float] = None, deadline_ms: Optional[float] = None,
               thresholds: Optional[list] = None, profile_runs: int = 30) -> Mode:
    """Decide how ``bundle.predict`` is called, falling back clearly when calibration is missing."""
    cal_src = f"calibration {bundle.device_name}" if getattr(bundle, "calibration", None) is not None else "manifest"
    if budget_ms is not None and deadline_ms is not None:
        raise AppError("pass either --budget-ms or --deadline-ms, not both")
    if budget_ms is not None:
        return _budget_mode(bundle, float(budget_ms), thresholds, cal_src)
    if deadline_ms is not None:
        return _deadline_mode(bundle, float(deadline_ms), thresholds, cal_src, profile_runs)
    return Mode("none", None, thresholds, source="--thresholds" if thresholds is not None else cal_src)


def _limit_ms(flag: str, v) -> float:
    """The runtime's own check of a latency limit (finite, positive ms), as an AppError."""
    from dvt_runtime.bundle import positive_ms

    try:
        return positive_ms(flag, v)
    except ValueError as e:
        raise AppError(str(e)) from None


def _calibrate_hint(bundle, ms: Optional[float]) -> str:
    """How to calibrate this device: for a budget, at that budget; for a deadline (None), at a mean budget B of the
    user's choosing, whose per-stage p90s the deadline then uses."""
    # this host's calibration is found without a name (as predict's hint says); another name is given to both commands
    other = bundle.device_name and bundle.device_name != this_host()
    name = f" --device-name {quote_arg(bundle.device_name)}, then pass --device-name {quote_arg(bundle.device_name)} here" if other else ""
    hint = CALIBRATE_HINT.format(bundle_args=bundle_args(bundle.path, bundle.calibration_dir), ms="B" if ms is None else f"{ms:g}", name=name)
    return hint if ms is not None else hint + " (B: a mean latency; the deadline uses its per-stage p90s)"


def _budget_mode(bundle, budget_ms: float, thresholds: Optional[list], cal_src: str) -> Mode:
    """Budget mode when the device's calibration allows it, else the default thresholds (inactive, with a note)."""
    budget_ms = _limit_ms("--budget-ms", budget_ms)
    mode = Mode("budget", budget_ms, thresholds, source=cal_src)
    fallback_src = "--thresholds" if thresholds is not None else cal_src
    if getattr(bundle, "calibration", None) is None:
        mode.active, mode.source = False, fallback_src
        where = (f"no calibration for device {bundle.device_name!r}" if bundle.device_name else
                 "none for this host, the default, and no --device-name given")
        mode.note = (f"budget mode needs this device's calibration ({where}); running with the default thresholds. "
                     + _calibrate_hint(bundle, budget_ms))
        return mode
    try:  # a dry run: the controller needs the device's calibration (its Pareto table)
        bundle.predict(np.zeros((1,) + tuple(bundle.input_shape), np.float32), **mode.predict_kwargs())
    except (ValueError, ImportError, KeyError, TypeError) as e:
        mode.active, mode.source = False, fallback_src
        mode.note = f"budget mode unavailable ({e}); running with the default thresholds. " + _calibrate_hint(bundle, budget_ms)
    finally:
        bundle.reset_budget()  # start the controller fresh on the first real frame
    return mode


def _deadline_mode(bundle, deadline_ms: float, thresholds: Optional[list], cal_src: str, profile_runs: int) -> Mode:
    """Deadline mode on the calibration's per-stage p90s, or on p90s profiled here when there are none."""
    deadline_ms = _limit_ms("--deadline-ms", deadline_ms)
    mode = Mode("deadline", deadline_ms, thresholds, source=f"p90 {cal_src}")
    if getattr(bundle, "stage_p90_ms", None) is None:
        p90 = profile_stages(bundle, profile_runs)
        bundle.use_profile(p90)
        mode.source = "p90 profiled at start"
        mode.note = (f"no calibration with per-stage latencies: profiled the stages here ({profile_runs} runs, p90 "
                     f"{' / '.join(fmt_ms(v) for v in p90)} ms). " + _calibrate_hint(bundle, None))
    first = bundle.stage_p90_ms[0]
    if deadline_ms < first:  # exit 1 always runs: more than 1 frame in 10 takes longer than its p90
        warn(f"--deadline-ms {fmt_ms(deadline_ms)} is below exit 1's p90 ({fmt_ms(first)} ms), which every frame runs: "
             f"more than 1 frame in 10 will miss it; give at least {fmt_ms(first)} ms plus the frames' preprocessing")
    # said here in the flag's words: the runtime's own warning (in its argument's) would say it twice
    warnings.filterwarnings("ignore", message=r"a deadline_ms below exit 1's p90", category=UserWarning)
    return mode


def deadline_fits(bundle, mode: Mode, preprocess_ms: float) -> None:
    """Warn when the first frame's preprocessing (counted in a deadline) and exit 1's p90 already overrun it: a
    720p camera's crop and resize alone took 1.6 ms, and a 1.5 ms deadline was missed on every frame, unsaid."""
    first = bundle.stage_p90_ms[0] if mode.kind == "deadline" and bundle.stage_p90_ms else None
    if first is not None and first <= mode.ms < preprocess_ms + first:
        warn(f"--deadline-ms {fmt_ms(mode.ms)} counts each frame's preprocessing, {fmt_ms(preprocess_ms)} ms for this source's "
             f"frames, and exit 1's p90 is {fmt_ms(first)} ms: most frames will miss it; give at least "
             f"{fmt_ms(preprocess_ms + first)} ms, or a smaller frame")


def profile_stages(bundle, runs: int = 30) -> list[float]:
    """p90 latency (ms) of every stage on this machine: the runtime's profiler, ``runs`` chain runs after 2 warm-up runs."""
    from dvt_runtime.profile import MIN_RUNS, profile_bundle

    return profile_bundle(bundle, warmup=2, runs=max(int(runs), MIN_RUNS), progress=False).stage_p90()
