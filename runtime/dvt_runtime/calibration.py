"""The calibration file (``<bundle>/calibration/<device>.json``, or ``<DIR>/<device>.json`` with ``--calibration-dir``):
schema, validation, binding.

``python -m dvt_runtime.calibrate`` writes it; :meth:`Bundle.use_calibration` reads it through
:func:`read_calibration`, which refuses a file that is not valid JSON, lacks a field, holds a
value of the wrong type or range, has a newer schema, or was made for another bundle (model,
target, precision, or artifacts with other SHA-256s). Every message names the file.

Thresholds, stated once: explicit ``thresholds=``, or ``budget_ms=`` (the controller picks a row of this file's
table; ``predict`` takes one of the two, never both); else this file's ``chosen.thresholds`` > the manifest's defaults
> none (always the last exit).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import re
import stat
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from dvt_runtime.console import quote_arg
from dvt_runtime.schema import checked_fields, newer_message, parse_json, printable
from dvt_runtime.search import check_metric

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Calibration", "BudgetRow", "Chosen", "CalibrationError", "read_calibration",
           "validate_calibration", "bundle_identity", "MAX_FILE_BYTES"]

SCHEMA = "dvt-calibration/1"
#: 2: how it was made (seed, holdout, data, command) and predict's overhead per exit; 3: headroom; older files still load
SCHEMA_VERSION = 3
MAX_TABLE_ROWS = 4096  # rows of the budget table: each budget-mode call scans it (200,000 rows cost 25-55 ms a call)
MAX_FILE_BYTES = 64 << 20  # a calibration is a few KB; refuse anything absurd before parsing


class CalibrationError(ValueError):
    """A calibration that cannot be made or used; the message names the file and the fix."""


def bundle_identity(manifest) -> dict:
    """What ties a calibration to a bundle: model, target, precision and every artifact's SHA-256."""
    return {"model": manifest.model, "target": manifest.target, "precision": manifest.precision,
            "artifacts": [e.sha256 for e in manifest.exits]}


@dataclass
class BudgetRow:
    """One row of the Pareto table: the thresholds for a budget and what they are predicted to give."""

    budget_ms: float
    thresholds: list[Optional[float]]
    predicted: dict[str, Any]  # accuracy (%), mean_ms, exit_fractions: on the calibration split x the profile


@dataclass
class Chosen:
    """The thresholds chosen for the requested budget, predicted on the holdout and measured there."""

    thresholds: list[Optional[float]]
    budget_ms: float  # what they were searched for: the calibration's budget less its headroom
    predicted: dict[str, Any]  # accuracy, mean_ms, p90_ms, exit_fractions, on
    measured: Optional[dict[str, Any]] = None  # dvt_runtime.calibrate.measure_cascade on the holdout (None: another device)


