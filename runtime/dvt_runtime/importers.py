"""Latencies measured elsewhere (a phone app, a C++ harness, ExecuTorch's ETDump) as a :class:`LatencyProfile`.

:func:`import_csv` and :func:`import_json` read plain files of per-stage or cumulative
samples in ms; :func:`import_etdump` reads ExecuTorch's own trace, one ETDump per exit.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from dvt_runtime.backends import BackendUnavailable, install_hint, toolchain_output
from dvt_runtime.latency import MAX_INPUT_BYTES, LatencyProfile, nulled_nonfinite, read_json
from dvt_runtime.stats import ProfileError, check_samples

__all__ = ["import_csv", "import_json", "import_etdump", "ETDUMP_EXECUTE_EVENT"]

MAX_CSV_LINE = 1 << 16
PathLike = Union[str, "os.PathLike[str]"]

_WIDE = re.compile(r"stage(\d+)_ms")
_CUMULATIVE = re.compile(r"exit(\d+)_cumulative_ms")
_CSV_LAYOUTS = ("wide 'stage1_ms,stage2_ms,...' (one row per iteration), "
                "cumulative 'exit1_cumulative_ms,exit2_cumulative_ms,...' (one row per iteration) "
                "or long 'exit,ms' (one row per sample, exit 1-based)")


def _device_from(file_device: Any, device_name: Optional[str]) -> dict[str, Any]:
    bad: list[str] = []
    device = nulled_nonfinite(dict(file_device), "", bad) if isinstance(file_device, dict) else {"device_name": device_name}
    if bad:  # facts, not latencies: an unknown reading is null (a NaN would make the profile unwritable as JSON)
        warnings.warn(f"device fact(s) {sorted(bad)} are not finite numbers; recorded as null", stacklevel=3)
    if device_name:
        device["device_name"] = device_name
    return device


def _stages_from_cumulative(cumulative: Sequence[Sequence[float]], where: str) -> list[np.ndarray]:
    """Per-stage samples from per-exit cumulative samples (E, N): differences along the exits."""
    cum = [check_samples(c, f"{where} exit {i + 1}") for i, c in enumerate(cumulative)]
    if len({c.size for c in cum}) > 1:
        raise ProfileError(f"{where}: cumulative times need the same number of iterations for every exit, got {[c.size for c in cum]}")
    stages = np.diff(np.stack(cum), axis=0, prepend=0.0)
    bad = np.argwhere(stages < 0)
    if bad.size:
        e, i = bad[0]
        raise ProfileError(f"{where}: cumulative time to exit {e + 1} is below exit {e}'s in iteration {i + 1}; "
                           "cumulative times must not decrease along the exits")
    return list(stages)


@contextlib.contextmanager
def _named(where: str) -> Iterator[None]:
    """A profile that cannot be built from a file's figures (a NaN, a stage at 0 ms) is an error naming the file."""
    try:
        yield
    except ProfileError as e:
        raise (e if str(e).startswith(where) else ProfileError(f"{where}: {e}")) from None


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
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a CSV file of latencies: name the file")
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
    if len(rows[0]) == 1 and (sep := next((c for c in ";\t|" if c in rows[0][0]), None)):
        raise ProfileError(f"{p}: the header {rows[0][0][:60]!r} is one column separated by {sep!r}: a latency CSV is "
                           f"comma-separated ({_CSV_LAYOUTS}); save it with commas")
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
    with _named(str(p)):
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
    d = read_json(p, "JSON file")
    if isinstance(d, dict) and "schema_version" in d and "stages" in d:
        prof = LatencyProfile.from_dict(d)
        if device_name:
            prof.device["device_name"] = device_name
        return prof
    if not isinstance(d, dict) or ("stages_ms" in d) == ("cumulative_ms" in d):
        raise ProfileError(f"{p}: expected an object with exactly one of 'stages_ms' or 'cumulative_ms' "
                           "(a list of per-exit sample lists, in ms)")
    key = "stages_ms" if "stages_ms" in d else "cumulative_ms"
    if extra := sorted(set(d) - {key, "device", "threads", "bundle", "notes"}):  # a declared unit or batch was dropped unsaid
        raise ProfileError(f"{p}: unknown key(s) {extra}; a raw JSON holds '{key}' (per-exit sample lists in ms, one image per "
                           "call) and optionally 'device', 'threads', 'bundle', 'notes': convert other units to ms, and import "
                           "timings of batches as a dvt-profile file (profile --batch N)")
    data = d[key]
    if not isinstance(data, list) or not data or not all(isinstance(s, list) for s in data):
        raise ProfileError(f"{p}: '{key}' must be a non-empty list of per-exit sample lists")
    stages = data if key == "stages_ms" else _stages_from_cumulative(data, str(p))
    dev = d.get("device")
    if isinstance(dev, str) and dev.strip():  # a plain name (it had been dropped unsaid): the device's name
        dev = {"device_name": dev.strip()}
    if dev is not None and not isinstance(dev, dict):
        raise ProfileError(f"{p}: 'device' must be an object of device facts, e.g. {{\"device_name\": \"pixel-8\"}}, or the device's "
                           f"name, got {dev!r}")
    if dev and not dev.get("device_name") and not device_name and (near := sorted(set(dev) & {"name", "device", "model", "id"})):
        raise ProfileError(f"{p}: 'device' has {near} but no 'device_name', the key its name goes in (calibrate would say the "
                           "profile names no device): rename the key, or pass --device-name NAME")
    notes = d.get("notes") or []  # null: none
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):  # a plain string was dropped unsaid
        raise ProfileError(f"{p}: 'notes' must be a list of strings, got {notes!r}")
    with _named(str(p)):
        return LatencyProfile.from_samples(
            stages, device=_device_from(dev, device_name), source="json",
            bundle=d.get("bundle") if isinstance(d.get("bundle"), dict) else None,
            threads=_json_threads(d, p), notes=notes, settings={"file": str(p), "layout": key})


