"""The default thresholds a bundle's manifest carries: the checkpoint's own, else chosen on the verification images."""

from __future__ import annotations

from typing import Optional

import numpy as np

from dvt_edge.checkpoint import CheckpointInfo
from dvt_edge.export.common import ExportError
from dvt_edge.models import DVT
from dvt_runtime.bundle import softmax
from dvt_runtime.calnotes import class_loss_note, few_classes

__all__ = ["MIN_THRESHOLD_IMAGES", "THRESHOLD_TOLERANCE", "_default_thresholds"]

THRESHOLD_TOLERANCE = 0.2  # default thresholds: the cheapest point at most this many points below the best accuracy
MIN_THRESHOLD_IMAGES = 50  # fewer labelled images choose no default thresholds


def _default_thresholds(model: DVT, info: CheckpointInfo, ref_logits: Optional[list[np.ndarray]], labels,
                        origin: str = "PyTorch fp32", precision: str = "fp32") -> tuple[Optional[list], str]:
    """The checkpoint's own thresholds (its middle dynamic_threshold row, said 1-based), else the cheapest FLOPs point near
    the best accuracy on ``ref_logits``."""
    if info.thresholds is not None and info.thresholds.ndim == 2 and info.thresholds.shape[1] == model.num_exits:
        row = info.thresholds.shape[0] // 2
        t = [float(v) for v in info.thresholds[row]][:-1]  # the last exit always answers
        if not all(np.isfinite(t)):
            raise ExportError(f"the checkpoint's dynamic_threshold row {row + 1} holds non-finite values {t}: fix or drop "
                              "dynamic_threshold in the checkpoint (without it, thresholds are chosen on real images)")
        # a confidence is in [0, 1]: above 1 (MSDNet-style 1e8 for an exit no sample reaches) never stops, below 0 always does
        t = [None if v > 1.0 else max(v, 0.0) for v in t]
        shifted = (f"; the authors' fp32 thresholds, and {precision} shifts confidences: calibrate on the device (dvt_runtime.calibrate)"
                   if precision != "fp32" else "")
        return t + [None], f"checkpoint dynamic_threshold row {row + 1} of {info.thresholds.shape[0]}{shifted}"
    if ref_logits is None or labels is None:
        return None, "none (no labelled images of the model's classes to choose them on)"
    if len(labels) < MIN_THRESHOLD_IMAGES:  # 4 held-out photos chose 0, 0: every image left at exit 1, unsaid at predict time
        return None, (f"none (only {len(labels)} labelled images, fewer than {MIN_THRESHOLD_IMAGES}: too few to choose thresholds "
                      "on; every image runs to the last exit until this device is calibrated with dvt_runtime.calibrate)")
    from dvt_runtime.search import ExitOutputs, StageCosts, search_thresholds
    from dvt_runtime.stats import at_chance, chance_bar, majority_pct

    if few := few_classes(labels, [str(i) for i in range(model.cfg.num_classes)]):  # one class's images chose thresholds for all
        return None, (f"none ({few.split(' (')[0]}: thresholds chosen on them would be those classes' alone; every image runs to "
                      "the last exit until this device is calibrated with dvt_runtime.calibrate on images of every class)")
    right = np.asarray(ref_logits[-1]).argmax(-1) == np.asarray(labels)
    last = float(right.mean() * 100)
    top = majority_pct(labels, right)  # imbalanced labels answered as if one class: answering that one every time is chance
    if at_chance(last, model.cfg.num_classes, len(labels), top):  # random-noise images chose 0.33, 0.86 (the cascade 8 points down)
        return None, (f"none (the last exit scores {last:.1f}% on these {len(labels)} labelled images, at chance for "
                      f"{model.cfg.num_classes} classes{f' ({top:.1f}% of them one class)' if top > chance_bar(model.cfg.num_classes) else ''}: "
                      "their labels are not the model's, or they are not images like its own; "
                      "every image runs to the last exit until this device is calibrated with dvt_runtime.calibrate)")
    probs = np.stack([softmax(lg.astype(np.float64)) for lg in ref_logits])  # float64, as the runtime decides
    costs = StageCosts.from_cumulative([e.gflops for e in model.exits], unit="GFLOPs")
    outputs = ExitOutputs.from_probs(probs, labels)
    res = search_thresholds(outputs, costs, budget=costs.cumulative[-1] * (1 + 1e-9), algorithm="exact")
    best = max(p.accuracy for p in res.frontier)
    pick = min((p for p in res.frontier if p.accuracy >= best - THRESHOLD_TOLERANCE), key=lambda p: p.mean_cost)
    names = list(info.classes or []) if len(info.classes or []) == model.cfg.num_classes else [str(i) for i in range(model.cfg.num_classes)]
    lost = "".join(f"; {n}" for n in [class_loss_note(outputs, pick.thresholds, names).replace("on the holdout ", "on these images ")] if n)
    return pick.to_dict()["thresholds"], (f"cheapest FLOPs point within {THRESHOLD_TOLERANCE} points of the best accuracy on {len(labels)} "
                                          f"verification images ({origin}); re-calibrate on the device with dvt_runtime.calibrate{lost}")