@dataclass
class Calibration:
    """``<bundle>/calibration/<device>.json``: thresholds for a latency budget on one device."""

    device: str
    bundle: dict[str, Any]  # bundle_identity(): model, target, precision, artifact SHA-256s
    profile: dict[str, Any]  # LatencyProfile.summary() the search stood on
    table: list[BudgetRow]
    chosen: Chosen
    budget_ms: float  # the user's budget; thresholds are searched for budget_ms x (1 - headroom)
    metric: str = "mean"
    algorithm: str = "exact"
    batch: int = 1
    headroom: float = 0.0  # fraction of the budget kept spare (run-to-run spread on the device); the controller keeps it too
    budget_unit: str = "ms per image (batch 1)"
    profile_source: str = ""
    cascade_overhead_ms: float = 0.0  # predict's own cost for an image stopping at exit 1 (per exit: the next field)
    cascade_overhead_ms_per_exit: Optional[list[float]] = None  # priced into the search (None: a version-1 file, exit 1's only)
    seed: Optional[int] = None  # of the calibration/holdout split and the ga search (None: a version-1 file)
    holdout: Optional[float] = None  # fraction of the images kept out of the search
    data: dict[str, Any] = field(default_factory=dict)  # the images: path, sha256, n (from the CLI; as the Python caller gave)
    command: str = ""  # the command that wrote it (from the CLI)
    n_calibration: int = 0
    n_holdout: int = 0
    note: str = ""
    created: str = ""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def __repr__(self) -> str:  # a notebook's cell shows this: what it chose, not the whole file (11 KB)
        p, b = self.chosen.predicted, self.bundle
        return (f"Calibration(device {self.device!r}, {b.get('model', '?')} {b.get('target', '?')}/{b.get('precision', '?')}, "
                f"{self.metric} budget {self.budget_ms:g} ms at batch {self.batch}: thresholds {self.chosen.thresholds}, predicted "
                f"{p.get('accuracy')}% at {p.get('mean_ms')} ms; {len(self.table)} budgets in its table; {self.created})")

    def stage_mean_ms(self) -> list[float]:
        return [float(s["mean"]) for s in self.profile["stages"]]

    def exit_mean_ms(self) -> list[float]:
        """Profiled mean cost of a sample stopping at each exit: the profile's per-exit streams
        (``stopping``, dvt-profile/2), else sums of the stage means."""
        stop = self.profile.get("stopping")
        if stop:
            return [float(s["mean"]) for s in stop]
        return list(itertools.accumulate(self.stage_mean_ms()))

    def stage_p90_ms(self) -> list[float]:
        return [float(s["p90"]) for s in self.profile["stages"]]

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["headroom"]:  # nothing of version 3's: a version-2 file, which older runtimes on devices still read
            del d["headroom"]
            d["schema_version"] = min(d["schema_version"], 2)
        return {"schema": d.pop("schema"), "schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any, manifest) -> "Calibration":
        """Validate ``d`` (see :func:`validate_calibration`) for ``manifest``'s bundle and type it."""
        validate_calibration(d, manifest)
        d = checked_fields(cls, d, "the calibration", CalibrationError, SCHEMA_VERSION)
        try:
            d["table"] = [BudgetRow(**checked_fields(BudgetRow, r, f"table row {j + 1}", CalibrationError)) for j, r in enumerate(d["table"])]
            d["chosen"] = Chosen(**checked_fields(Chosen, d["chosen"], "chosen", CalibrationError))
        except TypeError as e:
            raise CalibrationError(f"malformed calibration: {e}") from None
        return cls(**d)


def calibration_file(folder: Path, device_name: Any, batch: Any = 1) -> Path:
    """``<folder>/<device>.json`` (batch 1, the latency path), ``<device>-batch<N>.json`` for a throughput
    calibration at N images per call: one never replaces the other. ``folder``: the bundle's ``calibration/``, or the
    ``--calibration-dir`` given for it."""
    if not isinstance(device_name, str) or not device_name.strip():
        raise ValueError(f"device_name must be a non-empty string (e.g. 'pixel8'), got {device_name!r}")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:  # numpy integers too
        raise ValueError(f"batch must be a whole number >= 1 (images per call the calibration was made at), got {batch!r}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name)
    return folder / (f"{safe}.json" if batch == 1 else f"{safe}-batch{int(batch)}.json")


CALIBRATION_DIR_HELP = ("read and write device calibrations in DIR instead of the bundle's calibration/ folder (a read-only "
                        "bundle: an OTA image, a container layer); give the same DIR to predict, calibrate and the webcam")


def check_calibration_dir(folder: Any) -> Optional[Path]:
    """A ``calibration_dir`` (``--calibration-dir``) as a Path: None stays None; a file there is refused (a missing folder
    is made by the first calibration written to it)."""
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)) or not str(folder):
        raise ValueError(f"calibration_dir (--calibration-dir) must be a folder path, got {folder!r}")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"calibration_dir (--calibration-dir) {folder} is a file, not a folder: name the folder the device "
                         "calibrations are (or will be) written in")
    return Path(folder)


def bundle_args(bundle: Path, folder: Path) -> str:
    """``--bundle B`` for a command that reads or writes ``folder``'s calibrations, with ``--calibration-dir D`` where
    ``folder`` is not the bundle's own ``calibration/`` (a read-only bundle calibrated elsewhere)."""
    own = os.path.normpath(folder) == os.path.normpath(bundle / "calibration")
    return f"--bundle {quote_arg(str(bundle))}" + ("" if own else f" --calibration-dir {quote_arg(str(folder))}")


