"""Images unlike the calibration's: where a run's images stopped, against where the calibration's images stopped under
the same thresholds.

A latency budget and its accuracy hold for images like the ones it was calibrated on. Darker, blurred or noisier images,
or another kind of scene, leave the early exits less often: at fixed thresholds the cascade takes longer than the
calibration priced (the budget controller prices its rows at where recent images stopped, and so holds a budget by
stopping them earlier, at a cost in accuracy the calibration did not measure). ``predict`` and the webcam compare the
exits their images stopped at with the calibration's and say so when they differ.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from dvt_runtime.bundle import Bundle

__all__ = ["MIN_IMAGES", "UNLIKE", "exit_shift", "expected_shares", "recalibrate_command", "shift_note"]

MIN_IMAGES = 100  # images before a run's exit shares are compared (at 100, sampling alone moves a share by ~5 points)
UNLIKE = 0.15  # total variation distance between the run's and the calibration's exit shares that is said


def exit_shift(counts: Sequence[int], expected: Optional[Sequence[float]], bundle: "Bundle") -> Optional[dict[str, Any]]:
    """The run's exit shares (``counts`` per exit) against the calibration's (``expected``, fractions for the thresholds
    that ran), what each costs at the profiled price of stopping at each exit, and the command that calibrates on other
    images; None when there is nothing to compare (no calibration's thresholds ran, or no image was answered)."""
    cal = bundle.calibration
    exit_ms = cal.exit_mean_ms() if cal is not None else None
    n = int(sum(counts))
    if expected is None or n == 0 or len(expected) != len(counts):
        return None
    obs, exp = np.asarray(counts, dtype=np.float64) / n, np.asarray(expected, dtype=np.float64)
    if not (np.all(np.isfinite(exp)) and np.all(exp >= 0) and abs(exp.sum() - 1) < 1e-6):  # a damaged table row: no claim
        return None
    tv = float(0.5 * np.abs(obs - exp).sum())
    out = {"n": n, "exit_fractions": obs.tolist(), "expected_exit_fractions": exp.tolist(), "total_variation": tv,
           "unlike_calibration": bool(n >= MIN_IMAGES and tv >= UNLIKE), "priced_ms": None, "expected_priced_ms": None,
           "recalibrate": recalibrate_command(bundle)}
    if exit_ms is not None and len(exit_ms) == len(counts) and all(np.isfinite(exit_ms)):
        out["priced_ms"], out["expected_priced_ms"] = float(obs @ np.asarray(exit_ms)), float(exp @ np.asarray(exit_ms))
    return out


def shift_note(s: Optional[dict[str, Any]], noun: str = "images") -> str:
    """One line when :func:`exit_shift` found the images (``noun``: the webcam's frames) unlike the calibration's, else ''."""
    if not s or not s["unlike_calibration"]:
        return ""

    def pct(f: Sequence[float]) -> str:
        return " / ".join(f"{100 * v:.0f}" for v in f)

    e = len(s["exit_fractions"])
    cost = ""
    if s["priced_ms"] is not None and s["expected_priced_ms"]:
        ratio = s["priced_ms"] / s["expected_priced_ms"]
        cost = (f"; priced at the profile's stage times, {ratio:.2f}x the calibration's"
                + (": at fixed thresholds a latency budget cannot hold for them (a budget's controller stops them earlier)"
                   if ratio > 1.1 else ""))
    return (f"note: these {s['n']} {noun} stopped at exits 1-{e} {pct(s['exit_fractions'])}%, where the calibration's images "
            f"stopped {pct(s['expected_exit_fractions'])}% under the same thresholds{cost}: they are unlike the images the "
            f"device was calibrated on (darker, blurred, noisier, another kind of scene?), and so may be its accuracy. If these "
            f"are the images it will see, calibrate on labelled images like them: {s['recalibrate']}")


def expected_shares(bundle: "Bundle", thresholds: Optional[list] = None, budget_ms: Optional[float] = None,
                    deadline_ms: Optional[float] = None, choice: Optional[dict] = None) -> Optional[list]:
    """Where the calibration's images stopped (fractions per exit) under the thresholds a ``bundle.predict`` call with
    these arguments runs: the budget controller's row (asked before the call), or the calibration's chosen thresholds;
    None for thresholds no calibration measured (given ones, the manifest's, a deadline's). ``choice``: the budget row
    already asked for (:func:`dvt_runtime.runfacts.budget_choice`)."""
    cal = bundle.calibration
    if cal is None or thresholds is not None or deadline_ms is not None:
        return None
    if budget_ms is not None:  # the row predict's own call will take (a concurrent caller may move it: the statistic only)
        from dvt_runtime.runfacts import budget_choice

        shares = (choice or budget_choice(bundle, budget_ms))["exit_fractions"]
    else:
        shares = (cal.chosen.measured or cal.chosen.predicted).get("exit_fractions")
    ok = isinstance(shares, list) and len(shares) == bundle.num_exits and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in shares)
    return [float(v) for v in shares] if ok else None  # an edited file's row is no yardstick (and no crash after every image)


def recalibrate_command(bundle: "Bundle") -> str:
    """The calibrate command that rewrites the calibration ``bundle`` runs (its device, batch, budget), for other images."""
    from dvt_runtime.calibration import rewrite_command

    cal = bundle.calibration
    return "" if cal is None else rewrite_command(bundle.calibration_path(cal.device, cal.batch), bundle.path)