def _json_threads(d: dict, p: Path) -> Optional[int]:
    """The thread count of a JSON file: ``threads`` or ``device.threads`` (they must agree); None when neither says."""
    dev = d.get("device") if isinstance(d.get("device"), dict) else {}
    said = {k: v for k, v in (("threads", d.get("threads")), ("device.threads", dev.get("threads"))) if v is not None}
    for k, v in said.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProfileError(f"{p}: '{k}' must be a whole number of threads >= 1, got {v!r}")
    if len(set(said.values())) > 1:
        raise ProfileError(f"{p}: 'threads' {said['threads']} and 'device.threads' {said['device.threads']} disagree: "
                           "keep the count the device ran with")
    return next(iter(said.values()), None)


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
    timed: Optional[Sequence[bool]] = None,
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
    is paired for the cumulative stats, although the programs ran separately. ``timed``: which
    runs were timed (``profile --etdump-dir`` writes it as ``etdump_runs.json``; the command-line
    import reads it from beside the files): the others (first inference, warm-up, settling runs)
    are left out, and ``skip_first`` is not applied.

    Needs ``executorch`` (the runtime's ``executorch`` extra), imported here only.
    ETDump files are written by an ExecuTorch runtime with its event tracer: the pip wheel's Python runtime
    (``profile --etdump-dir``) or a runner built with ``EXECUTORCH_ENABLE_EVENT_TRACER=ON`` (a phone's).
    """
    paths, records = _etdump_files(etdump_path, etrecord_path)
    if skip_first < 0:
        raise ValueError(f"skip_first must be >= 0, got {skip_first}")
    try:
        with toolchain_output("executorch"):  # torchao's GPU kernels and torch's pytree notices, held unless it fails
            from executorch.devtools import Inspector
            from executorch.devtools.inspector import TimeScale
    except ImportError as e:
        raise BackendUnavailable(
            f"reading ETDump files needs ExecuTorch's devtools, which could not be imported ({e}). "
            f"Install it with: {install_hint('executorch')}"
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
        f, kept = _timed_only(runs, timed, skip_first, f"{pth} (exit {e + 1})")
        first.append(f)
        stages.append(kept)
        load.append(load_ms)
        used.add(event)
    notes = [f"ETDump stage time: {' / '.join(sorted(used))} event per run"]
    return LatencyProfile.from_samples(  # ETDump clocks are nanoseconds: never a whole-ms zero
        stages, device=_device_from(None, device_name), source="etdump",
        bundle={"backend": "executorch"},
        load_ms=load if any(v is not None for v in load) else None,
        first_inference_ms=first if skip_first or timed is not None else None,
        settings={"files": [str(p) for p in paths], "etrecords": [None if r is None else str(r) for r in records],
                  "time_scale": time_scale, **({"timed_runs": int(sum(map(bool, timed)))} if timed is not None else {"skip_first": skip_first})},
        notes=notes,
    )


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _timed_only(runs: list[float], timed: Optional[Sequence[bool]], skip_first: int, where: str) -> tuple[Optional[float], list[float]]:
    """(first inference or None, the timed runs): by the profiler's record when there is one, else all after ``skip_first``."""
    if timed is None:
        return (runs[0] if skip_first else None), runs[skip_first:]
    if len(timed) != len(runs):
        raise ProfileError(f"{where} holds {len(runs)} runs, the run record {len(timed)}: they come from different "
                           "profiling runs; profile again with --etdump-dir")
    return runs[0], [r for r, t in zip(runs, timed) if t]


def _etdump_files(etdump_path, etrecord_path) -> tuple[list[Path], list[Optional[PathLike]]]:
    """The ETDump files and one ETRecord (or None) per exit; errors name what is missing."""
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
        if pth.is_dir():
            raise IsADirectoryError(f"{pth} is a folder, not an ETDump/ETRecord file: name the file")
        if not pth.is_file():
            raise FileNotFoundError(f"{pth} not found")
    return paths, records