def calibration_files(folder: Path) -> list[Path]:
    """The calibration files in a bundle's ``calibration/`` folder, sorted; hidden ones (macOS's ._x.json) are none."""
    return sorted(q for q in folder.glob("*.json") if not q.name.startswith(".")) if folder.is_dir() else []


def missing_calibration(p: Path, device_name: str, batch: int, using: str) -> str:
    """A warning for ``p`` (a device's calibration file, named explicitly) missing: from a folder that holds others (a
    misspelled name, or the device's calibrations at other batch sizes), or with none at all (a bundle copied without them)."""
    held = calibration_files(p.parent)
    base = p.stem if batch == 1 else p.stem[: -len(f"-batch{batch}")]  # the device's own file name ('ci-batchbox' stays whole)
    mine = sorted(int(m.group(1)) for q in held if (m := re.fullmatch(re.escape(base) + r"-batch(\d+)", q.stem)))
    mine += [1] if batch != 1 and (p.parent / f"{base}.json").exists() else []
    if mine:  # this device, calibrated at other batch sizes
        return (f"no calibration for device {device_name!r} at batch {batch} in {p.parent}, only at batch "
                f"{', '.join(map(str, sorted(mine)))}: using {using}; use_calibration({device_name!r}, batch=N) uses one of "
                f"those (its thresholds fit calls of N images), or calibrate at batch {batch}")
    others = sorted({re.sub(r"-batch\d+$", "", q.stem) for q in held})
    if others:  # a misspelled name silently ran the manifest's thresholds
        return (f"no calibration for device {device_name!r} in {p.parent} (it holds {others}): using {using}; pass one of those "
                "names, or calibrate this device")
    own = p.parent.name == "calibration" and (p.parent.parent / "manifest.json").is_file()  # not a --calibration-dir
    where = "it holds none" if p.parent.is_dir() else "no such folder" + (": a bundle copied without it?" if own else "")
    return (f"no calibration for device {device_name!r} in {p.parent} ({where}): using {using}; calibrate this device"
            + (", or copy the bundle with its calibration/ folder" if own else f" into it (--calibration-dir {quote_arg(str(p.parent))})"))


def unreadable_calibration(path: Path, e: OSError) -> CalibrationError:
    """A calibration this user may not read (made by root under umask 077, run by a service's user): what to change."""
    return CalibrationError(f"calibration {path} cannot be read by this user ({e.strerror or e}): let it read the file and its "
                            f"folder (e.g. chmod a+rX {quote_arg(path.parent)}), or calibrate as this user")


def _stat_or_none(path: Path) -> Optional[os.stat_result]:
    """``os.stat(path)``, None where nothing is there; PermissionError passes."""
    try:
        return os.stat(path)
    except PermissionError:
        raise
    except (OSError, ValueError):
        return None


def calibration_exists(path: Path) -> bool:
    """Whether ``path`` exists; a calibration/ folder this user may not search (another user's, mode 700) is a CalibrationError
    that says so (asked of the OS itself: ``Path.exists`` raises there on Python 3.11, and says False on 3.14)."""
    try:
        return _stat_or_none(path) is not None  # None: missing, a file where a folder is, a name the OS refuses
    except PermissionError as e:
        raise unreadable_calibration(path, e) from None


