"""On-device latency profile of a bundle's early-exit cascade (numpy + stdlib only).

    bundle = Bundle.open("bundles/dvt_tiny_fmnist_ms-onnx-fp32", threads=1)
    prof = profile_bundle(bundle, warmup=20, runs=200)
    print(prof.format_table())
    prof.save("profile.json")
    costs = prof.stage_costs()          # -> dvt_runtime.search.StageCosts (raw per-stage samples)

Each iteration runs the whole chain exit 1 -> exit 2 -> ... and times every
``run_exit`` call, so stage ``e``'s samples and the cumulative latency to reach exit ``e``
(per-iteration sums of stages 1..e) come from the same runs. Latencies measured elsewhere
(a phone app, a C++ harness, ExecuTorch's ETDump) are turned into the same
:class:`LatencyProfile` by :func:`import_csv`, :func:`import_json` and :func:`import_etdump`.

Command line::

    python -m dvt_runtime.profile --bundle B [--threads N] [--warmup W] [--runs R]
                                  [--data val.npz] [--device-name NAME] [--out profile.json]
    python -m dvt_runtime.profile import (--csv F | --json F | --etdump F1 F2 F3 [--etrecord R ...])
                                  --out profile.json [--device-name NAME]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import glob
import json
import math
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from dvt_runtime.backends import BackendUnavailable, backend_version
from dvt_runtime.io import atomic_write_json
from dvt_runtime.search import StageCosts

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "DRIFT_THRESHOLD",
    "LatencyProfile",
    "ProfileError",
    "device_facts",
    "import_csv",
    "import_etdump",
    "import_json",
    "profile_bundle",
    "sample_stats",
    "main",
]

SCHEMA_VERSION = 1
MAX_INPUT_BYTES = 64 << 20  # profiles and latency CSVs are kilobytes; refuse absurd files before reading
MAX_CSV_LINE = 1 << 16
SCHEMA = f"dvt-profile/{SCHEMA_VERSION}"
SOURCES = ("measured", "csv", "json", "etdump")
DRIFT_THRESHOLD = 1.15  # last-quarter / first-quarter median above this flags throttling
MIN_RUNS = 4  # the drift check compares quarters of the samples

PathLike = Union[str, "os.PathLike[str]"]


class ProfileError(ValueError):
    """An invalid, malformed or incompatible latency profile (or import file)."""


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def sample_stats(samples: Sequence[float], keep_samples: bool = True) -> dict[str, Any]:
    """Summary statistics of latency samples (ms).

    Keys: ``n, mean, median, p50 (= median), p90, p99, std (population, ddof=0), min, max``
    and, with ``keep_samples``, ``samples`` (the raw values as floats). Percentiles use
    numpy's default linear interpolation.
    """
    a = np.asarray(samples, dtype=np.float64).ravel()
    if a.size == 0:
        raise ProfileError("no latency samples")
    median = float(np.median(a))
    out: dict[str, Any] = {
        "n": int(a.size),
        "mean": float(a.mean()),
        "median": median,
        "p50": median,
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }
    if keep_samples:
        out["samples"] = [float(v) for v in a]
    return out


def _drift(samples: np.ndarray) -> dict[str, Optional[float]]:
    """Median of the first vs the last quarter of the samples (in measurement order)."""
    q = samples.size // 4
    if q == 0:
        return {"first_quarter_median": None, "last_quarter_median": None, "ratio": None}
    first, last = float(np.median(samples[:q])), float(np.median(samples[-q:]))
    return {"first_quarter_median": first, "last_quarter_median": last, "ratio": (last / first) if first > 0 else None}


def _check_samples(samples: Sequence[float], what: str) -> np.ndarray:
    if any(isinstance(v, (bool, np.bool_)) for v in samples):
        raise ProfileError(f"{what}: latency samples must be numbers (ms), not true/false")
    try:
        a = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError(f"{what}: latency samples must be numbers (ms)") from None
    if a.ndim != 1:
        raise ProfileError(f"{what}: expected a flat sequence of latency samples, got shape {a.shape}")
    if a.size == 0:
        raise ProfileError(f"{what} has no latency samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ProfileError(f"{what}: latency samples must be finite and non-negative")
    return a


def _strip(d: Optional[dict]) -> Optional[dict]:
    return None if d is None else {k: v for k, v in d.items() if k != "samples"}


# --------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------


@dataclass
class LatencyProfile:
    """Per-stage and cumulative latencies of one bundle on one device (all times in ms).

    ``stages[e]`` / ``cumulative[e]``: :func:`sample_stats` dicts (with raw ``samples``) of
    stage ``e + 1`` alone and of reaching exit ``e + 1`` (per-iteration sums of stages
    1..e+1). ``drift[e]``: first- vs last-quarter median of stage ``e + 1``.
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
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_samples(
        cls,
        stage_samples: Sequence[Sequence[float]],
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
    ) -> LatencyProfile:
        """Profile from raw per-stage samples (ms), one sequence per stage in measurement order.

        Sample ``i`` of every stage is taken to come from the same iteration; the cumulative
        stats use the first ``min(n)`` iterations when stages have different sample counts.
        """
        if source not in SOURCES:
            raise ProfileError(f"unknown source {source!r}; valid: {list(SOURCES)}")
        stage_samples = list(stage_samples)
        if any(np.ndim(s) != 1 for s in stage_samples):
            raise ProfileError("stage_samples must hold one sequence of samples per stage, e.g. [[...], [...], [...]]")
        arrays = [_check_samples(s, f"stage {i + 1}") for i, s in enumerate(stage_samples)]
        if not arrays:
            raise ProfileError("no stages: pass one sequence of latency samples per stage")
        n_common = min(a.size for a in arrays)
        cum = np.cumsum(np.stack([a[:n_common] for a in arrays]), axis=0)
        drift = [_drift(a) for a in arrays]
        notes = list(notes or [])
        if len({a.size for a in arrays}) > 1:
            notes.append(f"stages have different sample counts {[a.size for a in arrays]}; cumulative stats use the first {n_common} iterations")
        for name, per_exit in (("load_ms", load_ms), ("first_inference_ms", first_inference_ms)):
            if per_exit is not None and len(per_exit) != len(arrays):
                raise ProfileError(f"{name} has {len(per_exit)} values for {len(arrays)} stages")
        return cls(
            stages=[{"exit": i + 1, **sample_stats(a)} for i, a in enumerate(arrays)],
            cumulative=[{"exit": i + 1, **sample_stats(c)} for i, c in enumerate(cum)],
            drift=[{"exit": i + 1, **d} for i, d in enumerate(drift)],
            throttling_suspected=any(d["ratio"] is not None and d["ratio"] > DRIFT_THRESHOLD for d in drift),
            device=dict(device or {}),
            bundle=dict(bundle or {}),
            threads=threads,
            load_ms=None if load_ms is None else [None if v is None else float(v) for v in load_ms],
            first_inference_ms=None if first_inference_ms is None else [None if v is None else float(v) for v in first_inference_ms],
            preprocess_ms=None if preprocess_samples is None else sample_stats(_check_samples(preprocess_samples, "preprocessing")),
            peak_rss_mb=None if peak_rss_mb is None else float(peak_rss_mb),
            settings=dict(settings or {}),
            source=source,
            created=_now(),
            notes=notes,
            batch=_check_batch(batch),
        )

    # ---------------------------------------------------------------- facts
    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def stage_samples(self) -> list[np.ndarray]:
        """Raw per-stage samples (ms); a summary-only profile has none."""
        if any("samples" not in s for s in self.stages):
            raise ProfileError("this profile holds summary statistics only (no raw samples); re-profile or load the full profile JSON")
        return [np.asarray(s["samples"], dtype=np.float64) for s in self.stages]

    def stage_costs(self) -> StageCosts:
        """:class:`dvt_runtime.search.StageCosts` from the raw per-stage samples (unit ms)."""
        return StageCosts.from_samples(self.stage_samples(), unit="ms")

    def stage_p90(self) -> list[float]:
        """p90 of each stage alone (ms), e.g. for ``Bundle.use_profile`` (deadline mode)."""
        return [float(s["p90"]) for s in self.stages]

    def summary(self) -> dict[str, Any]:
        """Everything but the raw samples, for embedding (calibration files)."""
        d = self.to_dict()
        d["stages"] = [_strip(s) for s in self.stages]
        d["cumulative"] = [_strip(s) for s in self.cumulative]
        d["preprocess_ms"] = _strip(self.preprocess_ms)
        return d

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": d.pop("schema"), "schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any) -> LatencyProfile:
        """Inverse of :meth:`to_dict`; refuses profiles written by a newer dvt-runtime."""
        if not isinstance(d, dict):
            raise ProfileError("a latency profile must be a JSON object")
        version = d.get("schema_version")
        schema = d.get("schema")
        if not isinstance(version, int) or isinstance(version, bool) or not (isinstance(schema, str) and schema.startswith("dvt-profile/")):
            raise ProfileError("not a dvt latency profile: missing schema 'dvt-profile/N' or integer schema_version")
        if version > SCHEMA_VERSION:
            raise ProfileError(
                f"latency profile schema_version {version} is newer than this dvt-runtime understands ({SCHEMA_VERSION}); "
                "upgrade dvt-runtime (pip install -U dvt-runtime)"
            )
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("stages", "cumulative", "drift") if k not in d]
        if missing:
            raise ProfileError(f"latency profile lacks required field(s) {missing}")
        for key in ("stages", "cumulative"):
            rows = d[key]
            if not isinstance(rows, list) or not rows or not all(isinstance(s, dict) for s in rows):
                raise ProfileError(f"latency profile '{key}' must be a non-empty list of per-stage statistics")
            for i, s in enumerate(rows):
                for k in ("n", "mean", "median", "p50", "p90", "p99"):
                    v = s.get(k)
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                        raise ProfileError(f"latency profile '{key}' entry {i + 1}: {k!r} must be a finite non-negative number, got {v!r}")
        if len(d["cumulative"]) != len(d["stages"]) or not isinstance(d["drift"], list):
            raise ProfileError("latency profile: 'cumulative' needs one entry per stage and 'drift' must be a list")
        _check_batch(d.get("batch", 1))
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: PathLike) -> Path:
        """Write the profile as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> LatencyProfile:
        return cls.from_dict(_read_json(path, "latency profile"))

    # ---------------------------------------------------------------- display
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
        facts.append(f"{self.stages[0]['n']} runs" + (f" after {self.settings['warmup']} warm-up" if self.settings.get("warmup") is not None else ""))
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
        lines += ["cumulative to exit (ms)", cols]
        for e, s in enumerate(self.cumulative):
            lines.append(row(f"exit {e + 1}", s, []))
        tail = []
        if self.preprocess_ms:
            tail.append(f"preprocess p50 {_fmt(self.preprocess_ms['p50'])} ms, p90 {_fmt(self.preprocess_ms['p90'])} ms")
        if self.peak_rss_mb is not None:
            tail.append(f"peak RSS {self.peak_rss_mb:.1f} MB")
        if tail:
            lines += ["", "; ".join(tail)]
        ratios = [d.get("ratio") for d in self.drift]
        if any(r is not None for r in ratios):
            lines.append("drift (last/first quarter median): " + " / ".join("-" if r is None else f"{r:.2f}" for r in ratios))
        if self.throttling_suspected:
            lines.append(f"WARNING: latency rose by more than {DRIFT_THRESHOLD - 1:.0%} during the run "
                         "(thermal throttling or background load?); cool the device, fix the governor and re-profile")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _at(values: Optional[Sequence[Optional[float]]], i: int) -> Optional[float]:
    return values[i] if values is not None and i < len(values) else None


def _read_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    if p.stat().st_size > MAX_INPUT_BYTES:
        raise ProfileError(f"{p} is {p.stat().st_size} bytes, more than the {MAX_INPUT_BYTES >> 20} MB a {what} may have")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{p} is not valid JSON: {e}") from None
    except RecursionError:
        raise ProfileError(f"{p} is nested too deeply to be a {what}") from None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------
# Device facts
# --------------------------------------------------------------------------------------


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # a fact that cannot be read is None, never an error
        return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\x00", "").strip() or None
    except OSError:
        return None


def _cpu_model() -> Optional[str]:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or None


def _affinity() -> Optional[int]:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _memory_mb() -> Optional[float]:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read("/proc/meminfo") or "", re.MULTILINE)
    return round(int(m.group(1)) / 1024, 1) if m else None


def _temperatures() -> Optional[list[dict[str, Any]]]:
    out = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        raw = _read(os.path.join(zone, "temp"))
        try:
            celsius = int(raw) / 1000.0 if raw is not None else None
        except ValueError:
            celsius = None
        if celsius is not None:
            out.append({"zone": os.path.basename(zone), "type": _read(os.path.join(zone, "type")), "celsius": celsius})
    return out or None


def _nvpmodel() -> Optional[str]:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    r = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=3)
    return r.stdout.strip() or None


def device_facts(threads: Optional[int] = None, backend: Optional[str] = None) -> dict[str, Any]:
    """Facts about this machine that explain its latencies; unreadable facts are None."""
    from dvt_runtime import __version__

    tegra = _read("/etc/nv_tegra_release")
    return {
        "device_name": _safe(socket.gethostname) or _safe(platform.node),
        "cpu_model": _safe(_cpu_model),
        "board": _read("/proc/device-tree/model"),
        "logical_cores": _safe(os.cpu_count),
        "affinity_cores": _safe(_affinity),
        "memory_total_mb": _safe(_memory_mb),
        "os": _safe(platform.platform),
        "machine": _safe(platform.machine) or None,
        "python": _safe(platform.python_version),
        "numpy": np.__version__,
        "dvt_runtime": __version__,
        "backend": backend,
        "backend_version": _safe(backend_version, backend) if backend else None,
        "threads": threads,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperatures": _safe(_temperatures),
        "jetson_power_mode": _safe(_nvpmodel),
        "nv_tegra_release": tegra.splitlines()[0] if tegra else None,
    }


def _peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --------------------------------------------------------------------------------------
# Measuring a bundle
# --------------------------------------------------------------------------------------


def _progress(it: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc=desc, leave=False)


def _check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ProfileError(f"batch must be a whole number of images per call >= 1, got {batch!r}")
    return int(batch)


def _batches(xs: list[np.ndarray], batch: int, n: int = 8) -> list[np.ndarray]:
    """Up to ``n`` distinct (batch, C, H, W) inputs cycling through the (1, C, H, W) images."""
    count = max(1, min(n, len(xs) // batch))
    return [np.ascontiguousarray(np.concatenate([xs[(b * batch + k) % len(xs)] for k in range(batch)])) for b in range(count)]


def _inputs(bundle, images) -> list[np.ndarray]:
    """(1, C, H, W) float32 inputs: the given preprocessed images, or one fixed random image."""
    if images is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal((1, *bundle.input_shape)).astype(np.float32)]
    if isinstance(images, np.ndarray):
        seq = [images] if images.ndim == len(bundle.input_shape) else list(images)  # one (C, H, W) or (N, C, H, W)
    else:
        seq = list(images)
    if not seq:
        raise ValueError("images is empty: pass at least one preprocessed image or None for a random one")
    return [bundle.preprocess(np.asarray(x)) for x in seq]  # checks shape, dtype and finiteness


def _raw_images(bundle, images_raw) -> list[np.ndarray]:
    if images_raw is not None:
        seq = list(images_raw)
        if not seq:
            raise ValueError("images_raw is empty")
        return [np.asarray(x) for x in seq]
    pre = bundle.manifest.preprocess
    shape = (pre.size, pre.size) if pre.channels == "gray" else (pre.size, pre.size, 3)
    return [np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)]


def profile_bundle(
    bundle,
    warmup: int = 20,
    runs: int = 200,
    images: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = None,
    threads: Optional[int] = None,
    progress: bool = True,
    images_raw: Optional[Sequence[np.ndarray]] = None,
    device_name: Optional[str] = None,
    batch: int = 1,
) -> LatencyProfile:
    """Measure a loaded :class:`~dvt_runtime.bundle.Bundle`'s cascade on this device.

    ``batch``: images per stage call (as ``Bundle.predict`` runs a batch: one call per stage
    where the artifacts take a batch, a loop where they take one image); samples are then
    ms per image at that batch size, a throughput cost.

    Per exit: the first inference after load, then ``warmup`` discarded chain runs, then
    ``runs`` timed chain runs (every ``run_exit`` timed with ``time.perf_counter``).
    ``images``: preprocessed float32 inputs, (N, C, H, W) or a sequence, cycled through
    (default: one fixed random image). ``images_raw``: uint8 images for the preprocessing
    time (default: a random image of the manifest's input size). ``threads``: the thread
    setting the bundle was opened with (recorded, not applied). Call it on a freshly opened
    bundle, or ``first_inference_ms`` is not really the first.
    """
    if int(runs) < MIN_RUNS:
        raise ValueError(f"runs must be at least {MIN_RUNS} (the drift check compares quarters), got {runs}")
    if int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    runs, warmup = int(runs), int(warmup)
    batch = _check_batch(batch)
    singles = _inputs(bundle, images)
    xs = _batches(singles, batch)
    chunk = bundle.batch_limit()
    raws = _raw_images(bundle, images_raw)
    n_exits = bundle.num_exits

    first: list[float] = []
    carry = None
    for e in range(n_exits):
        t0 = time.perf_counter()
        carry, _ = bundle.run_stage(e, xs[0], carry, chunk)
        first.append((time.perf_counter() - t0) * 1e3 / batch)

    samples: list[list[float]] = [[] for _ in range(n_exits)]
    gc.collect()
    clock = time.perf_counter
    for it in _progress(range(warmup + runs), warmup + runs, progress, "profiling"):
        x = xs[it % len(xs)]
        carry = None
        for e in range(n_exits):
            t0 = clock()
            carry, _ = bundle.run_stage(e, x, carry, chunk)
            dt = clock() - t0
            if it >= warmup:
                samples[e].append(dt * 1e3 / batch)

    pre_samples = []
    for i in range(runs):
        img = raws[i % len(raws)]
        t0 = clock()
        bundle.preprocess(img)
        pre_samples.append((clock() - t0) * 1e3)

    m = bundle.manifest
    device = device_facts(threads=threads, backend=m.backend)
    if device_name:
        device["device_name"] = device_name
    providers = getattr(bundle.sessions[0], "providers", None) if getattr(bundle, "sessions", None) else None
    if providers:
        device["providers"] = list(providers)
    return LatencyProfile.from_samples(
        samples,
        device=device,
        source="measured",
        bundle={"model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend,
                "path": str(bundle.path), "num_exits": n_exits},
        threads=threads,
        load_ms=list(bundle.load_ms),
        first_inference_ms=first,
        preprocess_samples=pre_samples,
        peak_rss_mb=_peak_rss_mb(),
        settings={"warmup": warmup, "runs": runs, "inputs": "random" if images is None else f"{len(singles)} images" + (f" in {len(xs)} batches of {batch}" if batch > 1 else ""),
                  "timer": "time.perf_counter", "unit": "ms per image" if batch > 1 else "ms per call",
                  "calls_per_stage": "loop (batch-1 artifacts)" if chunk == 1 and batch > 1 else "one"},
        batch=batch,
    )


# --------------------------------------------------------------------------------------
# Importers
# --------------------------------------------------------------------------------------

_WIDE = re.compile(r"stage(\d+)_ms")
_CUMULATIVE = re.compile(r"exit(\d+)_cumulative_ms")
_CSV_LAYOUTS = ("wide 'stage1_ms,stage2_ms,...' (one row per iteration), "
                "cumulative 'exit1_cumulative_ms,exit2_cumulative_ms,...' (one row per iteration) "
                "or long 'exit,ms' (one row per sample, exit 1-based)")


def _device_from(file_device: Any, device_name: Optional[str]) -> dict[str, Any]:
    device = dict(file_device) if isinstance(file_device, dict) else {"device_name": device_name}
    if device_name:
        device["device_name"] = device_name
    return device


def _stages_from_cumulative(cumulative: Sequence[Sequence[float]], where: str) -> list[np.ndarray]:
    """Per-stage samples from per-exit cumulative samples (E, N): differences along the exits."""
    cum = [_check_samples(c, f"{where} exit {i + 1}") for i, c in enumerate(cumulative)]
    if len({c.size for c in cum}) > 1:
        raise ProfileError(f"{where}: cumulative times need the same number of iterations for every exit, got {[c.size for c in cum]}")
    stages = np.diff(np.stack(cum), axis=0, prepend=0.0)
    bad = np.argwhere(stages < 0)
    if bad.size:
        e, i = bad[0]
        raise ProfileError(f"{where}: cumulative time to exit {e + 1} is below exit {e}'s in iteration {i + 1}; "
                           "cumulative times must not decrease along the exits")
    return list(stages)


def _numbered(header: list[str], pattern: re.Pattern) -> Optional[list[int]]:
    """Column order by exit number when every column matches ``pattern`` with exits 1..E."""
    nums = []
    for h in header:
        m = pattern.fullmatch(h)
        if not m:
            return None
        nums.append(int(m.group(1)))
    if sorted(nums) != list(range(1, len(nums) + 1)):
        raise ProfileError(f"CSV columns must be numbered 1..{len(nums)} without gaps or repeats, got {header}")
    return [nums.index(k) for k in range(1, len(nums) + 1)]


def _float(cell: str, where: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise ProfileError(f"{where}: {cell[:40]!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise ProfileError(f"{where}: {cell[:40]!r}: latencies and exit numbers must be finite and non-negative")
    return v


def import_csv(path: PathLike, device_name: Optional[str] = None) -> LatencyProfile:
    """Profile from a CSV of per-exit latency samples in ms (blank lines are skipped).

    Layouts (by header): wide ``stage1_ms,stage2_ms,stage3_ms`` (one row per iteration,
    per-stage times); cumulative ``exit1_cumulative_ms,...`` (one row per iteration, time to
    reach each exit; differenced per row); long ``exit,ms`` (one row per sample, exit
    1-based, per-stage times, in measurement order).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CSV file {p} not found")
    if p.stat().st_size > MAX_INPUT_BYTES:
        raise ProfileError(f"{p} is {p.stat().st_size} bytes, more than the {MAX_INPUT_BYTES >> 20} MB a latency CSV may have")
    lines = []
    with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        while line := f.readline(MAX_CSV_LINE + 1):  # bounded: a huge line is refused, never held whole
            if len(line) > MAX_CSV_LINE:
                raise ProfileError(f"{p} line {len(lines) + 1} is longer than {MAX_CSV_LINE} characters: not a latency CSV")
            lines.append(line)
    try:
        rows = [[c.strip() for c in r] for r in csv.reader(lines) if any(c.strip() for c in r)]
    except csv.Error as e:
        raise ProfileError(f"{p} is not a readable CSV ({e})") from None
    if not rows:
        raise ProfileError(f"{p} is empty; expected a header: {_CSV_LAYOUTS}")
    header, body = [h.lower() for h in rows[0]], rows[1:]
    if not body:
        raise ProfileError(f"{p} has a header but no samples")
    for n, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ProfileError(f"{p} line {n}: {len(r)} cells for {len(header)} columns")

    if header == ["exit", "ms"]:
        per_exit: dict[int, list[float]] = {}
        for n, (ex, ms) in enumerate(body, start=2):
            e = _float(ex, f"{p} line {n}")
            if e != int(e) or e < 1:
                raise ProfileError(f"{p} line {n}: exit must be a 1-based integer, got {ex!r}")
            per_exit.setdefault(int(e), []).append(_float(ms, f"{p} line {n}"))
        exits = sorted(per_exit)
        if exits != list(range(1, len(exits) + 1)):
            raise ProfileError(f"{p}: exits must be 1..E without gaps, got {exits}")
        stages = [per_exit[e] for e in exits]
        layout = "long"
    else:
        values = [[_float(c, f"{p} line {n}") for c in r] for n, r in enumerate(body, start=2)]
        cols = np.array(values, dtype=np.float64).T  # (columns, rows)
        order = _numbered(header, _WIDE)
        if order is not None:
            stages, layout = [cols[i] for i in order], "wide"
        else:
            order = _numbered(header, _CUMULATIVE)
            if order is None:
                raise ProfileError(f"{p}: unrecognised CSV header {rows[0]}; expected {_CSV_LAYOUTS}")
            stages, layout = _stages_from_cumulative([cols[i] for i in order], str(p)), "cumulative"
    return LatencyProfile.from_samples(stages, device=_device_from(None, device_name), source="csv",
                                       settings={"file": str(p), "layout": layout})


def import_json(path: PathLike, device_name: Optional[str] = None) -> LatencyProfile:
    """Profile from a JSON file of latencies in ms.

    Format (an object)::

        {"device": {"device_name": "pixel-8", ...},     # optional device facts
         "stages_ms": [[...exit 1...], [...exit 2...], [...exit 3...]],   # per-stage samples
         "threads": 4, "bundle": {...}, "notes": ["..."]}                  # optional

    or ``"cumulative_ms"`` instead of ``"stages_ms"``: per exit, the per-iteration time to
    reach that exit (sample ``i`` of every exit from iteration ``i``). A full
    ``dvt-profile/N`` file is also accepted (loaded as is).
    """
    p = Path(path)
    d = _read_json(p, "JSON file")
    if isinstance(d, dict) and "schema_version" in d and "stages" in d:
        prof = LatencyProfile.from_dict(d)
        if device_name:
            prof.device["device_name"] = device_name
        return prof
    if not isinstance(d, dict) or ("stages_ms" in d) == ("cumulative_ms" in d):
        raise ProfileError(f"{p}: expected an object with exactly one of 'stages_ms' or 'cumulative_ms' "
                           "(a list of per-exit sample lists, in ms)")
    key = "stages_ms" if "stages_ms" in d else "cumulative_ms"
    data = d[key]
    if not isinstance(data, list) or not data or not all(isinstance(s, list) for s in data):
        raise ProfileError(f"{p}: '{key}' must be a non-empty list of per-exit sample lists")
    stages = data if key == "stages_ms" else _stages_from_cumulative(data, str(p))
    threads = d.get("threads")
    return LatencyProfile.from_samples(
        stages, device=_device_from(d.get("device"), device_name), source="json",
        bundle=d.get("bundle") if isinstance(d.get("bundle"), dict) else None,
        threads=threads if isinstance(threads, int) else None,
        notes=[str(n) for n in d.get("notes", [])] if isinstance(d.get("notes"), list) else None,
        settings={"file": str(p), "layout": key},
    )


# ETDump: events the runtime records around a whole ``Method::execute`` and around each
# top-level instruction (the latter exclude the framework's own overhead between them).
ETDUMP_EXECUTE_EVENT = "Method::execute"
ETDUMP_INSTRUCTION_EVENTS = ("OPERATOR_CALL", "DELEGATE_CALL")
ETDUMP_LOAD_EVENT = "Program::load_method"


def _etdump_runs(inspector) -> tuple[list[float], str, Optional[float]]:
    """Per-run execution times (ms, chronological), the event used, and the load time."""
    execute: list[tuple[float, float]] = []
    instructions: list[tuple[float, float]] = []
    load_ms = None
    for block in inspector.event_blocks:
        events = [e for e in block.events if e.perf_data is not None and e.perf_data.raw]
        for ev in events:
            if ev.name == ETDUMP_EXECUTE_EVENT and not ev.is_delegated_op:
                execute += zip(_starts(ev), ev.perf_data.raw)
            elif ev.name == ETDUMP_LOAD_EVENT and load_ms is None:
                load_ms = float(ev.perf_data.raw[0])
        top = [ev for ev in events if ev.name in ETDUMP_INSTRUCTION_EVENTS and not ev.is_delegated_op]
        if top:
            n = min(len(ev.perf_data.raw) for ev in top)
            sums = np.sum([ev.perf_data.raw[:n] for ev in top], axis=0)
            instructions += zip(_starts(top[0])[:n], sums)
    if execute:
        return [float(v) for _, v in sorted(execute, key=lambda t: t[0])], ETDUMP_EXECUTE_EVENT, load_ms
    if instructions:
        return [float(v) for _, v in sorted(instructions, key=lambda t: t[0])], "+".join(ETDUMP_INSTRUCTION_EVENTS), load_ms
    return [], "", load_ms


def _starts(ev) -> list[float]:
    st = getattr(ev, "start_time", None) or getattr(ev, "_start_time", None)
    return list(st) if st and len(st) == len(ev.perf_data.raw) else list(range(len(ev.perf_data.raw)))


def import_etdump(
    etdump_path: Union[PathLike, Sequence[PathLike]],
    etrecord_path: Optional[Union[PathLike, Sequence[Optional[PathLike]]]] = None,
    device_name: Optional[str] = None,
    *,
    time_scale: str = "ns",
    skip_first: int = 1,
) -> LatencyProfile:
    """Profile from ExecuTorch ETDump files, one per exit, in exit order.

    Each exit's ``.pte`` runs as its own program, so each has its own ETDump. Stage time per
    run = the duration of the runtime's ``Method::execute`` profiling event (the whole
    method: every instruction, delegate calls and the framework overhead between them); an
    ETDump without it falls back to the per-run sum of the top-level ``OPERATOR_CALL`` /
    ``DELEGATE_CALL`` events (delegate-internal events are not added, they are nested
    inside ``DELEGATE_CALL``). Runs are ordered by start time. The first ``skip_first``
    runs of each exit are reported as ``first_inference_ms`` (the first one) and left out
    of the samples; ``Program::load_method``, when recorded, becomes ``load_ms``.
    ``time_scale``: unit of the runtime's timestamps (``ns`` for the default clock; ``us``,
    ``ms``, ``s``). ``etrecord_path``: optional ETRecord per exit, handed to the Inspector
    (it links events to operators; the timings do not need it). Sample ``i`` of every exit
    is paired for the cumulative stats, although the programs ran separately.

    Needs ``executorch`` (``pip install 'dvt-runtime[executorch]'``), imported here only.
    ETDump files are written only by an ExecuTorch runtime built with
    ``EXECUTORCH_ENABLE_EVENT_TRACER=ON`` (the pip wheel's Python runtime is not).
    """
    paths = [Path(etdump_path)] if isinstance(etdump_path, (str, os.PathLike)) else [Path(p) for p in etdump_path]
    if not paths:
        raise ValueError("pass one ETDump file per exit, in exit order")
    if etrecord_path is None or isinstance(etrecord_path, (str, os.PathLike)):
        records = [etrecord_path] * len(paths) if etrecord_path is None or len(paths) == 1 else None
        if records is None:
            raise ValueError(f"got {len(paths)} ETDump files but one ETRecord: pass one ETRecord per exit (each .pte has its own)")
    else:
        records = list(etrecord_path)
        if len(records) != len(paths):
            raise ValueError(f"got {len(paths)} ETDump files but {len(records)} ETRecords; pass one per exit")
    for pth in [*paths, *(Path(r) for r in records if r is not None)]:
        if not pth.is_file():
            raise FileNotFoundError(f"{pth} not found")
    if skip_first < 0:
        raise ValueError(f"skip_first must be >= 0, got {skip_first}")
    try:
        from executorch.devtools import Inspector
        from executorch.devtools.inspector import TimeScale
    except ImportError as e:
        raise BackendUnavailable(
            f"reading ETDump files needs ExecuTorch's devtools, which could not be imported ({e}). "
            "Install it with: pip install 'dvt-runtime[executorch]'"
        ) from None
    try:
        scale = TimeScale(time_scale)
    except ValueError:
        raise ValueError(f"unknown time_scale {time_scale!r}; valid: ns, us, ms, s") from None

    stages, first, load, used = [], [], [], set()
    for e, (pth, rec) in enumerate(zip(paths, records)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Output Buffer not found": only timings are read
            try:
                inspector = Inspector(etdump_path=str(pth), etrecord=None if rec is None else str(rec),
                                      source_time_scale=scale, target_time_scale=TimeScale.MS)
            except Exception as err:  # flatc / flatbuffer / ETRecord errors of all kinds
                with_rec = f" with ETRecord {rec}" if rec is not None else ""
                raise ProfileError(f"cannot read ETDump {pth}{with_rec} (exit {e + 1}): {type(err).__name__}: {err}") from None
        runs, event, load_ms = _etdump_runs(inspector)
        if len(runs) <= skip_first:
            raise ProfileError(
                f"{pth} (exit {e + 1}): {len(runs)} profiled run(s), need more than skip_first={skip_first}; "
                f"no '{ETDUMP_EXECUTE_EVENT}' or OPERATOR_CALL/DELEGATE_CALL events? Was the runtime built with "
                "EXECUTORCH_ENABLE_EVENT_TRACER=ON and the method executed?"
            )
        first.append(runs[0] if skip_first else None)
        stages.append(runs[skip_first:])
        load.append(load_ms)
        used.add(event)
    notes = [f"ETDump stage time: {' / '.join(sorted(used))} event per run"]
    return LatencyProfile.from_samples(
        stages, device=_device_from(None, device_name), source="etdump",
        bundle={"backend": "executorch"},
        load_ms=load if any(v is not None for v in load) else None,
        first_inference_ms=first if skip_first else None,
        settings={"files": [str(p) for p in paths], "etrecords": [None if r is None else str(r) for r in records],
                  "time_scale": time_scale, "skip_first": skip_first},
        notes=notes,
    )


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _measure_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dvt_runtime.profile",
        description="Profile a bundle's per-exit latency on this device (see also: python -m dvt_runtime.profile import -h).",
    )
    ap.add_argument("--bundle", required=True, help="bundle directory (manifest.json + one artifact per exit)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    ap.add_argument("--warmup", type=int, default=20, help="discarded warm-up chain runs (default 20)")
    ap.add_argument("--runs", type=int, default=200, help=f"timed chain runs (default 200, at least {MIN_RUNS})")
    ap.add_argument("--data", help="profile on real images: .npz with 'images' (float32 N,C,H,W preprocessed, or uint8 N,H,W[,C])")
    ap.add_argument("--device-name", help="name of this device (default: the hostname)")
    ap.add_argument("--batch", type=int, default=1, help="images per stage call (default 1); > 1 gives ms per image at that batch")
    ap.add_argument("--out", help="write the profile JSON here")
    ap.add_argument("--etdump-dir", help="ExecuTorch bundles: also record ExecuTorch's own trace and write exit<k>.etdp here "
                                         "(read back with: python -m dvt_runtime.profile import --etdump DIR/exit*.etdp)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _import_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dvt_runtime.profile import",
                                 description="Turn latencies measured elsewhere into a dvt latency profile.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV: stage1_ms,stage2_ms,... | exit1_cumulative_ms,... | exit,ms")
    src.add_argument("--json", help="JSON: {'device': {...}, 'stages_ms': [[...], ...]} or 'cumulative_ms'")
    src.add_argument("--etdump", nargs="+", metavar="ETDP", help="ExecuTorch ETDump files, one per exit, in exit order")
    ap.add_argument("--etrecord", nargs="+", metavar="ETRECORD", help="ETRecord per exit (optional, with --etdump)")
    ap.add_argument("--device-name", help="name of the device the latencies were measured on")
    ap.add_argument("--out", required=True, help="write the profile JSON here")
    return ap


def _load_npz(path: str, bundle) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
    from dvt_runtime.io import read_npz

    p = Path(path)
    hint = "'images' must be float32 (N, C, H, W) preprocessed or uint8 (N, H, W[, C])"
    images = read_npz(p, ("images",), lambda m: ValueError(f"--data {m}"), hint)["images"]
    if len(images) == 0:
        raise ValueError(f"--data {p}: 'images' is empty")
    if images.dtype == np.uint8:
        raw = list(images)
        return np.concatenate([bundle.preprocess(im) for im in raw]), raw
    if images.dtype != np.float32 or images.ndim != 4:
        raise ValueError(f"--data {p}: 'images' must be float32 (N, C, H, W) or uint8 (N, H, W[, C]); got {images.dtype} {images.shape}")
    return images, None


def _measure(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    if args.runs < MIN_RUNS:
        ap.error(f"--runs must be at least {MIN_RUNS} (the drift check compares quarters), got {args.runs}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    from dvt_runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle, threads=args.threads, **({"etdump": True} if args.etdump_dir else {}))
    if args.etdump_dir and bundle.manifest.backend != "executorch":
        ap.error(f"--etdump-dir is for ExecuTorch bundles; this one runs on {bundle.manifest.backend}")
    images, raw = _load_npz(args.data, bundle) if args.data else (None, None)
    prof = profile_bundle(bundle, warmup=args.warmup, runs=args.runs, images=images, images_raw=raw,
                          threads=args.threads, progress=not args.no_progress, device_name=args.device_name, batch=args.batch)
    if args.etdump_dir:
        for path in bundle.write_etdump(args.etdump_dir):
            print(f"wrote {path}")
    return _finish(prof, args.out)


def _import(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    if args.etrecord and not args.etdump:
        ap.error("--etrecord goes with --etdump")
    if args.csv:
        prof = import_csv(args.csv, device_name=args.device_name)
    elif args.json:
        prof = import_json(args.json, device_name=args.device_name)
    else:
        prof = import_etdump(args.etdump, args.etrecord, device_name=args.device_name)
    return _finish(prof, args.out)


def _finish(prof: LatencyProfile, out: Optional[str]) -> int:
    print(prof.format_table())
    if out:
        print(f"wrote {prof.save(out)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; bad input prints a message and returns 2 (argparse errors exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_import = bool(argv) and argv[0] == "import"
    ap = _import_parser() if is_import else _measure_parser()
    args = ap.parse_args(argv[1:] if is_import else argv)
    try:
        return _import(args, ap) if is_import else _measure(args, ap)
    except (ValueError, OSError, BackendUnavailable) as e:  # ManifestError, InputError, ProfileError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
