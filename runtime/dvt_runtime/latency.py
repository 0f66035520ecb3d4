"""The latency profile: per-stage and cumulative latencies of one bundle on one device.

:class:`LatencyProfile` is schema-versioned (``dvt-profile/N``) and round-trips to JSON like
``Manifest``. It is built by :func:`dvt_runtime.profile.profile_bundle` (measured here) or by
the importers in :mod:`dvt_runtime.importers` (measured elsewhere), and read by calibration,
the search (:meth:`LatencyProfile.stage_costs`) and deadline mode (:meth:`LatencyProfile.stage_p90`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from dvt_runtime.io import atomic_write_json
from dvt_runtime.runfacts import busy_reasons
from dvt_runtime.schema import checked_fields
from dvt_runtime.search import StageCosts
from dvt_runtime.stats import DRIFT_THRESHOLD, ProfileError, check_samples, drift, sample_stats

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SOURCES", "LatencyProfile", "ProfileError", "read_json", "check_batch", "load_profile_arg"]

# 2: ``stopping`` (per-exit streams); 3: ``settings.predict_overhead_ms`` (predict's own cost per exit, which a version-2
# reader would price at 0: such a profile is written as version 3, any other as 2); 4: p90 / p99 are
# ``stats.percentile``'s (an older reader, recomputing numpy's interpolated ones from the samples, refused them as "edited":
# a profile with raw samples is written as version 4, so it is told to upgrade instead). Older files still load.
SCHEMA_VERSION = 4
MAX_INPUT_BYTES = 64 << 20  # profiles and latency CSVs are kilobytes; refuse absurd files before reading
SCHEMA = f"dvt-profile/{SCHEMA_VERSION}"
SOURCES = ("measured", "csv", "json", "etdump")

PathLike = Union[str, "os.PathLike[str]"]


def _strip(d: Optional[dict]) -> Optional[dict]:
    return None if d is None else {k: v for k, v in d.items() if k != "samples"}



def load_profile_arg(path: str, flag: str = "--profile") -> "LatencyProfile":
    """A command's ``--profile`` file as a :class:`LatencyProfile`; raw measurements (CSV, ETDump) are refused with the
    command that makes a profile of them."""
    raw = {".csv": "csv", ".etdp": "etdump"}.get(Path(path).suffix.lower())
    if raw:  # measurements, not yet a profile
        raise ProfileError(f"{flag} {path} is raw measurements: make a profile of it first with python -m dvt_runtime.profile import "
                           f"--{raw} {path} --device-name NAME --bundle B --out NAME.json, then pass {flag} NAME.json")
    return LatencyProfile.load(path)


def check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ProfileError(f"batch must be a whole number of images per call >= 1, got {batch!r}")
    return int(batch)


def batch_note(bundle, batch: int) -> Optional[str]:
    """What ``--batch N`` means for a bundle whose artifacts take one image per call (ExecuTorch, Core ML,
    dynamic-range int8): N calls of one image, not one call of N; None otherwise."""
    if batch > 1 and bundle.manifest.max_batch == 1:
        return (f"note: this bundle's artifacts take one image per call ({bundle.manifest.target}/{bundle.manifest.precision}): "
                f"--batch {batch} runs {batch} calls of one image, so its ms per image are batch 1's")
    return None


@dataclass
class LatencyProfile:
    """Per-stage and cumulative latencies of one bundle on one device (all times in ms).

    ``stages[e]`` / ``cumulative[e]``: :func:`sample_stats` dicts (with raw ``samples``) of
    stage ``e + 1`` alone and of reaching exit ``e + 1`` (per-iteration sums of stages
    1..e+1), measured in chains through every exit. ``stopping[e]`` (optional): the per-image
    latency of a stream of images that all stop at exit ``e + 1``, i.e. with the caches as
    such a stream leaves them; on a small-cache CPU stage 1 after stage 1 is much cheaper than
    stage 1 after the last stage, and the search prices exits by these when present.
    ``drift[e]``: first- vs last-quarter median of stage ``e + 1``.
    Build one with :func:`profile_bundle`, :meth:`from_samples` or an importer.
    """

    stages: list[dict[str, Any]]
    cumulative: list[dict[str, Any]]
    drift: list[dict[str, Optional[float]]]
    throttling_suspected: bool = False
    device: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)  # model, target, precision, backend, path
    threads: Optional[int] = None
    load_ms: Optional[list[Optional[float]]] = None  # per exit
    first_inference_ms: Optional[list[Optional[float]]] = None  # per exit
    preprocess_ms: Optional[dict[str, Any]] = None
    peak_rss_mb: Optional[float] = None
    settings: dict[str, Any] = field(default_factory=dict)  # warmup, runs, inputs
    source: str = "measured"
    created: str = ""
    notes: list[str] = field(default_factory=list)
    # images per stage call while measuring; with batch > 1 every sample is ms per image
    # (the call's wall time / batch), i.e. a throughput cost at that batch size
    batch: int = 1
    stopping: Optional[list[dict[str, Any]]] = None  # per exit: sample_stats of a stream stopping there
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_samples(
        cls,
        stage_samples: Sequence[Union[Sequence[float], np.ndarray]],
        *,
        device: Optional[dict] = None,
        source: str = "measured",
        bundle: Optional[dict] = None,
        threads: Optional[int] = None,
        load_ms: Optional[Sequence[Optional[float]]] = None,
        first_inference_ms: Optional[Sequence[Optional[float]]] = None,
        preprocess_samples: Optional[Sequence[float]] = None,
        peak_rss_mb: Optional[float] = None,
        settings: Optional[dict] = None,
        notes: Optional[Sequence[str]] = None,
        batch: int = 1,
        stopping_samples: Optional[Sequence[Sequence[float]]] = None,
    ) -> LatencyProfile:
        """Profile from raw per-stage samples (ms), one sequence per stage in measurement order.

        Sample ``i`` of every stage is taken to come from the same iteration; the cumulative
        stats use the first ``min(n)`` iterations when stages have different sample counts.
        ``stopping_samples``: per exit, per-image latencies of a stream stopping there (optional).
        """
        if source not in SOURCES:
            raise ProfileError(f"unknown source {source!r}; valid: {list(SOURCES)}")
        stage_samples = list(stage_samples)
        if any(np.ndim(s) != 1 for s in stage_samples):
            raise ProfileError("stage_samples must hold one sequence of samples per stage, e.g. [[...], [...], [...]]")
        arrays = [check_samples(s, f"stage {i + 1}") for i, s in enumerate(stage_samples)]
        if not arrays:
            raise ProfileError("no stages: pass one sequence of latency samples per stage")
        n_common = min(a.size for a in arrays)
        cum = np.cumsum(np.stack([a[:n_common] for a in arrays]), axis=0)
        drifts = [drift(a) for a in arrays]
        notes = list(notes or [])
        if len({a.size for a in arrays}) > 1:
            notes.append(f"stages have different sample counts {[a.size for a in arrays]}; cumulative stats use the first {n_common} iterations")
        stopping = None
        if stopping_samples is not None:
            stopping_samples = list(stopping_samples)
            if len(stopping_samples) != len(arrays) or any(np.ndim(s) != 1 for s in stopping_samples):
                raise ProfileError(f"stopping_samples must hold one sequence of samples per exit ({len(arrays)})")
            stopping = [{"exit": i + 1, **sample_stats(check_samples(s, f"stream stopping at exit {i + 1}"))}
                        for i, s in enumerate(stopping_samples)]
        for name, per_exit in (("load_ms", load_ms), ("first_inference_ms", first_inference_ms)):
            if per_exit is not None and len(per_exit) != len(arrays):
                raise ProfileError(f"{name} has {len(per_exit)} values for {len(arrays)} stages")
        prof = cls(
            stages=[{"exit": i + 1, **sample_stats(a)} for i, a in enumerate(arrays)],
            cumulative=[{"exit": i + 1, **sample_stats(c)} for i, c in enumerate(cum)],
            drift=[{"exit": i + 1, **d} for i, d in enumerate(drifts)],
            throttling_suspected=any(d["ratio"] is not None and d["ratio"] > DRIFT_THRESHOLD for d in drifts),
            device=dict(device or {}),
            bundle=dict(bundle or {}),
            threads=threads,
            load_ms=None if load_ms is None else [None if v is None else float(v) for v in load_ms],
            first_inference_ms=None if first_inference_ms is None else [None if v is None else float(v) for v in first_inference_ms],
            preprocess_ms=None if preprocess_samples is None else sample_stats(check_samples(preprocess_samples, "preprocessing")),
            peak_rss_mb=None if peak_rss_mb is None else float(peak_rss_mb),
            settings=dict(settings or {}),
            source=source,
            created=_now(),
            notes=notes,
            batch=check_batch(batch),
            stopping=stopping,
        )
        # what from_dict will check on load: never write a profile that cannot be read back
        _check_informational({k: getattr(prof, k) for k in _INFORMATIONAL}, len(arrays))
        _check_priced({"stages": prof.stages, "stopping": prof.stopping})
        return prof

    # ---------------------------------------------------------------- facts
    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def stage_samples(self) -> list[np.ndarray]:
        """Raw per-stage samples (ms); a summary-only profile has none."""
        return _raw_samples(self.stages)

    def stage_costs(self) -> StageCosts:
        """:class:`dvt_runtime.search.StageCosts` from the raw per-stage samples (unit ms), with the
        per-exit stopping streams when the profile has them."""
        stopping = None if self.stopping is None else _raw_samples(self.stopping)
        return StageCosts.from_samples(self.stage_samples(), unit="ms", stopping=stopping)

    def stage_p90(self) -> list[float]:
        """p90 of each stage alone (ms), e.g. for ``Bundle.use_profile`` (deadline mode)."""
        return [float(s["p90"]) for s in self.stages]

    def other_bundle(self, manifest) -> dict[str, Any]:
        """What this profile names differently from ``manifest``'s bundle (model, target, precision, backend): its
        latencies are another bundle's when this is not empty (a profile that names nothing is not checked)."""
        pb = self.bundle if isinstance(self.bundle, dict) else {}
        return {k: pb[k] for k in ("model", "target", "precision", "backend") if k in pb and pb[k] != getattr(manifest, k)}

    def deadline_p90(self, manifest) -> list[float]:
        """:meth:`stage_p90` for deadline mode on ``manifest``'s bundle, which runs one image per call: refused for
        another bundle's profile, and for one measured at batch > 1 (per-image p90s of a batch are too low for it)."""
        if other := self.other_bundle(manifest):
            raise ProfileError(f"the profile was measured on another bundle ({', '.join(f'{k} {v!r}' for k, v in other.items())}; "
                               f"this one is {manifest.model} {manifest.target}/{manifest.precision}): profile this bundle")
        if self.batch != 1:
            raise ProfileError(f"the profile was measured at batch {self.batch}: deadline mode runs one image per call, so its "
                               "per-image p90s are too low for it; profile at --batch 1")
        return self.stage_p90()

    def __repr__(self) -> str:  # a notebook's cell shows this: the figures, not thousands of raw samples (44 KB at 200 runs)
        b, name = self.bundle or {}, (self.device or {}).get("device_name")
        ms = " / ".join(f"{float(s['mean']):.3f}" for s in self.cumulative)
        return (f"LatencyProfile({b.get('model', '?')} {b.get('target', '?')}/{b.get('precision', '?')} on {name!r}, threads "
                f"{self.threads}, batch {self.batch}: mean ms to each exit {ms}; {self.source} {self.created})")

    def summary(self) -> dict[str, Any]:
        """Everything but the raw samples, for embedding (calibration files)."""
        d = self.to_dict()
        d["stages"] = [_strip(s) for s in self.stages]
        d["cumulative"] = [_strip(s) for s in self.cumulative]
        d["preprocess_ms"] = _strip(self.preprocess_ms)
        d["stopping"] = None if self.stopping is None else [_strip(s) for s in self.stopping]
        v = 3 if "predict_overhead_ms" in (self.settings or {}) else 2  # no samples: as to_dict writes a summary-only profile
        d["schema"], d["schema_version"] = f"dvt-profile/{v}", v
        return d

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; written as the lowest version that holds it (version 3 only with predict's overhead), so an older
        dvt-runtime reads what it can price and refuses, saying to upgrade, what it would underprice."""
        d = asdict(self)
        if not any("samples" in s for s in [*self.stages, *self.cumulative, *(self.stopping or [])]):  # no percentile of ours
            d["schema_version"] = min(d["schema_version"], 3 if "predict_overhead_ms" in (self.settings or {}) else 2)
        d["schema"] = f"dvt-profile/{d['schema_version']}"
        return {"schema": d.pop("schema"), "schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any) -> LatencyProfile:
        """Inverse of :meth:`to_dict`; refuses profiles written by a newer dvt-runtime."""
        if not isinstance(d, dict) or not (isinstance(d.get("schema"), str) and d["schema"].startswith("dvt-profile/")):
            raise ProfileError("not a dvt latency profile: missing schema 'dvt-profile/N' or integer schema_version")
        d = checked_fields(cls, d, "latency profile", ProfileError, SCHEMA_VERSION)
        if d["schema"] != f"dvt-profile/{d['schema_version']}":
            raise ProfileError(f"latency profile: schema {d['schema']!r} does not match its schema_version {d['schema_version']}")
        if d.get("source", "measured") not in SOURCES:
            raise ProfileError(f"latency profile source {d.get('source')!r} is not one of {list(SOURCES)}")
        for key in ("stages", "cumulative", "stopping"):
            if key == "stopping" and d.get(key) is None:
                continue
            rows = d[key]
            if not isinstance(rows, list) or not rows or not all(isinstance(s, dict) for s in rows):
                raise ProfileError(f"latency profile '{key}' must be a non-empty list of per-stage statistics")
            d[key] = rows = list(rows)  # rows replaced below are the caller's no longer
            for i, s in enumerate(rows):
                for k in ("n", "mean", "median", "p50", "p90", "p99"):
                    v = s.get(k)
                    if not _nonneg(v):
                        raise ProfileError(f"latency profile '{key}' entry {i + 1}: {k!r} must be a finite non-negative number, got {v!r}")
                if "samples" in s:  # raw samples are priced by the search: checked here, not when it runs
                    a = check_samples(s["samples"], f"latency profile '{key}' entry {i + 1} samples")
                    rows[i] = _check_summary(s, a, f"latency profile '{key}' entry {i + 1}", d["schema_version"] < 4)
        _check_priced(d)
        if len(d["cumulative"]) != len(d["stages"]) or not isinstance(d["drift"], list):
            raise ProfileError("latency profile: 'cumulative' needs one entry per stage and 'drift' must be a list")
        if d.get("stopping") is not None and len(d["stopping"]) != len(d["stages"]):
            raise ProfileError("latency profile: 'stopping' needs one entry per exit")
        _check_informational(d, len(d["stages"]))
        d["schema"], d["schema_version"] = SCHEMA, SCHEMA_VERSION  # an older version is read as the current one
        check_batch(d.get("batch", 1))
        return cls(**d)

    def save(self, path: PathLike) -> Path:
        """Write the profile as strict JSON, atomically (a NaN or infinity is refused: other tools could not read it)."""
        try:
            return atomic_write_json(path, self.to_dict(), allow_nan=False, keep="profile's measurements")
        except ValueError as e:
            raise ProfileError(f"the profile holds a non-finite number ({e}): nothing was written to {path}") from None

    @classmethod
    def load(cls, path: PathLike) -> LatencyProfile:
        return cls.from_dict(read_json(path, "latency profile"))

    # ---------------------------------------------------------------- display
    def runs_said(self) -> str:
        """Timed runs per stage: one count, or each exit's where they differ (e.g. '200 / 104 / 37' from an early-exit trace)."""
        counts = [str(int(st["n"])) for st in self.stages]
        return counts[0] if len(set(counts)) == 1 else " / ".join(counts)

    def format_table(self) -> str:
        """Human-readable table: per stage and cumulative p50/p90/p99/mean, load and first inference."""
        b, dev = self.bundle, self.device
        what = " ".join(str(x) for x in (b.get("model"), f"{b.get('target')}/{b.get('precision')}" if b.get("target") else None) if x)
        backend = " ".join(str(x) for x in (b.get("backend") or dev.get("backend"), dev.get("backend_version")) if x)
        head = [f"latency profile ({self.source})" + (f": {what}" if what else "") + (f" [{backend}]" if backend else "")]
        facts = [f"device {dev.get('device_name') or '?'}"]
        if dev.get("cpu_model"):
            facts.append(str(dev["cpu_model"]))
        if self.threads is not None:
            facts.append(f"threads {self.threads}")
        facts.append(f"{self.runs_said()} runs" + (f" after {self.settings['warmup']} warm-up" if self.settings.get("warmup") is not None else ""))
        if self.batch > 1:
            facts.append(f"batch {self.batch}: ms per image")
        head.append(", ".join(facts))

        def row(label: str, s: dict, extra: Sequence[Optional[float]]) -> str:
            cells = [s["p50"], s["p90"], s["p99"], s["mean"], *extra]
            return f"  {label:<8}" + "".join(f"{_fmt(v):>10}" for v in cells)

        cols = f"  {'':<8}" + "".join(f"{c:>10}" for c in ("p50", "p90", "p99", "mean"))
        lines = [*head, "", "per stage (ms)", cols + f"{'load':>10}{'first':>10}"]
        for e, s in enumerate(self.stages):
            lines.append(row(f"exit {e + 1}", s, [_at(self.load_ms, e), _at(self.first_inference_ms, e)]))
        counts = {int(st["n"]) for st in self.stages}  # an early-exit trace: fewer runs at each later exit, paired in order
        lines += ["cumulative to exit (ms)" + (f", the first {min(counts)} runs of each exit" if len(counts) > 1 else ""), cols]
        for e, s in enumerate(self.cumulative):
            lines.append(row(f"exit {e + 1}", s, []))
        if self.stopping is not None:
            lines += ["per image, every image stopping at the exit (ms)", cols]
            for e, s in enumerate(self.stopping):
                lines.append(row(f"exit {e + 1}", s, []))
        tail = []
        if self.preprocess_ms:
            frames = self.settings.get("preprocess_frames")
            impl = self.device.get("image_resize") if isinstance(self.device, dict) else None
            tail.append(f"preprocess p50 {_fmt(self.preprocess_ms['p50'])} ms, p90 {_fmt(self.preprocess_ms['p90'])} ms"
                        + (f" ({frames})" if isinstance(frames, str) else "") + (f" with {impl}" if isinstance(impl, str) else ""))
        if self.peak_rss_mb is not None:
            tail.append(f"peak RSS {self.peak_rss_mb:.1f} MB")
        if tail:
            lines += ["", "; ".join(tail)]
        ratios = [d.get("ratio") for d in self.drift]
        if any(r is not None for r in ratios):
            lines.append("drift (last/first quarter median): " + " / ".join("-" if r is None else f"{r:.2f}" for r in ratios))
        busy = busy_reasons((self.settings or {}).get("contention"))  # measured since session 64: busy core or heat?
        if self.throttling_suspected:
            lines.append(f"WARNING: latency rose by more than {DRIFT_THRESHOLD - 1:.0%} during the run " + (
                f"and the CPU was busy ({'; '.join(busy)}): another process, not heat; re-profile with the device idle" if busy else
                "(thermal throttling or background load?); cool the device, fix the governor and re-profile"))
        elif busy:
            lines.append(f"WARNING: the CPU was busy during the run ({'; '.join(busy)}): re-profile with the device idle")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


_INFORMATIONAL = ("device", "bundle", "settings", "load_ms", "first_inference_ms", "peak_rss_mb", "preprocess_ms", "threads",
                  "source", "created", "notes", "throttling_suspected", "drift")


def _nonneg(v: Any) -> bool:
    """A finite non-negative number (not a bool); NaN, inf, text and None are not."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def _check_informational(d: dict[str, Any], num_exits: int) -> None:
    """The fields the search never prices (device facts, load times, notes) still have their types:
    a malformed one would otherwise surface later as a crash in ``format_table`` or a report."""
    for key in ("device", "bundle", "settings"):
        if key in d and not isinstance(d[key], dict):
            raise ProfileError(f"latency profile '{key}' must be an object, got {type(d[key]).__name__}")
        bad: list[str] = []
        nulled_nonfinite(d.get(key), key, bad)
        if bad:
            raise ProfileError(f"latency profile '{bad[0]}' is not a finite number: a profile is strict JSON; "
                               "give that fact as null (unknown) or a number")
    for key in ("load_ms", "first_inference_ms"):
        v = d.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != num_exits or not all(
                x is None or _nonneg(x) for x in v):
            raise ProfileError(f"latency profile '{key}' must be null or one finite non-negative number (or null) per exit "
                               f"({num_exits}), got {v!r}")
    v = d.get("peak_rss_mb")
    if v is not None and not _nonneg(v):
        raise ProfileError(f"latency profile 'peak_rss_mb' must be null or a finite non-negative number, got {v!r}")
    pre = d.get("preprocess_ms")
    if pre is not None and not (isinstance(pre, dict) and all(
            _nonneg(pre.get(k)) for k in ("p50", "p90"))):
        raise ProfileError(f"latency profile 'preprocess_ms' must be null or statistics with finite 'p50' and 'p90', got {pre!r}")
    t = d.get("threads")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise ProfileError(f"latency profile 'threads' must be null or a whole number >= 1, got {t!r}")
    if not all(isinstance(d.get(k, ""), str) for k in ("source", "created")):
        raise ProfileError("latency profile 'source' and 'created' must be strings")
    if not isinstance(d.get("notes", []), list) or not all(isinstance(n, str) for n in d.get("notes", [])):
        raise ProfileError(f"latency profile 'notes' must be a list of strings, got {d.get('notes')!r}")
    if not isinstance(d.get("throttling_suspected", False), bool):
        raise ProfileError(f"latency profile 'throttling_suspected' must be true or false, got {d['throttling_suspected']!r}")
    drift = d["drift"]
    if not all(isinstance(r, dict) and (r.get("ratio") is None or (not isinstance(r["ratio"], bool) and isinstance(
            r["ratio"], (int, float)) and math.isfinite(r["ratio"]))) for r in drift):
        raise ProfileError("latency profile 'drift' entries must be objects whose 'ratio' is null or a finite number")


def _check_priced(d: dict[str, Any]) -> None:
    """What calibrate and deadline mode price is more than 0 ms: each stage's mean and p90, each stopping stream's mean
    (a profile with 0 there loaded, and calibrate refused it only after all its work); each row names its own exit and
    has its quantiles in order (rows reordered by hand were priced as other exits)."""
    for key, stats in (("stages", ("mean", "p90")), ("stopping", ("mean",))):
        for i, s in enumerate(d.get(key) or []):
            for k in stats:
                if s[k] <= 0:
                    raise ProfileError(f"latency profile '{key}' entry {i + 1}: its {k} is {s[k]!r} ms, and no stage runs in no time: the "
                                       "clock was too coarse for it (whole milliseconds?); time in microseconds and divide by 1000, or "
                                       "time many runs together")
    for key in ("stages", "cumulative", "stopping"):  # a hand edit: rows reordered or renumbered, quantiles out of order
        for i, s in enumerate(d.get(key) or []):
            if s.get("exit", i + 1) != i + 1:
                raise ProfileError(f"latency profile '{key}' entry {i + 1} says exit {s['exit']!r}: entries are listed in exit order, "
                                   f"1 to {len(d[key])} (the file was edited or is damaged): re-profile the bundle")
            q = [s.get(k) for k in ("p50", "p90", "p99") if _nonneg(s.get(k))]
            if q != sorted(q):
                raise ProfileError(f"latency profile '{key}' entry {i + 1}: p50 {s.get('p50')!r}, p90 {s.get('p90')!r}, p99 "
                                   f"{s.get('p99')!r} are not in order (the file was edited or is damaged): re-profile the bundle")


def nulled_nonfinite(obj: Any, where: str, bad: list[str]) -> Any:
    """``obj`` with every NaN or infinity nested in it made None, their paths (``device.temperatures[0].celsius``)
    appended to ``bad``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(where)
        return None
    if isinstance(obj, dict):
        return {k: nulled_nonfinite(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    return [nulled_nonfinite(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)] if isinstance(obj, list) else obj


def _check_summary(row: dict[str, Any], samples: np.ndarray, where: str, older: bool = False) -> dict[str, Any]:
    """A row's summary statistics are what its raw samples give: the search prices the samples and deadline mode the
    p90, so a hand-edited summary would make the two disagree. Returns the row with this version's percentiles: an
    ``older`` profile (version 3 or less) holds numpy's interpolated ones."""
    ref, out = sample_stats(samples, keep_samples=False), dict(row)
    for k in ("n", "mean", "p50", "p90", "p99"):
        if older and k in ("p50", "p90", "p99") and math.isclose(row[k], float(np.percentile(samples, int(k[1:]))), rel_tol=1e-9, abs_tol=1e-12):
            out[k] = ref[k]  # an older writer's definition (numpy's linear): read as this version's
        elif not math.isclose(row[k], ref[k], rel_tol=1e-9, abs_tol=1e-12):
            raise ProfileError(f"{where}: its {k} is {row[k]!r} but its own samples give {ref[k]!r} (the file was edited "
                               "or is damaged): re-profile the bundle (calibrate prices a profile's own samples)")
    return out


def _raw_samples(rows: list[dict[str, Any]]) -> list[np.ndarray]:
    """The raw ``samples`` of each stats row; a summary-only profile has none."""
    if any("samples" not in s for s in rows):
        raise ProfileError("this profile holds summary statistics only (no raw samples); re-profile or load the full profile JSON")
    return [np.asarray(s["samples"], dtype=np.float64) for s in rows]


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _at(values: Optional[Sequence[Optional[float]]], i: int) -> Optional[float]:
    return values[i] if values is not None and i < len(values) else None


def read_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a {what} (a JSON file)")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    if p.stat().st_size > MAX_INPUT_BYTES:
        raise ProfileError(f"{p} is {p.stat().st_size} bytes, more than the {MAX_INPUT_BYTES >> 20} MB a {what} may have")
    try:
        return json.loads(p.read_text(encoding="utf-8-sig"))  # UTF-8 on every OS (Windows reads cp1252), a BOM (PowerShell) allowed
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{p} is not valid JSON: {e}") from None
    except RecursionError:
        raise ProfileError(f"{p} is nested too deeply to be a {what}") from None

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