def read_calibration(path: Union[str, Path], manifest, bundle: Optional[Path] = None) -> Calibration:
    """Load and validate ``path`` for the bundle described by ``manifest`` (at ``bundle``: named in the rewrite command)."""
    path = Path(path)
    try:
        st = _stat_or_none(path)  # the OS's own answer: a PermissionError where this user may not look (Path.is_file hides it on 3.14)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise CalibrationError(f"calibration {path} is not a file; remove it and rewrite it: {rewrite_command(path, bundle)}")
        if st.st_size > MAX_FILE_BYTES:
            raise CalibrationError(f"calibration {path} is {st.st_size} bytes, far too large to be a calibration; rewrite "
                                   f"it: {rewrite_command(path, bundle)}")
        d = parse_json(path.read_text(encoding="utf-8-sig"))  # UTF-8 on every OS (Windows reads cp1252), a BOM allowed
    except PermissionError as e:  # a CalibrationError as every other bad calibration: a service catching ValueError had crashed
        raise unreadable_calibration(path, e) from None
    except CalibrationError:
        raise
    except ValueError as e:  # bad syntax or text, a key twice, a 5,000-digit number
        raise CalibrationError(f"calibration {path} is not valid JSON ({e}); rewrite it: {rewrite_command(path, bundle)}") from None
    except RecursionError:
        raise CalibrationError(f"calibration {path} is nested too deeply to be a calibration; rewrite it: {rewrite_command(path, bundle)}") from None
    if isinstance(d, dict) and isinstance(v := d.get("schema_version"), int) and v > SCHEMA_VERSION:  # upgrade; never rewrite it
        raise CalibrationError(f"{path}: {newer_message('the calibration', v, SCHEMA_VERSION)}")
    try:
        cal = Calibration.from_dict(d, manifest)
    except CalibrationError as e:
        raise CalibrationError(f"calibration {path}: {e}; rewrite it: {rewrite_command(path, bundle)}") from None
    if cal.schema_version < 2:  # it loads, but priced predict's own cost for exit 1 alone
        warnings.warn(f"{path} is a version-1 calibration: it priced predict's own cost for an image stopping at exit 1 alone, so "
                      f"its deeper thresholds run a few percent over their budgets (4-9% measured); rewrite it: {rewrite_command(path, bundle)}",
                      stacklevel=3)
    return cal


def rewrite_command(path: Path, bundle: Optional[Path] = None) -> str:
    """The calibrate command that rewrites ``path`` (``<bundle>/calibration/<device>[-batchN].json``, or a file in the
    ``--calibration-dir`` of ``bundle``): its bundle, device, batch and budget, and ``--profile`` where its latencies were
    another device's (measuring here would price it with this host's)."""
    m = re.fullmatch(r"(.+?)(?:-batch(\d+))?", path.stem)
    assert m is not None  # the pattern takes any stem
    d: Any = None
    if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            pass
    d = d if isinstance(d, dict) else {}
    budget, device = d.get("budget_ms"), d.get("device")
    cmd = (f"python -m dvt_runtime.calibrate {bundle_args(path.parent.parent if bundle is None else bundle, path.parent)} --data VAL.npz --budget-ms "
           f"{budget if _num(budget) and budget > 0 else 'MS'} --device-name {quote_arg(device if isinstance(device, str) else m.group(1))}")
    cmd += f" --batch {m.group(2)}" if m.group(2) else ""
    cmd += f" --metric {quote_arg(d['metric'])}" if _percentile(d.get("metric")) else ""  # a p90 budget stays one
    cmd += f" --headroom {d['headroom']:g}" if _num(d.get("headroom")) and 0 < d["headroom"] < 1 else ""  # and its spare share
    prof = d.get("profile") if isinstance(d.get("profile"), dict) else {}
    if "threads" in prof and (prof["threads"] is None or (_num(prof["threads"]) and prof["threads"] >= 1)):  # as it ran: a
        cmd += f" --threads {int(prof['threads'] or 0)}"  # 4-thread deployment had been told to recalibrate at 1 (0: default)
    prov = (prof.get("device") or {}).get("providers") if isinstance(prof.get("device"), dict) else None
    if isinstance(prov, list) and prov and all(isinstance(p, str) for p in prov) and prov != ["CPUExecutionProvider"]:
        cmd += f" --providers {quote_arg(','.join(prov))}"
    other = other_hosts_latencies(path) if d else None
    return cmd + (f" --profile PROFILE.json (that device's own: this file's latencies were {other})" if other else "")


def _percentile(m: Any) -> bool:
    """Whether ``m`` is a percentile metric calibrate takes, e.g. ``"p90"`` (an edited file's may be anything)."""
    try:
        return isinstance(m, str) and check_metric(m) is not None
    except ValueError:
        return False


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise CalibrationError(msg)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _thresholds(t: Any, n_exits: int, where: str) -> None:
    _need(isinstance(t, list) and len(t) in (n_exits - 1, n_exits), f"{where} must list {n_exits - 1} thresholds, got {t!r}")
    _need(all(v is None or (_num(v) and 0.0 <= v <= 1.0) for v in t), f"{where} must be confidences in [0, 1] or null, got {t!r}")


