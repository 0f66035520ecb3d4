"""A device that runs only the runtime (a phone, a board without dvt-edge) in a bench report: its latency profile
(``dvt-runtime profile`` or ``profile import``) or its calibration (``dvt-runtime calibrate``), read as they are.

What such a section shows was measured on the device (per-stage latency) or predicted from it (the cascade at each
budget: the holdout images' exits, run on the host, priced by the device's per-stage latency); it says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

__all__ = ["DEVICE_SCHEMAS", "device_result", "device_markdown", "glance_markdown"]

#: the runtime's own files a report takes beside bench results
DEVICE_SCHEMAS = ("dvt-calibration/", "dvt-profile/")
_SOURCES = {"measured": "measured by dvt-runtime profile", "csv": "imported from a CSV", "json": "imported from a JSON file",
            "etdump": "imported from ExecuTorch ETDump traces"}


def device_result(d: dict, path: str) -> dict:
    """A calibration or latency profile as a report result (``mode: "device"``); ValueError naming ``path`` when malformed."""
    from dvt_runtime.calibration import CalibrationError, validate_calibration
    from dvt_runtime.latency import LatencyProfile
    from dvt_runtime.stats import ProfileError

    try:
        if d["schema"].startswith("dvt-calibration/"):
            validate_calibration(d, _beside(Path(path)))  # inside a bundle: made for its artifacts, as the runtime demands
            cal, prof = d, d["profile"]  # the profile's summary, as calibrate embedded it
        else:
            cal, prof = None, LatencyProfile.from_dict(d).summary()
    except (CalibrationError, ProfileError) as e:
        stale = " (the runtime refuses it too: recalibrate that device on this bundle)" if "re-exported" in str(e) else ""
        raise ValueError(f"{path}: {e}{stale}") from None
    b = (cal or prof).get("bundle") or {}
    dev = dict(prof["device"]) if isinstance(prof.get("device"), dict) else {}
    if cal is not None:  # a calibration is named after the device whose latencies priced it
        dev["device_name"] = cal.get("device") or dev.get("device_name")
    from dvt_edge.bench_report import SCHEMA

    return {"schema": SCHEMA, "schema_version": 1,  # a report of this result alone reads back as one
            "mode": "device", "file": str(path), "model": b.get("model") or "model not named", "target": b.get("target"),
            "precision": b.get("precision"), "device": dev, "threads": prof.get("threads"), "rows": [], "profile": prof,
            "calibration": cal}


def _beside(path: Path):
    """The manifest of the bundle a calibration file sits in (``<bundle>/calibration/<device>.json``), else None."""
    from dvt_runtime.manifest import Manifest, ManifestError

    if path.parent.name != "calibration" or not (path.parent.parent / "manifest.json").is_file():
        return None
    try:
        return Manifest.load(path.parent.parent, verify=False)  # its recorded hashes are what the calibration must name
    except ManifestError:
        return None  # a broken bundle is the runtime's to refuse; the file stands alone here


def _which(r: dict) -> str:
    """When the file was made and the artifacts it timed: two of one device (another checkpoint, a re-export) told apart."""
    src = r["calibration"] or r["profile"]
    arts = (src.get("bundle") or {}).get("artifacts") or []
    said = ([f"made {src['created']}"] if src.get("created") else []) + ([f"artifacts SHA-256 {' / '.join(str(a)[:12] for a in arts)}"] if arts else [])
    text = "; ".join(said)
    return f" {text[:1].upper()}{text[1:]}." if said else ""


def _ms(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def _pct(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _facts(dev: dict) -> str:
    keys = ("cpu_model", "board", "os", "backend", "backend_version", "power_mode")
    return ", ".join(f"{k} {dev[k]}" for k in keys if dev.get(k)) or "no device facts recorded"


def device_markdown(r: dict, device_label: str) -> list[str]:
    """The section of a device known from its profile or calibration."""
    prof, cal = r["profile"], r["calibration"]
    what = f"{r['target']} {r['precision']}" if r.get("target") else "(the profile names no bundle)"
    runs = min(int(s.get("n", 0)) for s in prof["stages"])
    out = [f"## {r['model']} {what} on {device_label}: from the device's {'calibration' if cal else 'latency profile'} "
           f"(`{r['file']}`)\n",
           f"Latency {_SOURCES.get(prof.get('source'), prof.get('source') or '?')}: {runs} timed runs per stage, batch "
           f"{prof.get('batch', 1)}, {prof.get('threads') or 'unstated'} thread(s); {_facts(r['device'])}.{_which(r)}\n",
           "| exit | stage p50 / p90 ms | to reach it, p50 / p90 ms |", "|---|---|---|"]
    cumulative = prof.get("cumulative") or [{}] * len(prof["stages"])
    for e, (s, c) in enumerate(zip(prof["stages"], cumulative)):
        out.append(f"| {e + 1} | {_ms(s.get('median'))} / {_ms(s.get('p90'))} | {_ms(c.get('median'))} / {_ms(c.get('p90'))} |")
    if cal is None:
        return out
    metric, ch = cal.get("metric", "mean"), cal["chosen"]
    key = "mean_ms" if metric == "mean" else f"{metric}_ms"
    extra = "" if metric == "mean" else f" {metric} ms |"
    out += [f"\nThe cascade at each {metric} budget, **predicted**: the exits of the {cal.get('n_calibration', '?')} calibration images "
            "(run on the host) priced by the latency above; nothing in this table was timed end to end on the device. A budget "
            "that buys nothing more is left out.\n",
            f"| budget ms | thresholds | accuracy % | mean ms |{extra} exits % |", "|---|---|---|---|" + ("---|" if extra else "") + "---|"]
    last = None
    for row in cal["table"]:
        if row["thresholds"] == last:  # the same point as the budget before (accuracy saturated)
            continue
        last, p = row["thresholds"], row["predicted"]
        thr = " / ".join("-" if t is None else f"{t:.4g}" for t in row["thresholds"][: len(prof["stages"]) - 1])  # the last exit answers
        fr = "/".join(f"{100 * q:.0f}" for q in p.get("exit_fractions") or [])
        out.append(f"| {_ms(row.get('budget_ms'))} | {thr} | {p['accuracy']:.2f} | {_ms(p['mean_ms'])} |"
                   + (f" {_ms(p.get(key))} |" if extra else "") + f" {fr} |")
    p, m = ch.get("predicted") or {}, ch.get("measured")
    line = (f"\nChosen for the {metric} budget {cal['budget_ms']:g} ms, on the {cal.get('n_holdout', '?')} holdout images: predicted "
            f"{_pct(p.get('accuracy'))}% at {metric} {_ms(p.get(key))} ms")
    if m:  # a calibration whose latencies were this host's was also run for real on it
        line += f"; measured on {cal.get('device')}: {_pct(m.get('accuracy'))}% at {metric} {_ms(m.get(key))} ms"
    if h := cal.get("headroom"):  # the table's budgets are what to pass; each row is priced at that less the headroom
        line += f"; thresholds searched for {_ms(ch.get('budget_ms'))} ms ({100 * h:.3g}% of every budget kept spare)"
    out.append(line + f" (latency: {cal.get('profile_source', '?')}).")
    return out


def glance_markdown(results: list[dict]) -> list[str]:
    """One line per device x target x precision: the p50 ms to reach each exit, side by side, with where it came from."""
    rows = []
    for r in results:
        dev = (r.get("device") or {}).get("device_name") or "?"
        if r.get("mode") == "device":
            if r["profile"].get("batch", 1) != 1:  # ms per image at batch N: not comparable with the rest
                continue
            cum = [c.get("median") for c in r["profile"].get("cumulative") or []]
            rows.append((dev, r["model"], r.get("target") or "?", r.get("precision") or "?", r.get("threads"), cum,
                         _SOURCES.get(r["profile"].get("source"), "?")))
            continue
        for row in r.get("rows", []):
            if row.get("status") == "ok" and row.get("static"):
                cum = [s.get("profile_p50_ms") for s in row["static"]]
            elif row.get("stages"):  # latency-only results
                cum = [s.get("cum_p50_ms") for s in row["stages"]]
            else:
                continue
            rows.append((dev, r["model"], row["target"], row["precision"], r.get("threads"), cum, "dvt-edge bench"))
    if len({row[0] for row in rows}) < 2:  # one device: its own sections say it all
        return []
    out = ["## At a glance: p50 ms to reach each exit, batch 1\n", "| device | model | target | prec | threads | exit 1 / 2 / ... | from |",
           "|---|---|---|---|---|---|---|"]
    for dev, model, target, prec, thr, cum, src in rows:
        out.append(f"| {dev} | {model} | {target} | {prec} | {thr or '-'} | {' / '.join(_ms(v) for v in cum)} | {src} |")
    return out + [""]




def busy_line(c: Optional[dict]) -> str:
    """A warning when the measurement competed for the CPU (``bench_bundle``'s ``contention``); "" otherwise or unknown."""
    from dvt_runtime.runfacts import busy_reasons

    parts = busy_reasons(c)
    return ("**Warning: the machine was busy during these measurements**: " + "; ".join(parts) + ". The latencies and speedups "
            "below may be off: rerun on an idle machine before trusting them.") if parts else ""
