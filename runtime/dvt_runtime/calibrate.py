"""Calibrate a bundle's thresholds to a measured latency budget on this device.

    python -m dvt_runtime.calibrate --bundle B --data val.npz --budget-ms 0.4 [--metric mean|p90]
        [--headroom 0.1] [--profile P] [--algorithm exact|ga|sweep] [--device-name NAME]

1. runs the bundle's own artifacts on the validation set (int8/fp16 shift confidences:
   never reuse fp32 thresholds);
2. profiles each exit on this device (or takes ``--profile``, e.g. imported from a phone);
3. splits calibration/holdout, searches thresholds for the budget on the calibration half
   and builds a Pareto table of thresholds over budgets;
4. verifies by running the real cascade on the holdout and measuring accuracy and latency
   (skipped with ``--profile`` from another device: the host cannot measure that device);
5. writes ``calibration/<device>.json`` into the bundle (or ``--calibration-dir DIR``) atomically (nothing, when the last exit scores at chance on
   the holdout: labels of another class order; ``--allow-chance`` writes it anyway).
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from dvt_runtime.backends import PROVIDERS_HELP, BackendUnavailable, backend_version, parse_providers
from dvt_runtime.bundle import Bundle
from dvt_runtime.calibration import (  # noqa: F401  (re-exported)
    CALIBRATION_DIR_HELP,
    SCHEMA,
    BudgetRow,
    Calibration,
    CalibrationError,
    Chosen,
    bundle_identity,
    file_device,
    file_state,
    other_hosts_latencies,
    validate_calibration,
)
from dvt_runtime.calnotes import busy_note, chance_note, class_loss_note, few_classes, few_images, search_note, unanswered_note
from dvt_runtime.checks import positive_ms, setting_differences
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import join_args
from dvt_runtime.device import check_batch_memory, check_device_name, profiled_here, this_host  # noqa: F401  (re-exported)
from dvt_runtime.io import atomic_write_json, check_out_path, os_error_text, sha256_file
from dvt_runtime.latency import batch_note, load_profile_arg
from dvt_runtime.measure import (  # noqa: F401  (re-exported)
    NO_OVERHEAD,
    cascade_overhead_ms,
    exit_outputs,
    measure_cascade,
    measure_interleaved,
    recorded_overhead,
    with_overhead,
)
from dvt_runtime.npzsets import check_npz_preprocess, load_npz  # noqa: F401  (re-exported)
from dvt_runtime.search import (
    ALGORITHMS,
    ExitOutputs,
    StageCosts,
    check_budget_reachable,
    check_metric,
    evaluate_thresholds,
    frontier_table,
    metric_span,
    search_thresholds,
)
from dvt_runtime.stats import accuracy_interval, stratified_indices

if TYPE_CHECKING:
    from dvt_runtime.profile import LatencyProfile


__all__ = ["Fit", "calibrate", "fit", "format_result", "main", "CALIBRATION_DIR_HELP", "SCHEMA", "BudgetRow", "Calibration", "CalibrationError",
           "Chosen", "bundle_identity", "file_device", "file_state", "other_hosts_latencies", "validate_calibration", "check_batch_memory",
           "check_device_name", "profiled_here", "this_host", "NO_OVERHEAD", "cascade_overhead_ms", "exit_outputs", "measure_cascade",
           "measure_interleaved", "recorded_overhead", "with_overhead", "check_npz_preprocess", "load_npz"]  # with the re-exported

@dataclass
class Fit:
    """What a threshold search on a device stands on: measured stage costs and the artifacts' own
    outputs on labelled images, split into a calibration part and a holdout part."""

    profile: "LatencyProfile"
    measured_here: bool  # profiled here (else given, e.g. imported from a phone)
    overhead_ms: list[float]  # predict's own per-image cost beyond the stages, stopping at each exit (0s: another device's profile)
    costs: StageCosts  # per stage, in ms, that overhead included (cascade_overhead_ms, with_overhead)
    outputs: ExitOutputs  # every exit's max softmax and class on every image (N), with the labels
    cal_idx: np.ndarray  # indexes of the calibration images
    hold_idx: np.ndarray  # indexes of the holdout images
    cal: ExitOutputs
    hold: ExitOutputs
    on_this_host: bool = True  # the stage costs are this host's (measured now, or a given profile taken here): checkable here
    overhead_from: str = "measured here"  # or "the profile" (recorded with it), or "none" (a profile of another device without it)
    differs: tuple[str, ...] = ()  # how a profile taken on this host differs from the bundle's setting (threads, providers, version)


def fit(bundle: Bundle, x: np.ndarray, y: np.ndarray, holdout: float = 0.5, seed: int = 0, profile: Optional["LatencyProfile"] = None, runs: int = 200,
        warmup: int = 20, batch: int = 1, progress: bool = True, device_name: Optional[str] = None,
        check_costs: Optional[Callable[[StageCosts], None]] = None, stratified: bool = False) -> Fit:
    """Profile (unless ``profile`` is given), measure the cascade overhead, run every exit on ``x``
    and split the images (seeded): the one pipeline behind calibration and the benchmark. ``check_costs`` sees the
    stage costs before any exit runs (a budget they cannot meet is refused then). ``stratified``: each class split in
    the holdout's share (calibrate's: a user's 30 dogs had split 11 / 19); else a random split (the benchmark's halves,
    as every figure it has reported)."""
    from dvt_runtime.profile import profile_bundle

    measured_here = profile is None
    if profile is None:
        profile = profile_bundle(bundle, warmup=warmup, runs=runs, images=x[: min(len(x), max(64, 8 * batch))], progress=progress,
                                 batch=batch, device_name=device_name, overhead=True)
    if len(profile.stages) != bundle.num_exits:
        raise CalibrationError(f"profile has {len(profile.stages)} stages, the bundle {bundle.num_exits} exits")
    for i, st in enumerate(profile.stages):  # refused now, not after every exit has run (the file check would)
        for k in ("mean", "p90"):
            v = st.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise CalibrationError(f"profile stage {i + 1}: {k} must be a positive number of ms, got {v!r} (a clock too coarse "
                                       "for this stage reads 0: profile with a finer timer)")
    m, pb = bundle.manifest, profile.bundle if isinstance(profile.bundle, dict) else {}
    other = profile.other_bundle(m)
    if not measured_here and not any(k in pb for k in ("model", "target", "precision", "backend")):
        warnings.warn("the profile does not name the bundle it timed (imported without --bundle): nothing checks that its "
                      f"latencies are {m.model} {m.target}/{m.precision}'s; re-import it with "
                      "python -m dvt_runtime.profile import ... --bundle B", stacklevel=3)
    if other:  # another bundle's latencies would price these thresholds
        raise CalibrationError(f"the profile was measured on another bundle ({', '.join(f'{k} {v!r}' for k, v in other.items())}; "
                               f"this one is {m.model} {m.target}/{m.precision}): profile this bundle on the device")
    if profile.batch != batch:
        raise CalibrationError(f"the profile was measured at batch {profile.batch}, not {batch}: profile at --batch {batch} "
                               "or calibrate at the profile's batch")
    # its latencies are this host's at this bundle's setting (None: the backend's default, as a bundle opened with 0 or None)
    # at another setting (threads, execution providers: a CUDA profile on a CPU session, the backend's version) they are not
    differ = setting_differences(profile.threads, profile.device, bundle.threads, bundle.providers, backend_version(m.backend))
    here = measured_here or (profiled_here(profile) and not differ)
    if not here and profiled_here(profile):  # this host's profile at another setting: said now, not only in the file's note
        warnings.warn(f"the profile was taken on this host at {'; '.join(differ)}: it prices the thresholds, which cannot be "
                      f"measured here at this setting; calibrate as it was profiled (--threads {profile.threads or 0}, its execution "
                      "providers, power mode and governor), or profile at the setting the device will run", stacklevel=3)
    recorded = recorded_overhead(profile, bundle.num_exits)  # measured with the profile, on its device (None: not recorded)
    overhead = recorded if recorded is not None else cascade_overhead_ms(bundle, x, batch=batch) if here else [0.0] * bundle.num_exits
    overhead_from = "the profile" if recorded is not None else "measured here" if here else "none"
    costs = with_overhead(profile.stage_costs(), overhead)
    if check_costs is not None:
        check_costs(costs)
    outputs = exit_outputs(bundle, x, y, progress)
    n_hold = max(1, int(round(len(x) * holdout)))
    if stratified:
        hold_idx = stratified_indices(y, n_hold, seed)
        cal_idx = np.random.default_rng([seed, 2]).permutation(np.setdiff1d(np.arange(len(x)), hold_idx))
    else:
        perm = np.random.default_rng(seed).permutation(len(x))
        cal_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    return Fit(profile, measured_here, overhead, costs, outputs, cal_idx, hold_idx, outputs.take(cal_idx), outputs.take(hold_idx), here,
               overhead_from, tuple(differ))


def _a_calibration(path: Path) -> bool:
    """Whether ``path`` is a calibration file, whole or damaged (its schema leads it): one calibrate may replace, as advised."""
    try:
        with open(path, "rb") as f:
            return b'"dvt-calibration/' in f.read(4096)
    except OSError:
        return False


def _check_reachable(costs: StageCosts, budget_ms: float, metric: str, seed: int, device_name: str, headroom: float = 0.0) -> None:
    """A budget (less its headroom) below every image stopping at exit 1 (in the budget's metric), refused before any exit runs."""
    priced = budget_ms * (1 - headroom)
    spare = f" less its {100 * headroom:.3g}% headroom ({priced:.4g} ms)" if headroom else ""
    if metric == "mean" and priced < (cheapest := float(costs.cumulative[0])) * (1 - 1e-9):
        raise CalibrationError(f"budget {budget_ms:g} ms{spare} is below the cheapest possible mean latency on {device_name}: "
                               f"exit 1 alone takes {cheapest:.4g} ms; ask for at least {cheapest / (1 - headroom):.4g} ms"
                               + (" or a smaller --headroom" if headroom else ""))
    try:
        if metric != "mean":  # a percentile's floor: every image at exit 1, priced by the search's own cost model
            check_budget_reachable(costs, priced, metric, seed)
    except ValueError as e:
        raise CalibrationError(f"on {device_name}{': the budget' + spare if spare else ''}: {e}") from None


def calibrate(bundle: Bundle, x: np.ndarray, y: np.ndarray, budget_ms: float, metric: str = "mean", profile: Optional["LatencyProfile"] = None,
              algorithm: str = "exact", device_name: Optional[str] = None, holdout: float = 0.5, seed: int = 0,
              runs: int = 200, warmup: int = 20, verify: bool = True, progress: bool = True, batch: int = 1,
              data: Optional[dict] = None, command: str = "", headroom: float = 0.0, allow_chance: bool = False) -> Calibration:
    """Search thresholds for ``budget_ms`` on measured latency, verify on a holdout, write the file.

    ``headroom`` (in [0, 1)) keeps that share of the budget spare for the device's run-to-run spread: thresholds are searched
    for ``budget_ms * (1 - headroom)``, and ``predict(budget_ms=)`` keeps the same share of every budget. A last exit scoring
    at chance on the holdout (labels of another class order) is refused unless ``allow_chance``.

    ``batch`` > 1 calibrates for throughput: the budget is ms per image when ``batch`` images go through ``predict``
    together (stages profiled at that batch size). ``data`` (e.g. ``{"path", "sha256"}``) and ``command`` say in the file
    what it was made from. ``bundle`` then uses the new file when its latencies are this host's or the bundle ran that
    device's file; another device's file is left for that device (``device_name=`` there) and this bundle keeps what it ran.
    """
    device_name = _device_for(profile, device_name)
    x, y = np.asarray(x), np.asarray(y)  # lists from the Python API (a list y failed deep inside: no attribute 'max')
    _check_request(bundle, x, y, budget_ms, algorithm, device_name, holdout, batch, metric, seed, headroom)
    budget_ms, seed, headroom = float(budget_ms), int(seed), float(headroom)  # numpy numbers from the Python API: plain ones in the file
    priced = budget_ms * (1 - headroom)  # what the thresholds are searched for
    target = bundle.calibration_path(device_name, batch)
    if profile is None and (theirs := other_hosts_latencies(target)):  # a phone's figures replaced by this host's, under its name
        raise CalibrationError(f"{target} holds {device_name}'s latencies, {theirs}: measuring here would replace them with this "
                               f"host's under that name. Calibrate {device_name} with its profile (--profile), this host under "
                               "its own --device-name, or delete that file first to replace it")
    before = file_state(target)  # another calibration of this device finishing meanwhile is said, not silently replaced
    f = fit(bundle, x, y, holdout=holdout, seed=seed, profile=profile, runs=runs, warmup=warmup, batch=batch, progress=progress, stratified=True,
            device_name=device_name, check_costs=lambda c: _check_reachable(c, budget_ms, metric, seed, device_name, headroom))
    costs = f.costs
    chance = chance_note(f.hold, len(bundle.classes), allow_chance)  # refused here, before the search and the measurement
    try:
        chosen = search_thresholds(f.cal, costs, priced, metric=metric, algorithm=algorithm, seed=seed)
    except ValueError as e:
        raise CalibrationError(str(e)) from None
    thr = chosen.best.to_dict()["thresholds"]
    predicted = evaluate_thresholds(f.hold, None, chosen.best.thresholds, costs, metric=metric, seed=seed)
    searched = evaluate_thresholds(f.cal, None, chosen.best.thresholds, costs, metric=metric, seed=seed)  # the half it was chosen on
    # a p90 is one image's latency: at batch > 1 each image waits for its whole call, so there is none to predict
    p90 = evaluate_thresholds(f.hold, None, chosen.best.thresholds, costs, metric="p90", seed=seed) if costs.samples and batch == 1 else None
    result = Calibration(
        device=device_name, bundle=bundle_identity(bundle.manifest), profile=f.profile.summary(),
        table=_pareto_table(f.cal, costs, metric, seed, headroom), budget_ms=budget_ms, metric=metric, algorithm=algorithm, batch=int(batch),
        headroom=headroom, chosen=Chosen(thr, priced, {"accuracy": predicted.accuracy, "mean_ms": predicted.mean_cost,
                                       "p90_ms": p90.cost if p90 else None, "exit_fractions": np.asarray(predicted.exit_fractions).tolist(),
                                       "on": "holdout outputs x profiled latency",
                                       "calibration_accuracy": searched.accuracy, **({} if metric == "mean" else {f"{metric}_ms": predicted.cost})}),
        budget_unit="ms per image" if batch > 1 else "ms per image (batch 1)",
        profile_source="measured here" if f.measured_here else "given (--profile" + (", taken on this host)" if f.on_this_host else ")"),
        cascade_overhead_ms=f.overhead_ms[0], cascade_overhead_ms_per_exit=f.overhead_ms, seed=seed, holdout=float(holdout),
        data=dict(data or {}), command=command,
        n_calibration=len(f.cal_idx), n_holdout=len(f.hold_idx), note=search_note(chosen, priced, metric),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if verify and f.on_this_host:
        result.chosen.measured = measure_cascade(bundle, x[f.hold_idx], y[f.hold_idx], thr, warmup=warmup, batch=batch, metric=metric)
    elif verify:
        why = (f"taken on this host at {'; '.join(f.differs)}: not measured here (calibrate as it was profiled, --threads "
               f"{f.profile.threads or 0}, its providers, power mode and governor, to measure it)" if profiled_here(f.profile)
               else "verify on that device")
        result.note = (result.note + "; " if result.note else "") + f"latency from the given profile ({device_name}): {why}"
    result.note = "; ".join(n for n in (result.note, *_notes(f, bundle, chosen.best.thresholds, metric, result.chosen.measured, chance)) if n)
    d = result.to_dict()
    validate_calibration(d, bundle.manifest)  # before writing: never a file that would stop this bundle opening
    if file_state(target) != before:
        warnings.warn(f"{target} was written by another calibration while this one ran: this one replaces it (the last to finish "
                      "wins); calibrate a device once at a time", stacklevel=2)
    try:  # strict JSON: a NaN anywhere (e.g. a measured figure) would make a file other tools cannot read
        atomic_write_json(target, d, allow_nan=False, keep="calibration's thresholds and measurements")
    except ValueError as e:
        raise CalibrationError(f"the calibration holds a non-finite number ({e}): nothing was written; re-run the calibration") from None
    cal = bundle.calibration  # this host's file (or the one the bundle runs, rewritten) is used from now on; a phone's is the phone's
    if f.on_this_host or profiled_here(f.profile) or (cal is not None and (cal.device, cal.batch) == (device_name, batch)):
        with warnings.catch_warnings():  # another setting's latencies were said above, in the note
            warnings.filterwarnings("always" if f.on_this_host else "ignore", message=".* at another setting ")
            bundle.use_calibration(device_name, batch=batch)
    return result


def _notes(f: Fit, bundle: Bundle, thresholds: Sequence, metric: str, measured: Optional[dict], chance: str) -> tuple[str, ...]:
    """What a calibration's note says of how far it can be trusted: few images or runs, no overhead priced, ``chance``
    (:func:`chance_note`), few classes, classes its thresholds never answer or answer far less often than the last exit
    alone, a busy CPU while it was profiled or measured ('' where not)."""
    runs = min(int(s.get("n", 0)) for s in f.profile.stages)
    return (few_images(len(f.cal_idx), len(f.hold_idx), metric, runs), few_classes(f.outputs.labels, bundle.classes),
            NO_OVERHEAD if f.overhead_from == "none" else "", chance,
            unanswered_note(f.hold, thresholds, bundle.classes), class_loss_note(f.hold, thresholds, bundle.classes),
            busy_note((f.profile.settings or {}).get("contention") if f.measured_here else None, (measured or {}).get("contention")))


def _device_for(profile, device_name: Optional[str]) -> str:
    """The device a calibration is named after: this host (or ``device_name``) when it measures; with a
    given profile, the device that profile was measured on (this host's own file is never replaced by
    another device's thresholds)."""
    if device_name is not None:  # before '' falls back to this host's name; a profile's name is checked in _check_request
        check_device_name(device_name, CalibrationError)
    if profile is None:
        return device_name or this_host()
    theirs = profile.device.get("device_name") if isinstance(profile.device, dict) else None
    if device_name and theirs and device_name != theirs:
        raise CalibrationError(f"--device-name {device_name!r}, but the profile was measured on {theirs!r}: a calibration is "
                               f"named after the device whose latencies priced it; drop --device-name (it is then {theirs!r})")
    if not (device_name or theirs):
        raise CalibrationError("the profile names no device: pass --device-name NAME, the device it was measured on "
                               "(this host's name would replace this host's own calibration)")
    return str(device_name or theirs)


def _check_request(bundle: Bundle, x: np.ndarray, y: np.ndarray, budget_ms: float, algorithm: str, device_name: str,
                   holdout: float, batch: int, metric: str = "mean", seed: int = 0, headroom: float = 0.0) -> None:
    """CalibrationError for a request that cannot be calibrated, before anything is measured."""
    if algorithm not in ALGORITHMS:
        raise CalibrationError(f"unknown algorithm {algorithm!r}; valid: {list(ALGORITHMS)}")
    try:
        check_metric(metric)
    except ValueError as e:
        raise CalibrationError(f"--metric: {e}") from None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CalibrationError(f"seed (--seed) must be a whole number >= 0, got {seed!r}")
    try:
        positive_ms("budget", budget_ms)
    except ValueError:
        raise CalibrationError(f"budget (--budget-ms) must be a positive number of milliseconds, got {budget_ms!r}") from None
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float, np.number)) or not 0 <= headroom < 1:  # NaN fails too
        raise CalibrationError(f"headroom (--headroom) must be a fraction of the budget in [0, 1) (e.g. 0.1 keeps a tenth spare), got {headroom!r}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise CalibrationError(f"batch (--batch) must be a whole number of images per call >= 1, got {batch!r}")
    if batch > 1 and metric != "mean":  # the search prices each image's own stages; a batch's images all wait for its call
        raise CalibrationError(f"--metric {metric} with --batch {batch}: a percentile budget is one image's latency, which a call of "
                               f"{batch} images does not have (each waits for the whole call); calibrate throughput with --metric "
                               "mean at --batch N, or a latency percentile at --batch 1")
    check_device_name(device_name, CalibrationError)  # also a name taken from a given profile ('x-batch8' too)
    target = bundle.calibration_path(device_name, batch)
    theirs = file_device(target)
    if theirs is not None and theirs != device_name:  # e.g. 'lap top' and 'lap_top' share a file name
        raise CalibrationError(f"{target} holds device {theirs!r}'s calibration, which this one would replace: choose a "
                               f"device name that differs from {theirs!r} in a letter or digit")
    if target.parent == bundle.path / "calibration" and target.parent.is_symlink():  # a shipped calibration/ -> elsewhere: any folder
        raise CalibrationError(f"{target.parent} is a link (to {os.path.realpath(target.parent)}): calibrations are written inside "
                               "the bundle, not through links; replace the link with a plain folder, or give that folder as --calibration-dir")
    try:  # a read-only bundle (a system folder, an image mount) was found only when the work was done
        check_out_path(target, "calibration file", fix="calibrate into a writable folder (--calibration-dir DIR, then predict "
                       "--calibration-dir DIR), or a writable copy of the bundle (cp -r keeps read-only modes: chmod -R u+w the copy)",
                       example=None)
    except ValueError as e:
        raise CalibrationError(str(e)) from None
    if (target.exists() or target.is_symlink()) and not _a_calibration(target):  # a user's notes of that name are not replaced
        raise CalibrationError(f"{target} exists and is not a calibration (it would be replaced): move it away, or calibrate under "
                               "another --device-name")
    if not 0 < holdout < 1:
        raise CalibrationError(f"holdout (--holdout) must be a fraction in (0, 1), got {holdout}")
    if len(x) < 4:
        raise CalibrationError(f"need at least 4 validation images, got {len(x)}")
    n_hold = max(1, int(round(len(x) * holdout)))  # as fit() splits
    if n_hold > len(x) - 1:
        raise CalibrationError(f"holdout {holdout} of {len(x)} images leaves none to search thresholds on: "
                               f"lower --holdout (at most {math.floor((len(x) - 1) / len(x) * 1e4) / 1e4:g} here) or pass more images")
    if int(y.max()) >= len(bundle.classes) or int(y.min()) < 0:
        raise CalibrationError(f"labels must be in 0..{len(bundle.classes) - 1} for this bundle's classes")


def _pareto_table(cal: ExitOutputs, costs: StageCosts, metric: str = "mean", seed: int = 0, headroom: float = 0.0) -> list[BudgetRow]:
    """Best thresholds (exact search) over a grid of budgets from exit 1 to the last exit, in the calibration's
    ``metric``: a p90 calibration's rows are priced (and the controller compares budgets with) their p90. A row's
    ``budget_ms`` is the budget to pass to ``predict`` for it: its priced budget with the ``headroom`` added back."""
    # the metric's own span: everything at exit 1 .. everything at the last exit
    lo, hi = ((float(costs.cumulative[0]), float(costs.cumulative[-1])) if metric == "mean"
              else metric_span(costs, metric, cal.n_samples, cal.n_exits, seed))
    grid = [float(b) for b in np.linspace(lo, max(lo, hi), 24)]
    table = []
    for res in frontier_table(cal, costs, grid, metric=metric, algorithm="exact", seed=seed):
        b = res.best
        pred = {"accuracy": b.accuracy, "mean_ms": b.mean_cost, "exit_fractions": np.asarray(b.exit_fractions).tolist()}
        if metric != "mean":
            pred[f"{metric}_ms"] = b.cost
        table.append(BudgetRow(res.budget / (1 - headroom), b.to_dict()["thresholds"], pred))
    return table


def _budget_line(r: Calibration, m: dict, what: str = "measured") -> str:
    """The ``what`` (measured, or predicted from a given profile) figure of the budget's own metric (mean or a
    percentile) against the budget, and a warning when the holdout is over it (NaN counts as over)."""
    key = "mean_ms" if r.metric == "mean" else f"{r.metric}_ms"
    v = m.get(key)
    if v is None:  # a percentile the measurement does not record: say so rather than compare the mean
        return f"{what} {r.metric}: not recorded (mean {m['mean_ms']:.3f} ms; {r.n_holdout} holdout images)"
    line = f"{what} {r.metric} {v:.3f} ms is {100 * (v / r.budget_ms - 1):+.1f}% vs the {r.metric} budget ({r.n_holdout} holdout images)"
    if r.headroom:
        line += f"; thresholds searched for {r.chosen.budget_ms:.4g} ms ({100 * r.headroom:.3g}% headroom)"
    if not v <= r.budget_ms:
        line += (f"\nWARNING: over the budget on the holdout images ({what}): the {r.metric} chosen on the calibration split "
                 "does not hold on these; lower --budget-ms, keep some of it spare (--headroom), or calibrate with more images")
    return line


def format_result(r: Calibration) -> str:
    c = r.chosen
    p, m = c.predicted, c.measured
    lines = [f"calibration of {r.bundle['model']} {r.bundle['target']}/{r.bundle['precision']} for device {r.device} "
             f"({r.metric} budget {r.budget_ms:g} ms" + (f" per image at batch {r.batch}; no p90: each image waits for its whole call" if r.batch > 1 else "")
             + (f", {100 * r.headroom:.3g}% kept spare" if r.headroom else "") + f", {r.algorithm}, profile {r.profile_source})"]
    st = r.profile["stages"]
    lines.append("stage latency (ms): " + ", ".join(f"exit {i + 1} p50 {s['median']:.3f} p90 {s['p90']:.3f}" for i, s in enumerate(st)))
    exact = ",".join("-" if t is None else repr(float(t)) for t in c.thresholds[:-1])  # rounded, an image at the edge changed exit
    which = "exit 1" if len(c.thresholds) == 2 else f"exits 1-{len(c.thresholds) - 1}"  # a calibrated bundle has 2 or more
    lines.append(f"thresholds of {which} (unrounded, as --thresholds; '-' or 'none' never stops there): {exact}")
    lines.append(f"{'':>10} {'accuracy %':>10} {'mean ms':>9} {'p90 ms':>8}  exits taken %")
    fr = lambda f: " / ".join(f"{100 * v:.0f}" for v in f)
    p90 = lambda d: "-" if r.batch > 1 or d.get("p90_ms") is None else f"{d['p90_ms']:.3f}"  # at batch > 1 none (the budget's note)
    lines.append(f"{'predicted':>10} {p['accuracy']:>10.2f} {p['mean_ms']:>9.3f} {p90(p):>8}  {fr(p['exit_fractions'])}")
    if m:
        lines.append(f"{'measured':>10} {m['accuracy']:>10.2f} {m['mean_ms']:>9.3f} {p90(m):>8}  {fr(m['exit_fractions'])}")
    lo, hi = accuracy_interval((m or p)["accuracy"], r.n_holdout)  # where the thresholds' own accuracy lies (95%)
    lines.append(f"accuracy on {r.n_holdout} holdout images: 95% interval {lo:.2f}-{hi:.2f}% (Wilson)")
    lines.append(_budget_line(r, m) if m else _budget_line(r, p, "predicted"))  # from a given profile: the predicted figure
    if r.note:
        lines.append(f"note: {r.note}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = Parser(prog=command_name("python -m dvt_runtime.calibrate"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--bundle", required=True, help="bundle directory (manifest.json + one artifact per exit)")
    ap.add_argument("--data", required=True, help="labelled .npz: 'images' uint8 (N, H, W[, C], BGR) or preprocessed float32 "
                    "(N, C, H, W; python -m dvt_edge.data export), 'labels' (N,) class indices")
    ap.add_argument("--budget-ms", type=float, required=True,
                    help="latency budget in ms per image (--metric says which statistic: the mean or a percentile)")
    ap.add_argument("--metric", default="mean", help="mean or a percentile such as p90")
    ap.add_argument("--headroom", type=float, default=0.0, metavar="F",
                    help="fraction of the budget kept spare, in [0, 1): thresholds are searched for budget x (1 - F), and "
                    "predict(budget_ms=) keeps the same share (default 0: the search spends the whole budget; e.g. 0.1 for a "
                    "device whose latencies vary from run to run)")
    ap.add_argument("--profile", default=None, help="latency profile JSON (e.g. imported from a phone); default: profile here")
    ap.add_argument("--algorithm", default="exact", help=f"one of {list(ALGORITHMS)}: the search for the chosen thresholds (the "
                    "file's table of budgets, which predict(budget_ms=) reads, is the exact search's)")
    ap.add_argument("--device-name", default=None,
                    help="the device the calibration is for (default: this host's name; with --profile, the device it names)")
    ap.add_argument("--calibration-dir", default=None, metavar="DIR", help=CALIBRATION_DIR_HELP)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1; 0: the backend's default, every core)")
    ap.add_argument("--providers", default=None, help=PROVIDERS_HELP)
    ap.add_argument("--holdout", type=float, default=0.5,
                    help="fraction of --data kept out of the search, to verify the thresholds on (default 0.5)")
    ap.add_argument("--runs", type=int, default=200, help="profiling runs per stage (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration/holdout split (and of the ga search; default 0)")
    ap.add_argument("--batch", type=int, default=1, help="images per predict call; > 1: the budget is ms per image at that batch (throughput)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--allow-chance", action="store_true", help="write the calibration even when the last exit scores under the chance "
                    "bar on the holdout, at the top of its 95%% interval (twice chance; refused by default: the labels are likely "
                    "not the model's)")
    args = ap.parse_args(argv)
    if args.threads < 0:  # 0: the backend's default, as predict takes it (a deployment at 0 is calibrated at 0)
        ap.error(f"--threads must be >= 1, or 0 for the backend's default, got {args.threads}")
    try:
        bundle = Bundle.open(args.bundle, threads=args.threads, providers=parse_providers(args.providers), device_name="",
                             calibration_dir=args.calibration_dir)
        if note := batch_note(bundle, args.batch):
            print(note, file=sys.stderr)
        x, y = load_npz(args.data, bundle.manifest.preprocess, bundle.classes)
        profile = load_profile_arg(args.profile) if args.profile else None
        data = {"path": os.path.abspath(src := args.data.removeprefix("npz:")), "sha256": sha256_file(src), "n": len(x)}  # npz: as on the host
        command = f"{command_name('python -m dvt_runtime.calibrate')} {join_args(sys.argv[1:] if argv is None else argv)}"
        r = calibrate(bundle, x, y, args.budget_ms, args.metric, profile, args.algorithm, args.device_name,
                      args.holdout, args.seed, args.runs, batch=args.batch, progress=not args.no_progress, data=data, command=command,
                      headroom=args.headroom, allow_chance=args.allow_chance)
    except (ValueError, OSError, BackendUnavailable) as e:  # CalibrationError, ManifestError, ProfileError are ValueErrors
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    lines = format_result(r).splitlines()
    print("\n".join(lines))
    both_on_terminal = all(getattr(f, "isatty", lambda: False)() for f in (sys.stdout, sys.stderr))  # printed twice otherwise
    for ln in lines if not both_on_terminal else []:  # a budget overrun on the holdout: on stderr as well, where a script looks
        if ln.startswith("WARNING:"):
            print(ln, file=sys.stderr)
    print(f"wrote {bundle.calibration_path(r.device, r.batch)}")
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
