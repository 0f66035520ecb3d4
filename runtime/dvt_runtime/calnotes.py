"""The notes a calibration carries (and warns of): labels at chance, too few images or runs, classes the chosen
thresholds never answer, a saturated budget."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np

from dvt_runtime.calibration import CalibrationError
from dvt_runtime.checks import FEW_IMAGES
from dvt_runtime.console import shown
from dvt_runtime.runfacts import busy_reasons
from dvt_runtime.search import ExitOutputs, check_metric, class_losses, unanswered_classes
from dvt_runtime.stats import at_chance, chance_bar, majority_pct


def chance_note(hold: ExitOutputs, classes: int, allow_chance: bool) -> str:
    """When the last exit scores under the chance bar on the holdout, even at the top of its 95% interval (e.g. labels in
    another order): refused (nothing written: a good calibration of that device is kept), or with ``allow_chance`` a note
    and a warning; else ''."""
    top = majority_pct(hold.labels, hold.correct[-1])  # imbalanced labels, answered as if one class: that class's share
    if not at_chance(last := float(hold.correct[-1].mean() * 100), classes, hold.n_samples, top):
        return ""
    chance = (f"{last:.2f}% on the holdout, under {chance_bar(classes):.2f}% (chance is {100 / classes:.2f}%)" if top <= chance_bar(classes)
              else f"{last:.2f}% on the holdout, under the {top:.2f}% that answering its most frequent label every time would score")
    why = (f"the bundle's last exit scores {chance} on --data: its labels may not be this model's (another class order "
           "or label set) or its images not what the model saw; the thresholds chosen on them mean nothing. Check "
           "--data, e.g. with python -m dvt_runtime predict on a few of its images")
    if not allow_chance:
        raise CalibrationError(f"{why}; nothing was written (--allow-chance writes it anyway)")
    warnings.warn(why, stacklevel=3)
    return f"the last exit scores {chance}: thresholds chosen on it mean nothing"


def few_classes(labels, classes: Sequence[str]) -> str:
    """A note when labelled images hold few of the model's classes (one class, or under half of those a set of their
    size would hold at 20 images a class): thresholds chosen on them are that subset's, as confident as the exits are on
    those classes alone; '' otherwise. Said by calibrate and by the export's default thresholds."""
    labels = np.asarray(labels)
    present, k = int(np.unique(labels).size), len(classes)
    expected = min(k, max(2, labels.size // 20))  # a set of n images holds about n / 20 classes at least, at most all
    if k < 2 or not labels.size or (present > 1 and 2 * present >= expected):
        return ""
    names = ", ".join(shown(classes[int(c)]) for c in np.unique(labels)[:5]) + (" ..." if present > 5 else "")
    return (f"the labelled images hold {present} of the model's {k} classes ({names}): thresholds chosen on them are "
            "those classes' (how sure the exits are on the others' images was not seen); use images of every class the device "
            "will see")


def few_images(n_cal: int, n_hold: int, metric: str, runs: Optional[int] = None) -> str:
    """A note when the split is too small to trust: accuracies of a few hundred images move by points, and a
    percentile q needs about 10 / (1 - q) images above the median (10 / q below it), or it is their slowest (fastest);
    and when the profile has fewer than ``FEW_RUNS`` timed ``runs`` per stage (its percentiles are rough)."""
    from dvt_runtime.profile import FEW_RUNS

    notes = []
    if runs is not None and runs < FEW_RUNS:  # e.g. profile --runs 5, or an imported trace of a few runs: a p90 is their slowest
        notes.append(f"the latency profile has only {runs} timed run(s) for a stage: its percentiles are rough below {FEW_RUNS} "
                     "(profile 100 or more per stage: --runs)")
    if min(n_cal, n_hold) < FEW_IMAGES:  # images in all for FEW_IMAGES on the smaller side at this split's fractions
        need = math.ceil(FEW_IMAGES * (n_cal + n_hold) / max(1, min(n_cal, n_hold)))
        notes.append(f"only {n_cal} images to search thresholds on and {n_hold} to check them on: accuracies of so few "
                     f"move by points from one sample to the next; calibrate on {need} or more in all (--data)")
    q = check_metric(metric)  # None (the mean) or an exact fraction in (0, 100]
    tail = None if q is None or q in (0, 100) else (100 - q if q > 50 else q)
    if tail is not None and n_hold < (need := math.ceil(1000 / tail)):
        end = "slowest" if q > 50 else "fastest"
        at = math.ceil(q * n_hold / 100)  # the percentile's rank from the fastest (stats.percentile's)
        k = max(1, n_hold - at + 1 if q > 50 else at)
        rank = "their " + (end if k == 1 else f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')} {end}")
        notes.append(f"the {metric} of {n_hold} holdout images is {rank}: it needs {need} or more to be measured")
    return "; ".join(notes)


def unanswered_note(hold: ExitOutputs, thresholds: Sequence[float], classes: Sequence[str]) -> str:
    """A note naming the classes the chosen thresholds never answer right on the holdout (the last exit alone does); else ''."""
    lost = [shown(classes[k]) for k in unanswered_classes(hold, thresholds)]
    if not lost:
        return ""
    warnings.warn(msg := (f"the chosen thresholds never answer {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''} right on the "
                          "holdout (the last exit alone does): those images leave at an earlier exit that never predicts them; check "
                          "python -m dvt_edge.evaluate's per-class recall, or train with --class-weight balanced"), stacklevel=3)
    return msg


def class_loss_note(hold: ExitOutputs, thresholds: Sequence[float], classes: Sequence[str]) -> str:
    """A note naming the classes the chosen thresholds answer right far less often than the last exit alone on the
    holdout (:func:`dvt_runtime.search.class_losses`; those never answered are :func:`unanswered_note`'s); else ''."""
    never = set(unanswered_classes(hold, thresholds))
    lost = [d for d in class_losses(hold, thresholds) if d["label"] not in never]
    if not lost:
        return ""
    said = ", ".join(f"{shown(classes[d['label']])} {d['cascade']} of {d['n']} (the last exit alone {d['last']})" for d in lost[:5])
    return (f"on the holdout the chosen thresholds answer {said} right: their images leave at an earlier exit less often right on "
            "them (the overall accuracy chose the thresholds); check python -m dvt_edge.evaluate's per-class recall, train with "
            "--class-weight balanced, or give a higher budget")


def search_note(chosen, budget_ms: float, metric: str) -> str:
    """What the user should know about the chosen point (the search's own note, e.g. a budget above every
    exit in the budget's metric; saturated accuracy)."""
    notes = [chosen.info["note"]] if chosen.info.get("note") else []
    top = max(chosen.frontier, key=lambda p: p.accuracy) if chosen.frontier else None
    if top is not None and chosen.best.accuracy >= top.accuracy and chosen.best.mean_cost < 0.9 * budget_ms and metric == "mean":
        notes.append(f"accuracy saturates at {top.accuracy:.2f}% from {top.mean_cost:.4g} ms on the calibration split: "
                     f"the rest of the budget buys no accuracy, so it is not spent")
    return "; ".join(notes)


def busy_note(profiled: Optional[dict], measured: Optional[dict]) -> str:
    """The CPU busy while this host's stages were profiled (``profiled``: the profile's ``settings.contention``) or the
    holdout measured (``measured``: ``measure_cascade``'s): the prices, and so the thresholds, are this host's under that
    load (a budget left unspent when the load goes); '' when neither was (or the OS does not say)."""
    said = [f"profiling: {'; '.join(r)}" for r in [busy_reasons(profiled)] if r] + [
        f"measuring the holdout: {'; '.join(r)}" for r in [busy_reasons(measured)] if r]
    if not said:
        return ""
    return (f"the CPU was busy while calibrating ({' / '.join(said)}): the latencies, and the thresholds chosen for them, are "
            "this host's under that load; calibrate again with the device idle (and --threads at most its cores)")