def validate_calibration(d: Any, manifest=None) -> None:
    """Raise CalibrationError unless ``d`` is a well-formed calibration made for ``manifest``'s bundle (None: well-formed
    alone, e.g. for a report that has no bundle)."""
    _need(isinstance(d, dict), "not a JSON object")
    _need(d.get("schema") == SCHEMA, f"schema is {d.get('schema')!r}, not {SCHEMA!r}: not a dvt-runtime calibration")
    v = d.get("schema_version")
    _need(isinstance(v, int) and not isinstance(v, bool), "schema_version must be an integer")
    _need(v <= SCHEMA_VERSION, newer_message("the calibration", v, SCHEMA_VERSION))
    for key, kind in (("bundle", dict), ("profile", dict), ("table", list), ("chosen", dict), ("budget_ms", (int, float))):
        _need(key in d, f"lacks the field {key!r}")
        _need(isinstance(d[key], kind) and not isinstance(d[key], bool), f"field {key!r} has the wrong type ({type(d[key]).__name__})")
    if manifest is not None:
        want, got = bundle_identity(manifest), d["bundle"]
        for k in ("model", "target", "precision"):
            _need(got.get(k) == want[k], f"was made for {k} {got.get(k)!r}, this bundle is {want[k]!r}")
        _need("artifacts" in got, "records no artifact hashes, so it cannot be tied to this export: re-run python -m dvt_runtime.calibrate")
        _need(got["artifacts"] == want["artifacts"], "was made for other artifacts (SHA-256 differs): the bundle was re-exported")
    stages = d["profile"].get("stages")
    n = len(manifest.exits) if manifest is not None else len(stages) if isinstance(stages, list) and stages else 1
    _need(isinstance(stages, list) and len(stages) == n, f"profile must have {n} stages")
    for i, s in enumerate(stages):
        _need(isinstance(s, dict), f"profile stage {i + 1} must be an object")
        for k in ("mean", "p90"):
            _need(_num(s.get(k)) and s[k] > 0, f"profile stage {i + 1}: {k} must be a positive number of ms, got {s.get(k)!r}")
    stopping = d["profile"].get("stopping")  # per-exit streams (dvt-profile/2): the budget controller's yardstick
    if stopping is not None:
        _need(isinstance(stopping, list) and len(stopping) == n, f"profile 'stopping' must have {n} exits or be null")
        for i, s in enumerate(stopping):
            _need(isinstance(s, dict) and _num(s.get("mean")) and s["mean"] > 0,
                  f"profile 'stopping' exit {i + 1}: mean must be a positive number of ms, got {s.get('mean') if isinstance(s, dict) else s!r}")
    _need(_num(d["budget_ms"]) and d["budget_ms"] > 0, f"budget_ms must be a positive number, got {d['budget_ms']!r}")
    _need(len(d["table"]) > 0, "the budget table is empty")
    _need(len(d["table"]) <= MAX_TABLE_ROWS, f"the budget table has {len(d['table'])} rows (at most {MAX_TABLE_ROWS}: calibrate writes a few dozen)")
    for j, r in enumerate(d["table"]):
        _need(isinstance(r, dict) and isinstance(r.get("predicted"), dict), f"table row {j + 1} is malformed")
        _thresholds(r.get("thresholds"), n, f"table row {j + 1} thresholds")
        p = r["predicted"]
        _need(_num(p.get("mean_ms")) and p["mean_ms"] > 0 and _num(p.get("accuracy")) and 0 <= p["accuracy"] <= 100,
              f"table row {j + 1}: predicted mean_ms must be positive and accuracy in [0, 100]")
    _thresholds(d["chosen"].get("thresholds"), n, "chosen thresholds")
    for j, r in enumerate(d["table"]):
        _need(r.get("budget_ms") is None or (_num(r["budget_ms"]) and r["budget_ms"] > 0),
              f"table row {j + 1}: budget_ms must be a positive number of ms, got {r.get('budget_ms')!r}")
    _need("predicted" not in d["chosen"] or isinstance(d["chosen"]["predicted"], dict), "chosen.predicted must be an object")
    _need(isinstance(d.get("algorithm", ""), str), f"algorithm must be a name, got {d.get('algorithm')!r}")
    if "batch" in d:
        _need(isinstance(d["batch"], int) and not isinstance(d["batch"], bool) and d["batch"] >= 1,
              f"batch must be a whole number >= 1, got {d['batch']!r}")
    if "device" in d:
        _need(isinstance(d["device"], str) and d["device"] != "" and printable(d["device"]),
              f"device must be a non-empty name without control characters, got {d['device']!r}")
    per = d.get("cascade_overhead_ms_per_exit")
    _need(per is None or (isinstance(per, list) and len(per) == n and all(_num(v) and v >= 0 for v in per)),
          f"cascade_overhead_ms_per_exit must list {n} non-negative ms, got {per!r}")
    _need(_num(d.get("headroom", 0.0)) and 0 <= d.get("headroom", 0.0) < 1,
          f"headroom must be a fraction of the budget in [0, 1), got {d.get('headroom')!r}")
    _need(d.get("seed") is None or (isinstance(d["seed"], int) and not isinstance(d["seed"], bool)), f"seed must be an integer, got {d.get('seed')!r}")
    _need(d.get("holdout") is None or (_num(d["holdout"]) and 0 < d["holdout"] < 1), f"holdout must be in (0, 1), got {d.get('holdout')!r}")
    _need(isinstance(d.get("data", {}), dict) and isinstance(d.get("command", ""), str), "data must be an object and command a string")
    metric = d.get("metric", "mean")
    try:
        check_metric(metric)
    except (ValueError, TypeError):
        _need(False, f"metric must be 'mean' or a percentile such as 'p90', got {metric!r}")
    key = f"{metric}_ms"
    for j, r in enumerate(d["table"]):  # a percentile calibration's rows carry that percentile (older files: the mean only)
        _need(key not in r["predicted"] or (_num(r["predicted"][key]) and r["predicted"][key] > 0),
              f"table row {j + 1}: predicted {key} must be a positive number of ms")
    from dvt_runtime.latency import nulled_nonfinite  # last: the fields checked above name their own problem

    nulled_nonfinite(d, "", bad := [])  # calibrate writes strict JSON: a NaN or infinity anywhere else was put there
    _need(not bad, f"holds non-finite numbers ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): a file edited or damaged, or "
                   "a measurement that failed (nothing uses it); re-run python -m dvt_runtime.calibrate")


