"""What a run's output file records of what ran, for an audit after the fact (``predict --out``, the webcam's stats).

An on-call engineer staging incidents from the files alone could not tell which bundle bytes ran (a re-export into the
same folder read the same), which calibration ran (recalibrated between two runs: the same words), or on which host and
versions (``device_name`` was null without a calibration).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from dvt_runtime.bundle import Bundle

__all__ = ["BUSY_PCT", "busy_reasons", "busy_run_note", "run_facts", "budget_choice"]

BUSY_PCT = 5.0  # a measurement that waited for a CPU (or lost it to a hypervisor) more than this share of its time is warned


def busy_reasons(c: Optional[dict]) -> list[str]:
    """How a measurement competed for the CPU (``device.contention_since``'s ``wait_pct`` / ``steal_pct``) beyond
    :data:`BUSY_PCT`, in words; [] when it did not, or the OS does not say. NaN is said (``not <=``)."""
    wait, steal = (c or {}).get("wait_pct"), (c or {}).get("steal_pct")
    return ([f"its threads waited for a CPU {wait:.1f}% of their runnable time (other processes, or more threads than cores)"]
            if wait is not None and not wait <= BUSY_PCT else []) + (
        [f"the hypervisor took {steal:.1f}% of the machine's CPU time"] if steal is not None and not steal <= BUSY_PCT else [])


def busy_run_note(c: Optional[dict], what: str) -> str:
    """A run's latencies taken on a busy CPU (``c``: ``device.contention_since``'s), said with the fix; '' when it was not
    (or the OS does not say). ``what``: the run, e.g. "predicting"."""
    if not (said := busy_reasons(c)):
        return ""
    return (f"the CPU was busy while {what} ({'; '.join(said)}): the latencies are this host's under that load, not the "
            "bundle's alone; run again with the device idle (and --threads at most its cores)")


def run_facts(bundle: "Bundle") -> dict[str, Any]:
    """``bundle_identity`` (the manifest's digest, its ``created`` and each artifact's SHA-256), ``calibration`` (the file
    that ran, when and how it was made, on which data; None when none ran) and ``device`` (this machine as a profile
    records it: host, CPU, cores, governor, dvt-runtime and backend versions)."""
    from dvt_runtime.device import device_facts

    m, cal = bundle.manifest, bundle.calibration
    return {
        "bundle_identity": {"content_sha256": m.content_sha256 or None, "created": m.created or None,
                            "artifacts": [e.sha256 for e in m.exits]},
        "calibration": None if cal is None else {
            "file": str(bundle.calibration_path(cal.device, cal.batch)), "device": cal.device, "created": cal.created or None,
            "command": cal.command or None, "data_sha256": (cal.data or {}).get("sha256"), "budget_ms": cal.budget_ms,
            "metric": cal.metric, "headroom": cal.headroom},
        "device": device_facts(bundle.threads, m.backend),
    }


def budget_choice(bundle: "Bundle", budget_ms: float) -> dict[str, Any]:
    """The budget controller's table row the next ``predict(budget_ms=)`` call runs (asked before the call; a concurrent
    caller may move it) and its speed estimate: ``thresholds``, ``exit_fractions`` (where the calibration's images
    stopped under them; None in older files), ``speed_scale`` (observed / profiled stage time) and ``mix_scale`` (the
    exit-mix estimate rows are priced at: 1 for images like the calibration's, see :mod:`dvt_runtime.controller`)."""
    from dvt_runtime.controller import controller_for

    ctl = controller_for(bundle, budget_ms)
    row = ctl.row(budget_ms)
    thr: list[Optional[float]] = [None if v is None else float(v) for v in row["thresholds"]]
    return {"thresholds": thr, "exit_fractions": row.get("exit_fractions"), "speed_scale": float(ctl.scale), "mix_scale": float(ctl.mix)}
