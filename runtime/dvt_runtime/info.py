"""``dvt-runtime info``: what a bundle is and how far it was checked, from its files alone (torch-free; no backend loaded).

    dvt-runtime info --bundle B            # model, target and precision, each exit's size, int8 scheme and accuracy
    dvt-runtime info --bundle B --json     # the same as JSON (schema dvt-bundle-info)

The manifest's own record: the classes and input, each exit's artifact (size, GFLOPs, what int8 quantized), what the
export verified (each exit's top-1 against PyTorch fp32 on its real images, the agreement, passed or not and why), the
default thresholds and where they came from, and every calibration in the bundle (its device, budget and whether this
bundle can use it). The artifacts' SHA-256 are checked as opening the bundle checks them; the backend is only named.
"""

from __future__ import annotations

import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from dvt_runtime.backends import _EXTRA, available_backends, install_hint
from dvt_runtime.calibration import CalibrationError, calibration_files, read_calibration
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import shown
from dvt_runtime.manifest import Manifest, ManifestError

__all__ = ["SCHEMA", "bundle_info", "format_info", "main"]

SCHEMA, SCHEMA_VERSION = "dvt-bundle-info", 1


def _calibrations(path: Path, m: Manifest) -> list[dict[str, Any]]:
    """Each file under ``calibration/``: its device, budget and metric, and whether this bundle can use it (why not)."""
    out = []
    for f in calibration_files(path / "calibration"):
        row: dict[str, Any] = {"file": f.name, "usable": False, "device": None, "budget_ms": None, "metric": None,
                               "created": None, "problem": None, "notes": []}
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                cal = read_calibration(f, m, path)
            row.update(usable=True, device=cal.device, budget_ms=cal.budget_ms, metric=cal.metric, created=cal.created or None,
                       batch=cal.batch, notes=[str(w.message) for w in said])
        except (CalibrationError, OSError) as e:
            row["problem"] = str(e)
        out.append(row)
    return out


def bundle_info(path: str) -> dict[str, Any]:
    """The info dict of the bundle at ``path``; a ManifestError when its manifest or artifacts fail their checks."""
    p = Path(path)
    m = Manifest.load(p)  # the manifest's digest and every artifact's SHA-256: the files are the ones exported
    par = m.parity
    exits = []
    for e in m.exits:
        row = par.exits[e.index] if par is not None and e.index < len(par.exits) else None
        q = e.quantization or {}
        exits.append({"exit": e.index + 1, "artifact": e.artifact, "size_kb": round(e.size_bytes / 1024, 1), "grid": e.grid,
                      "gflops": e.gflops, "scheme": q.get("scheme") if q.get("scheme") not in (None, "none") else None,
                      "quantized_weights": sum(v for v in (q.get("quantized_weights") or {}).values() if isinstance(v, int)) or None,
                      "top1_artifact": row.top1_artifact if row else None, "top1_pytorch": row.top1_pytorch if row else None,
                      "top1_agreement": row.top1_agreement if row else None, "max_abs_diff_real": row.max_abs_diff_real if row else None})
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "bundle": str(p),
        "model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend,
        "backend_here": m.backend in available_backends(), "created": m.created or None,
        "classes": list(m.classes), "input": {"size": m.preprocess.size, "channels": m.preprocess.channels,
                                             "resize": m.preprocess.resize, "interpolation": m.preprocess.interpolation},
        "max_batch": m.max_batch, "exits": exits,
        "verification": None if par is None else {"checked": par.checked, "passed": par.passed, "n_real": par.n_real,
                                                   "runtime": par.runtime, "data": par.data, "problems": list(par.problems),
                                                   "note": par.note},
        "thresholds": m.thresholds, "thresholds_source": m.thresholds_source,
        "calibrations": _calibrations(p, m), "checksums": "match",
    }


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def _where(backend: str, here: bool) -> str:
    """Why this host cannot run the bundle's backend, after its name ('' when it can)."""
    if here:
        return ""
    if backend == "coreml" and platform.system() != "Darwin":
        return ", runs on macOS and iOS only"
    return f", not installed here: {install_hint(_EXTRA[backend])}" if backend in _EXTRA else ", a backend this dvt-runtime does not know"


def format_info(d: dict[str, Any]) -> str:
    """The info dict as a few lines and one table."""
    cls = d["classes"]
    lines = [f"{d['model']} {d['target']}/{d['precision']} ({d['backend']}{_where(d['backend'], d['backend_here'])})"
             + (f", exported {d['created']}" if d["created"] else ""),
             f"input {d['input']['size']} px {d['input']['channels']}; {len(cls)} classes: "
             + ", ".join(map(shown, cls[:10])) + (" ..." if len(cls) > 10 else "")
             + ("; one image per call" if d["max_batch"] == 1 else "; any number of images per call" if d["max_batch"] is None
                else f"; up to {d['max_batch']} images per call"),
             "",
             f"{'exit':>4} {'KB':>8} {'GFLOPs':>8} {'int8 scheme':>12} {'top-1 %':>8} {'PyTorch %':>9} {'agree %':>8} {'max|dlogit|':>11}"]
    for e in d["exits"]:
        diff = "-" if e["max_abs_diff_real"] is None else f"{e['max_abs_diff_real']:.4g}"
        lines.append(f"{e['exit']:>4} {e['size_kb']:>8.1f} {e['gflops']:>8.4f} {e['scheme'] or '-':>12} {_pct(e['top1_artifact']):>8} "
                     f"{_pct(e['top1_pytorch']):>9} {_pct(e['top1_agreement']):>8} {diff:>11}")
    v = d["verification"]
    if v is None:
        lines.append("verification: none recorded")
    else:
        why = "; ".join(v["problems"]) or v["note"]  # no failed check: why none ran (Core ML off macOS)
        verdict = "passed" if v["passed"] else "NOT passed" + (f" ({why})" if why else "")
        lines.append(f"verification ({v['checked']}, {v['n_real']} real images, {v['runtime']}): {verdict}")
        if v["data"]:
            lines.append(f"  images: {shown(v['data'])}")
    thr = d["thresholds"]
    shown_thr = "none" if thr is None else ", ".join("-" if t is None else f"{t:.3g}" for t in thr[:-1])
    exact = "" if thr is None else f" [as --thresholds: {','.join('none' if t is None else repr(float(t)) for t in thr[:-1])}]"
    # (rounded ones pasted into --thresholds had moved 2 to 3 of 5,000 held-out images to another exit)
    lines.append(f"default thresholds: {shown_thr}{exact} ({shown(d['thresholds_source']) or 'no source recorded'})")
    for c in d["calibrations"]:
        if c["usable"]:
            lines.append(f"calibration {shown(c['file'])}: device {shown(c['device'])}, {c['metric']} budget {c['budget_ms']:g} ms"
                         + (f", made {c['created']}" if c["created"] else "") + "".join(f"\n  note: {shown(n)}" for n in c["notes"]))
        else:
            lines.append(f"calibration {shown(c['file'])}: not usable by this bundle: {shown(c['problem'])}")
    if not d["calibrations"]:
        lines.append("calibrations: none (dvt-runtime calibrate writes one per device)")
    lines.append("artifacts: SHA-256 match the manifest")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = Parser(prog=command_name("python -m dvt_runtime.info"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--bundle", required=True, help="bundle directory (manifest.json + one artifact per exit)")
    ap.add_argument("--json", action="store_true", help="print the info as JSON (schema dvt-bundle-info)")
    args = ap.parse_args(argv)
    try:
        d = bundle_info(args.bundle)
    except (ManifestError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=2, allow_nan=False) if args.json else format_info(d))
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
