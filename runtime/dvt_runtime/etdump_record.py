"""The run record written beside ETDump traces (``etdump_runs.json``): which traced runs were timed, which bundle ran
them and at how many threads. An ETDump names no program, so without it a trace of one bundle (the int8 export) could be
imported as another's (the fp32 one beside it) and price that bundle's thresholds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

from dvt_runtime.calibration import bundle_identity
from dvt_runtime.io import atomic_write_json
from dvt_runtime.latency import read_json
from dvt_runtime.schema import newer_message
from dvt_runtime.stats import ProfileError

__all__ = ["ETDUMP_RUNS", "ETDUMP_RUNS_SCHEMA", "write_run_record", "read_run_record", "check_run_record", "check_etdump_files"]

ETDUMP_RUNS, ETDUMP_RUNS_SCHEMA = "etdump_runs.json", "dvt-etdump-runs/1"


def write_run_record(directory: Path, timed: Optional[list[bool]], manifest, threads: Optional[int]) -> Path:
    """``directory/etdump_runs.json``: ``timed`` (None: not recorded, e.g. a trace of ``predict`` calls), the bundle's
    identity (model, target, precision and every artifact's SHA-256) and the thread count the trace was taken at."""
    return atomic_write_json(Path(directory) / ETDUMP_RUNS, {"schema": ETDUMP_RUNS_SCHEMA, "timed": timed,
                                                             "bundle": bundle_identity(manifest),
                                                             "threads": threads or None})  # 0: the backend's default


def read_run_record(files: Sequence[str]) -> Optional[dict[str, Any]]:
    """The record beside the ETDump files, if any (records before the bundle and threads were kept hold ``timed`` alone)."""
    rec = Path(files[0]).parent / ETDUMP_RUNS
    if not rec.is_file():
        return None
    d = read_json(rec, "ETDump run record")
    version = re.fullmatch(r"dvt-etdump-runs/(\d+)", str(d.get("schema"))) if isinstance(d, dict) else None
    if version and int(version.group(1)) > 1:  # a newer runtime's record: its checks would be lost by deleting it
        raise ProfileError(f"{rec}: {newer_message('ETDump run record', int(version.group(1)), 1, form='dvt-etdump-runs/{}')}")
    timed = d.get("timed") if isinstance(d, dict) else None
    if not (isinstance(d, dict) and d.get("schema") == ETDUMP_RUNS_SCHEMA and (timed is None or isinstance(timed, list))
            and all(isinstance(t, bool) for t in timed or []) and isinstance(d.get("bundle", {}), dict)
            and (d.get("threads") is None or (isinstance(d["threads"], int) and not isinstance(d["threads"], bool) and d["threads"] >= 0))):
        raise ProfileError(f"{rec} is not a {ETDUMP_RUNS_SCHEMA} run record; delete it to import every run after the first")
    return d


def check_run_record(rec: Optional[dict], files: Sequence[str], manifest, bundle: Optional[str], threads: Optional[int]) -> None:
    """Refuse traces whose record names another bundle than ``--bundle`` (another precision, or a re-export), or another
    thread count than ``--threads``."""
    if rec is None:
        return
    where, theirs = Path(files[0]).parent / ETDUMP_RUNS, rec.get("bundle") or {}
    if manifest is not None and theirs:
        want = bundle_identity(manifest)
        if differ := [k for k in want if k in theirs and theirs[k] != want[k]]:
            said = ", ".join("other artifacts (SHA-256)" if k == "artifacts" else f"{k} {theirs[k]!r}" for k in differ)
            raise ProfileError(f"{where} says these ETDump files traced another bundle ({said}), not {bundle} ({manifest.model} "
                               f"{manifest.target}/{manifest.precision}): import them with --bundle of the bundle that ran, or "
                               "trace this one")
    if threads is not None and rec.get("threads") is not None and rec["threads"] != threads:
        raise ProfileError(f"--threads {threads}, but {where} says the trace was taken at {rec['threads']} thread(s): keep the "
                           "count it ran with")


def check_etdump_files(files: Sequence[str], manifest, bundle: Optional[str]) -> None:
    """ETDump files are ExecuTorch traces, given in exit order: refused for another backend's bundle, or when their names
    number the exits in another order (exit 3's trace read as exit 1's)."""
    if manifest is not None and manifest.backend != "executorch":
        raise ProfileError(f"ETDump files are ExecuTorch traces, but bundle {bundle} runs on {manifest.backend}: import them with "
                           "--bundle of the ExecuTorch bundle (.pte) the device ran, or time this bundle on the device and "
                           "import a --csv or --json")
    found = [re.search(r"exit[_-]?(\d+)", Path(f).name, re.IGNORECASE) for f in files]
    nums = [int(m.group(1)) for m in found if m]
    if len(nums) == len(files) and any(a >= b for a, b in zip(nums, nums[1:])):  # exit0.. and gaps are fine
        order = [f for _, f in sorted(zip(nums, files), key=lambda t: t[0])]
        raise ProfileError(f"--etdump files are read in exit order (exit 1 first), but their names say otherwise: "
                           f"{' '.join(map(str, files))}; pass them as {' '.join(map(str, order))}")