def file_state(p: Path) -> Optional[tuple[int, int, int]]:
    """(inode, modification time in ns, size) of ``p`` (an atomic write makes a new inode), None when it does not exist."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def other_hosts_latencies(path: Path) -> Optional[str]:
    """How an existing calibration's latencies came from another machine (a profile given to calibrate, or measured on
    other hardware); None when they are this host's or there is no readable file. A calibration measured here under
    that device's name would replace them with this host's."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    prof = d.get("profile") if isinstance(d, dict) else None
    if not isinstance(prof, dict):
        return None
    from dvt_runtime.device import device_facts

    theirs, ours = prof.get("device") if isinstance(prof.get("device"), dict) else {}, device_facts()
    differ = [k for k in HARDWARE if theirs.get(k) is not None and ours.get(k) is not None and theirs[k] != ours[k]]
    if differ:  # the hardware only: an OS update, another device name or thread count is still this host
        return f"measured on another machine ({', '.join(f'{k} {theirs[k]!r}' for k in differ)})"
    if d.get("profile_source") == "given (--profile)" and not any(theirs.get(k) is not None for k in HARDWARE):
        return "priced by a latency profile given to calibrate that names no hardware (an imported one: another device's)"
    return None


HARDWARE = ("cpu_model", "cpu_cores", "board", "machine", "logical_cores")  # what tells another machine's latencies from this one's


def file_device(path: Path) -> Optional[str]:
    """The device named in an existing calibration file (None: no file, or not one that can be read)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("device") if isinstance(d, dict) and isinstance(d.get("device"), str) else None
