"""The calibration file (``<bundle>/calibration/<device>.json``): schema, validation, binding.

``python -m dvt_runtime.calibrate`` writes it; :meth:`Bundle.use_calibration` reads it through
:func:`read_calibration`, which refuses a file that is not valid JSON, lacks a field, holds a
value of the wrong type or range, has a newer schema, or was made for another bundle (model,
target, precision, or artifacts with other SHA-256s). Every message names the file.

Threshold precedence, stated once: explicit ``thresholds=`` > ``budget_ms=`` (the controller
picks a row of this file's table) > this file's ``chosen.thresholds`` > the manifest's
defaults > none (always the last exit).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

__all__ = ["SCHEMA", "SCHEMA_VERSION", "CalibrationError", "read_calibration", "validate_calibration", "bundle_identity",
           "MAX_FILE_BYTES"]

SCHEMA = "dvt-calibration/1"
SCHEMA_VERSION = 1
MAX_FILE_BYTES = 64 << 20  # a calibration is a few KB; refuse anything absurd before parsing


class CalibrationError(ValueError):
    """A calibration that cannot be made or used; the message names the file and the fix."""


def bundle_identity(manifest) -> dict:
    """What ties a calibration to a bundle: model, target, precision and every artifact's SHA-256."""
    return {"model": manifest.model, "target": manifest.target, "precision": manifest.precision,
            "artifacts": [e.sha256 for e in manifest.exits]}


def read_calibration(path: Union[str, Path], manifest) -> dict:
    """Load and validate ``path`` for the bundle described by ``manifest``."""
    path = Path(path)
    fix = "re-run python -m dvt_runtime.calibrate for this bundle"
    if not path.is_file():
        raise CalibrationError(f"calibration {path} is not a file; remove it and {fix}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CalibrationError(f"calibration {path} is {path.stat().st_size} bytes, far too large to be a calibration; {fix}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"calibration {path} is not valid JSON ({e}); {fix}") from None
    except RecursionError:
        raise CalibrationError(f"calibration {path} is nested too deeply to be a calibration; {fix}") from None
    try:
        validate_calibration(d, manifest)
    except CalibrationError as e:
        raise CalibrationError(f"calibration {path}: {e}; {fix}") from None
    return d


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise CalibrationError(msg)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _thresholds(t: Any, n_exits: int, where: str) -> None:
    _need(isinstance(t, list) and len(t) in (n_exits - 1, n_exits), f"{where} must list {n_exits - 1} thresholds, got {t!r}")
    _need(all(v is None or (_num(v) and 0.0 <= v <= 1.0) for v in t), f"{where} must be confidences in [0, 1] or null, got {t!r}")


def validate_calibration(d: Any, manifest) -> None:
    """Raise CalibrationError unless ``d`` is a well-formed calibration made for ``manifest``'s bundle."""
    _need(isinstance(d, dict), "not a JSON object")
    _need(d.get("schema") == SCHEMA, f"schema is {d.get('schema')!r}, not {SCHEMA!r}: not a dvt-runtime calibration")
    v = d.get("schema_version")
    _need(isinstance(v, int) and not isinstance(v, bool), "schema_version must be an integer")
    _need(v <= SCHEMA_VERSION, f"schema_version {v} is newer than this dvt-runtime understands ({SCHEMA_VERSION}); upgrade dvt-runtime")
    for key, kind in (("bundle", dict), ("profile", dict), ("table", list), ("chosen", dict), ("budget_ms", (int, float))):
        _need(key in d, f"lacks the field {key!r}")
        _need(isinstance(d[key], kind) and not isinstance(d[key], bool), f"field {key!r} has the wrong type ({type(d[key]).__name__})")
    want = bundle_identity(manifest)
    got = d["bundle"]
    for k in ("model", "target", "precision"):
        _need(got.get(k) == want[k], f"was made for {k} {got.get(k)!r}, this bundle is {want[k]!r}")
    if "artifacts" in got:  # files written before the hashes were recorded are bound by name only
        _need(got["artifacts"] == want["artifacts"], "was made for other artifacts (SHA-256 differs): the bundle was re-exported")
    n = len(manifest.exits)
    stages = d["profile"].get("stages")
    _need(isinstance(stages, list) and len(stages) == n, f"profile must have {n} stages")
    for i, s in enumerate(stages):
        _need(isinstance(s, dict), f"profile stage {i + 1} must be an object")
        for k in ("mean", "p90"):
            _need(_num(s.get(k)) and s[k] > 0, f"profile stage {i + 1}: {k} must be a positive number of ms, got {s.get(k)!r}")
    _need(_num(d["budget_ms"]) and d["budget_ms"] > 0, f"budget_ms must be a positive number, got {d['budget_ms']!r}")
    _need(len(d["table"]) > 0, "the budget table is empty")
    for j, r in enumerate(d["table"]):
        _need(isinstance(r, dict) and isinstance(r.get("predicted"), dict), f"table row {j + 1} is malformed")
        _thresholds(r.get("thresholds"), n, f"table row {j + 1} thresholds")
        p = r["predicted"]
        _need(_num(p.get("mean_ms")) and p["mean_ms"] > 0 and _num(p.get("accuracy")) and 0 <= p["accuracy"] <= 100,
              f"table row {j + 1}: predicted mean_ms must be positive and accuracy in [0, 100]")
    _thresholds(d["chosen"].get("thresholds"), n, "chosen thresholds")
