"""On-device latency profile of a bundle's early-exit cascade (numpy + stdlib only).

    bundle = Bundle.open("bundles/dvt_tiny_fmnist_ms-onnx-fp32", threads=1)
    prof = profile_bundle(bundle, warmup=20, runs=200)
    print(prof.format_table())
    prof.save("profile.json")
    costs = prof.stage_costs()          # -> dvt_runtime.search.StageCosts (raw per-stage samples)

Each iteration runs the whole chain exit 1 -> exit 2 -> ... and times every
stage (all its calls, through ``Bundle.chain``), so stage ``e``'s samples and the cumulative latency to reach exit ``e``
(per-iteration sums of stages 1..e) come from the same runs. Interleaved with them in blocks, a
stream of runs that all stop at each earlier exit is timed (``stopping``): a cascade whose images
mostly leave at exit 1 runs stage 1 after stage 1, with its weights still in cache, which a chain
through every exit never measures (on a 2-core EPYC with 1 MiB L2 per core: 0.67 ms vs 1.10 ms for
the CIFAR-10 reference's stage 1). Latencies measured elsewhere
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
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from dvt_runtime.backends import PROVIDERS_HELP, BackendUnavailable, parse_providers
from dvt_runtime.cli import Parser, command_name
from dvt_runtime.console import progress as _bar
from dvt_runtime.device import MEMORY_PROBE, MEMORY_WARN, check_batch_memory, device_facts, peak_rss_mb
from dvt_runtime.etdump_record import ETDUMP_RUNS, check_etdump_files, check_run_record, read_run_record, write_run_record
from dvt_runtime.importers import import_csv, import_etdump, import_json
from dvt_runtime.io import check_out_path, os_error_text
from dvt_runtime.latency import SCHEMA, SCHEMA_VERSION, LatencyProfile, batch_note, check_batch
from dvt_runtime.manifest import Manifest
from dvt_runtime.measure import cascade_overhead_ms
from dvt_runtime.npzsets import load_images
from dvt_runtime.stats import DRIFT_MIN_QUARTER, DRIFT_THRESHOLD, MIN_RUNS, ProfileError, sample_stats

if TYPE_CHECKING:
    from dvt_runtime.bundle import Bundle

BLOCK = 20  # timed runs per block of one depth (chain or stream); blocks rotate between depths
# untimed runs that open each block: after a switch, stage 1 of the CIFAR reference took 1.02,
# 0.82, 0.73, 0.70, 0.68 ms and then ~0.66 ms on a 2-core EPYC (1 MiB L2 per core)
SETTLE = 5
CAMERA_FRAME = (480, 640, 3)  # the preprocessing time is measured on a frame of this shape (H, W, BGR) by default

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "DRIFT_THRESHOLD",
    "MIN_RUNS",
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


# --------------------------------------------------------------------------------------
# Measuring a bundle
# --------------------------------------------------------------------------------------


def _batches(xs: list[np.ndarray], batch: int, n: int = 8) -> list[np.ndarray]:
    """Up to ``n`` distinct (batch, C, H, W) inputs cycling through the (1, C, H, W) images."""
    count = max(1, min(n, len(xs) // batch))
    return [np.ascontiguousarray(np.concatenate([xs[(b * batch + k) % len(xs)] for k in range(batch)])) for b in range(count)]


def _held_mb(bundle, n: int, batch: int) -> float:
    """MiB of the float32 inputs :func:`_batches` holds for ``n`` images at ``batch``."""
    return min(8, max(1, n // batch)) * batch * 4 * int(np.prod(bundle.input_shape)) / 2**20


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
    # a camera's frame, as the webcam and a phone feed it: preprocessing a network-sized image hides the resize
    # (measured at 224 px: 0.95 ms on a 224x224 image, 1.9 ms on 480x640, 8.5 ms on 1080x1920)
    return [np.random.default_rng(1).integers(0, 256, CAMERA_FRAME, dtype=np.uint8)]


def _frames_note(raw: list[np.ndarray]) -> str:
    shapes = sorted({"x".join(map(str, np.shape(x))) for x in raw})
    return f"{len(raw)} uint8 image(s) of {', '.join(shapes[:3])}" + (" ..." if len(shapes) > 3 else "")


def profile_bundle(
    bundle: "Bundle",
    warmup: int = 20,
    runs: int = 200,
    images: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = None,
    threads: Optional[int] = None,
    progress: bool = True,
    images_raw: Optional[Sequence[np.ndarray]] = None,
    device_name: Optional[str] = None,
    batch: int = 1,
    streams: bool = True,
    overhead: bool = False,
) -> LatencyProfile:
    """Measure a loaded :class:`~dvt_runtime.bundle.Bundle`'s cascade on this device. ``batch``: images per stage call (as
    ``Bundle.predict`` runs a batch: one call per stage where the artifacts take a batch, a loop where they take one image);
    samples are then ms per image at that batch size, a throughput cost.

    Per exit: the first inference after load, then ``warmup`` discarded chain runs, then
    ``runs`` timed chain runs (every stage timed with ``time.perf_counter``), and as many
    runs of chains that stop at each earlier exit (the profile's ``stopping``), timed in
    rotating blocks of ``BLOCK`` (see :func:`_schedule`; ``streams=False`` times chains only,
    e.g. while ExecuTorch traces every run into an ETDump, whose importer pairs each exit's
    runs by index).
    ``images``: preprocessed float32 inputs, (N, C, H, W) or a sequence, cycled through
    (default: one fixed random image). ``images_raw``: uint8 images for the preprocessing
    time (default: a random 480x640 BGR frame, a camera's; the size is recorded in ``settings``). ``threads``: the thread
    setting the bundle was opened with (recorded, not applied). Call it on a freshly opened
    bundle, or ``first_inference_ms`` is not really the first. ``overhead``: then measure ``predict``'s own per-image cost of
    stopping at each exit (``settings.predict_overhead_ms``, which calibrate prices)."""
    threads = getattr(bundle, "threads", None) if threads is None else threads  # as opened, unless told
    if int(runs) < MIN_RUNS or int(warmup) < 0:
        raise ValueError(f"runs must be at least {MIN_RUNS} (the fewest a profile summarises; the throttling check needs 12 and "
                         f"percentiles 20), got {runs}" if int(runs) < MIN_RUNS else f"warmup must be >= 0, got {warmup}")
    from dvt_runtime.device import contention_since, contention_snapshot
    runs, warmup, batch = int(runs), int(warmup), check_batch(batch)
    singles = _inputs(bundle, images)
    chunk = bundle.batch_limit()
    memory = check_batch_memory(bundle, batch, "batch", lambda b: _held_mb(bundle, len(singles), b))  # before the first call
    xs = _batches(singles, batch)
    first = [ms / batch for ms in _time_chain(bundle, xs[0], chunk)]
    gc.collect()
    snap = contention_snapshot()  # how much the timed runs competed for a CPU: a busy core read as throttling
    E = bundle.num_exits
    samples: list[list[float]] = [[] for _ in range(E)]
    stopping: list[list[float]] = [[] for _ in range(E)]
    for depth, timed, x in _bar(_schedule(E, warmup, runs, streams, xs), None, "profiling", enabled=progress):
        stage_ms = _time_chain(bundle, x, chunk, depth)
        if not timed:
            continue
        if depth == E:
            for e, ms in enumerate(stage_ms):
                samples[e].append(ms / batch)
        stopping[depth - 1].append(sum(stage_ms) / batch)  # the last exit's stream: the chains themselves
    inputs = "random" if images is None else f"{len(singles)} images" + (f" in {len(xs)} batches of {batch}" if batch > 1 else "")
    peak = peak_rss_mb()  # the timed runs' (before the overhead's runs)
    # predict's own per-image cost beyond the stage calls, which calibrate adds (not while ExecuTorch traces every run)
    overhead = {"predict_overhead_ms": cascade_overhead_ms(bundle, xs[0], batch=batch)} if overhead and streams else {}
    raw = _raw_images(bundle, images_raw)
    return LatencyProfile.from_samples(
        samples,
        device=_device(bundle, threads, device_name),
        source="measured",
        bundle=bundle_facts(bundle.manifest, bundle.path),
        threads=threads or None,  # 0 = the backend's default, as None
        load_ms=list(bundle.load_ms),
        first_inference_ms=first,
        preprocess_samples=_time_preprocess(bundle, raw, runs),
        peak_rss_mb=peak,
        settings={"warmup": warmup, "runs": runs, "inputs": inputs, "contention": contention_since(snap),
                  "preprocess_frames": _frames_note(raw) + (" (random camera-sized frame)" if images_raw is None else ""),
                  "timer": "time.perf_counter", "unit": "ms per image" if batch > 1 else "ms per call",
                  "calls_per_stage": "loop (batch-1 artifacts)" if chunk == 1 and batch > 1 else "one",
                  "stopping": (f"per exit, runs chains that all stop there, in blocks of {BLOCK} rotating with the chains through "
                               "every exit (the last exit's stream: those chains)" if streams else "not measured"),
                  **({"memory": f"estimated {memory['estimated_mb']:.0f} MiB of {memory['available_mb']:.0f} MiB available "
                                f"({memory['mb_per_image']:.2f} MiB per image, measured in a fresh process at batch "
                                f"{MEMORY_PROBE[0]} and {MEMORY_PROBE[1]})"} if memory else {}), **overhead},
        batch=batch,
        stopping_samples=stopping if streams else None,
    )


def _schedule(E: int, warmup: int, runs: int, streams: bool, xs: list[np.ndarray], block: int = BLOCK,
              settle: int = SETTLE) -> list[tuple[int, bool, np.ndarray]]:
    """(depth, timed, input) per run: ``warmup`` untimed runs per depth, then blocks of ``block``
    timed runs that rotate between the chain through every exit (depth E) and the stream
    stopping at each earlier exit, each block after ``settle`` untimed runs that bring the
    caches to the state a long stream of that depth keeps.
    Interleaving keeps a device's drift (a shared VM's speed moves within a minute) out of the
    comparison between the prices."""
    depths = [E, *range(1, E)] if streams else [E]
    plan = [(d, False) for d in depths for _ in range(warmup)]
    for b, start in enumerate(range(0, runs, block)):
        k = b % len(depths)
        for d in depths[k:] + depths[:k]:
            plan += [(d, False)] * settle + [(d, True)] * min(block, runs - start)
    return [(d, timed, xs[i % len(xs)]) for i, (d, timed) in enumerate(plan)]


def _time_chain(bundle, x: np.ndarray, chunk: int, depth: Optional[int] = None) -> list[float]:
    """Wall time (ms) of each stage of one run of the chain exit 1 -> exit ``depth`` (default: E) on ``x``."""
    clock = time.perf_counter
    out: list[float] = []
    t0 = clock()
    for _ in bundle.chain(x, chunk):  # each step runs one stage (all its calls) and yields
        t1 = clock()
        out.append((t1 - t0) * 1e3)
        if len(out) == depth:
            break
        t0 = t1
    return out


def _time_preprocess(bundle, raws: list[np.ndarray], runs: int) -> list[float]:
    for raw in raws[:2]:  # untimed: the first call (cold caches, OpenCV's first resize) took twice the rest
        bundle.preprocess(raw)
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        bundle.preprocess(raws[i % len(raws)])
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bundle_facts(manifest, path) -> dict[str, Any]:
    """What a profile records of the bundle it timed (``calibrate`` refuses a profile of another one)."""
    return {"model": manifest.model, "target": manifest.target, "precision": manifest.precision,
            "backend": manifest.backend, "path": str(path), "num_exits": manifest.num_exits}


def _device(bundle, threads: Optional[int], device_name: Optional[str]) -> dict[str, Any]:
    device = device_facts(threads=threads, backend=bundle.manifest.backend)
    if device_name:
        device["device_name"] = device_name
    providers = getattr(bundle.sessions[0], "providers", None) if getattr(bundle, "sessions", None) else None
    if providers:
        device["providers"] = list(providers)
    return device


def _measure_parser() -> argparse.ArgumentParser:
    prog = command_name("python -m dvt_runtime.profile")  # as typed: the pointer below names the same form
    ap = Parser(prog=prog, description=f"Profile a bundle's per-exit latency on this device (see also: {prog} import -h).")
    ap.add_argument("--bundle", required=True, help="bundle directory (manifest.json + one artifact per exit)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1; 0: the backend's default, every core)")
    ap.add_argument("--providers", default=None, help=PROVIDERS_HELP)
    ap.add_argument("--warmup", type=int, default=20, help="discarded warm-up chain runs (default 20)")
    ap.add_argument("--runs", type=int, default=200, help=f"timed chain runs (default 200, at least {MIN_RUNS})")
    ap.add_argument("--data", help="profile on real images: .npz with 'images' (float32 N,C,H,W preprocessed, or uint8 N,H,W[,C])")
    ap.add_argument("--device-name", help="name of this device (default: DVT_DEVICE_NAME if set, else the host name; on macOS its Bonjour name)")
    ap.add_argument("--batch", type=int, default=1, help="images per stage call (default 1); > 1 gives ms per image at that batch")
    ap.add_argument("--out", help="write the profile JSON here")
    ap.add_argument("--etdump-dir", help="ExecuTorch bundles: also record ExecuTorch's own trace and write exit<k>.etdp here "
                                         "(read back with: python -m dvt_runtime.profile import --etdump DIR/exit*.etdp)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _import_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=command_name("python -m dvt_runtime.profile") + " import",
                                 description="Turn latencies measured elsewhere into a dvt latency profile.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV: stage1_ms,stage2_ms,... | exit1_cumulative_ms,... | exit,ms")
    src.add_argument("--json", help="JSON: {'device': {'device_name': NAME, ...}, 'stages_ms': [[...], ...]} or 'cumulative_ms'")
    src.add_argument("--etdump", nargs="+", metavar="ETDP", help="ExecuTorch ETDump files, one per exit, in exit order")
    ap.add_argument("--etrecord", nargs="+", metavar="ETRECORD", help="ETRecord per exit (optional, with --etdump)")
    ap.add_argument("--skip-first", type=int, default=None, metavar="N",
                    help="--etdump without the etdump_runs.json that profile --etdump-dir writes (e.g. a phone's trace): "
                         "leave out each exit's first N runs, the first inference and warm-up (default 1)")
    ap.add_argument("--device-name", help="name of the device the latencies were measured on")
    ap.add_argument("--threads", type=int, default=None, help="the thread count the device ran with: recorded, so that a run "
                                                              "or calibration at another count is warned")
    ap.add_argument("--bundle", help="the bundle the latencies were measured with: recorded, so that calibrate refuses the "
                                     "profile for another model, target or precision (without it nothing can check)")
    ap.add_argument("--out", required=True, help="write the profile JSON here")
    ap.add_argument("--no-progress", action="store_true", help="accepted as every command takes it (an import draws no progress bar)")
    return ap


def _measure(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    if args.runs < MIN_RUNS:
        ap.error(f"--runs must be at least {MIN_RUNS} (the fewest a profile summarises; the throttling check needs 12 and percentiles 20), got {args.runs}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 0:  # 0: the backend's default, as predict takes it
        ap.error(f"--threads must be >= 1, or 0 for the backend's default, got {args.threads}")
    if args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    _check_name(args.device_name, ap)
    if args.out:
        check_out_path(args.out, "--out", replaces="dvt-profile/", example="profile.json")
    from dvt_runtime.bundle import Bundle

    if args.etdump_dir and (backend := Manifest.load(args.bundle, verify=False).backend) != "executorch":
        ap.error(f"--etdump-dir is for ExecuTorch bundles; this one runs on {backend}")
    if args.etdump_dir and (Path(args.etdump_dir).exists() and not Path(args.etdump_dir).is_dir()):  # found before the runs
        ap.error(f"--etdump-dir {args.etdump_dir} is a file: name a folder for the ETDump files")
    bundle = Bundle.open(args.bundle, threads=args.threads, providers=parse_providers(args.providers), device_name="",
                         **({"etdump": True} if args.etdump_dir else {}))
    if args.etdump_dir and args.batch > 1:  # one ETDump event per call: per-call times, not per image
        ap.error("--etdump-dir records one event per call: profile at --batch 1")
    if note := batch_note(bundle, args.batch):
        print(note, file=sys.stderr)
    images, raw = load_images(args.data, bundle) if args.data else (None, None)
    est = check_batch_memory(bundle, args.batch, "--batch", lambda b: _held_mb(bundle, 1 if images is None else len(images), b))
    if est and est["estimated_mb"] <= MEMORY_WARN * est["available_mb"]:  # above it, the check's warning said it; measured once
        print(f"note: --batch {args.batch} needs about {est['estimated_mb']:.0f} MiB here ({est['available_mb']:.0f} MiB available)",
              file=sys.stderr)
    prof = profile_bundle(bundle, warmup=args.warmup, runs=args.runs, images=images, images_raw=raw,
                          threads=args.threads, progress=not args.no_progress, device_name=args.device_name, batch=args.batch,
                          streams=not args.etdump_dir, overhead=True)  # the ETDump holds the chains alone, one run per chain
    _few_runs_note(prof)
    rc = _finish(prof, args.out)  # the profile first: a trace that cannot be written loses no measurement
    if args.etdump_dir:
        for path in bundle.write_etdump(args.etdump_dir, record=False):
            print(f"wrote {path}")
        # which traced runs were timed: the first inference, warm-up and settling runs are in the trace too
        timed = [False] + [t for _, t, _ in _schedule(bundle.num_exits, args.warmup, args.runs, False, [None])]
        print(f"wrote {write_run_record(Path(args.etdump_dir), timed, bundle.manifest, args.threads)}")  # and which bundle, threads
    return rc


def _check_name(name: Optional[str], ap: argparse.ArgumentParser) -> None:
    """--device-name as calibrate takes it ('' fell back to this host's name, unsaid; 'x-batch8' made a profile no
    calibration could be named after)."""
    from dvt_runtime.device import check_device_name

    if name is not None:
        try:
            check_device_name(name)
        except ValueError as e:
            ap.error(str(e))


def _import(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    if args.etrecord and not args.etdump:
        ap.error("--etrecord goes with --etdump")
    if args.skip_first is not None and not args.etdump:  # a CSV's or JSON's rows are all kept: it was silently ignored
        ap.error("--skip-first goes with --etdump: leave warm-up rows out of the CSV or JSON itself")
    check_out_path(args.out, "--out", replaces="dvt-profile/", example="profile.json")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    _check_name(args.device_name, ap)
    manifest = Manifest.load(args.bundle) if args.bundle else None
    if args.etdump:
        check_etdump_files(args.etdump, manifest, args.bundle)
        rec = read_run_record(args.etdump)
        check_run_record(rec, args.etdump, manifest, args.bundle, args.threads)  # a trace of another bundle, or threads
    if args.csv:
        prof = import_csv(args.csv, device_name=args.device_name)
    elif args.json:
        prof = import_json(args.json, device_name=args.device_name)
    else:
        timed = rec.get("timed") if rec is not None else None
        if timed is not None and args.skip_first is not None:
            ap.error(f"--skip-first is for traces without a run record; {Path(args.etdump[0]).parent / ETDUMP_RUNS} says "
                     "which runs were timed")
        if args.skip_first is not None and args.skip_first < 0:
            ap.error(f"--skip-first must be >= 0, got {args.skip_first}")
        skip = 1 if args.skip_first is None else args.skip_first
        prof = import_etdump(args.etdump, args.etrecord, device_name=args.device_name, timed=timed, skip_first=skip)
        if manifest is None and rec is not None and rec.get("bundle"):  # without --bundle: the record names the bundle that ran
            prof.bundle = {**prof.bundle, **{k: rec["bundle"][k] for k in ("model", "target", "precision") if k in rec["bundle"]}}
        if rec is not None and rec.get("threads") and args.threads is None:
            args.threads = rec["threads"]  # the count the trace was taken at (0 or None: the backend's default, unrecorded)
        if rec is None or not rec.get("bundle"):  # an ETDump names no program: a trace of another bundle passes unseen
            print(f"note: no {ETDUMP_RUNS} naming the bundle that ran beside the ETDump files: nothing checks that they traced "
                  f"{args.bundle or 'the bundle calibrate will price'}", file=sys.stderr)
        if timed is None:  # every traced run but the first N: warm-up runs too, unless N covers them
            print(f"note: no record of the timed runs ({ETDUMP_RUNS}) beside the ETDump files: kept every run after each exit's "
                  f"first {skip} ({prof.runs_said()} per exit); if the trace holds warm-up runs, pass --skip-first with their number + 1",
                  file=sys.stderr)
    if manifest is not None:
        if len(prof.stages) != manifest.num_exits:
            src = f"{args.csv or args.json} has" if (args.csv or args.json) else f"the {len(args.etdump)} ETDump file(s) have"
            want = (f" (a CSV needs columns stage1_ms..stage{manifest.num_exits}_ms, or exit,ms rows for exits 1..{manifest.num_exits})"
                    if args.csv else "")
            raise ProfileError(f"{src} latencies of {len(prof.stages)} stage(s), but bundle {args.bundle} has {manifest.num_exits} "
                               f"exits: a stage is missing{want}, or they were measured on another model")
        if other := prof.other_bundle(manifest):  # the file names the bundle it timed: never relabelled as this one
            raise ProfileError(f"{args.json} says it timed another bundle ({', '.join(f'{k} {v!r}' for k, v in other.items())}), "
                               f"not {args.bundle} ({manifest.model} {manifest.target}/{manifest.precision}): pass --bundle of "
                               "the bundle the device ran, or time this one")
        prof.bundle = bundle_facts(manifest, args.bundle)
    elif not prof.bundle:
        print("note: no --bundle: the profile does not say which model it timed, so calibrate cannot refuse it for another "
              "one; pass --bundle B (the bundle the device ran)", file=sys.stderr)
    _record_threads(prof, args.threads)
    if manifest is not None and prof.batch == 1:
        _check_plausible(prof, manifest)
    _few_runs_note(prof)
    slow = [i + 1 for i, st in enumerate(prof.stages) if st["median"] > 1000.0]
    if slow:  # a stage of a second or more: microseconds under a millisecond header, most likely
        print(f"note: stage(s) {slow} take over 1000 ms (median): the values are read as milliseconds; if they are "
              "microseconds, divide them by 1000", file=sys.stderr)
    return _finish(prof, args.out)


#: more multiply-accumulates per second than any device runs one image at (50 TFLOP/s): seconds read as milliseconds
MAX_PLAUSIBLE_GMACS = 25_000.0
#: a stage call takes microseconds on any runtime, whatever the model's size (a tiny model's seconds pass the rate check)
MIN_PLAUSIBLE_MS = 0.002
#: ... and a stage over a second at under 50 MMAC/s is slower than any device this runtime targets (microseconds read as ms)
MIN_PLAUSIBLE_GMACS, SLOW_STAGE_MS = 0.05, 1000.0


def _record_threads(prof: LatencyProfile, threads: Optional[int]) -> None:
    """--threads into the profile (refused when the file says another count); a note when nothing says the count."""
    if threads is not None and prof.threads is not None and prof.threads != threads:
        raise ProfileError(f"--threads {threads}, but the file says the device ran {prof.threads} thread(s): keep the count it ran with")
    if threads is not None:
        prof.threads = threads
    elif prof.threads is None:
        print("note: the profile records no thread count: pass --threads N (the count the device ran with), so that running or "
              "calibrating at another count is warned", file=sys.stderr)


def _check_plausible(prof: LatencyProfile, manifest: Manifest) -> None:
    """A note for stages faster than any device runs them (seconds read as milliseconds, most likely): more MACs per
    second than ``MAX_PLAUSIBLE_GMACS``, or, for a model too small for that to show, a median under ``MIN_PLAUSIBLE_MS``."""
    said = []
    for k, (e, st) in enumerate(zip(manifest.exits, prof.stages), start=1):
        rate = e.stage_gflops / st["median"] if st["median"] > 0 else 0.0  # TMAC/s
        if rate * 1e3 > MAX_PLAUSIBLE_GMACS:
            said.append(f"stage {k}: {rate:.0f} TMAC/s (its GMACs over its median time) is faster than any device runs one image")
        elif 0 < st["median"] < MIN_PLAUSIBLE_MS:
            said.append(f"stage {k}: a median of {st['median']:.3g} ms is less than any runtime takes to call a model")
        elif st["median"] > SLOW_STAGE_MS and rate * 1e3 < MIN_PLAUSIBLE_GMACS:
            said.append(f"stage {k}: a median of {st['median']:.4g} ms ({rate * 1e6:.3g} MMAC/s) is slower than any device runs one image")
    if said:
        print(f"note: {'; '.join(said)}: the values are read as milliseconds; if they are seconds, multiply them by 1000, if "
              "microseconds, divide them by 1000", file=sys.stderr)


FEW_RUNS = 20  # an imported profile with fewer timed runs per stage is said to be rough


def _few_runs_note(prof: LatencyProfile) -> None:
    """Said for a measured profile as for an imported one (``profile --runs 4`` printed p90s and p99s of four runs unsaid)."""
    if (n := min(int(st["n"]) for st in prof.stages)) < FEW_RUNS:  # a p90 of a handful is near their slowest, a p99 a guess
        none = f" and, under {4 * DRIFT_MIN_QUARTER}, nothing is judged for throttling" if n < 4 * DRIFT_MIN_QUARTER else ""
        print(f"note: {n} timed run(s) for a stage: its percentiles (p90, p99) are rough below {FEW_RUNS}{none}; time 100 or "
              "more per stage for a calibration to trust", file=sys.stderr)


def _finish(prof: LatencyProfile, out: Optional[str]) -> int:
    try:  # the file first: a reader gone from stdout (| head) must not lose the measurements
        path = prof.save(out) if out else None
    except OSError as e:  # the error first (where the measurements were kept), then the table: a gone reader hides neither
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        print(prof.format_table())
        return 2
    print(prof.format_table())
    if path:
        print(f"wrote {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; bad input prints a message and returns 2 (argparse errors exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_import = bool(argv) and argv[0] == "import"
    ap = _import_parser() if is_import else _measure_parser()
    args = ap.parse_args(argv[1:] if is_import else argv)
    try:
        return _import(args, ap) if is_import else _measure(args, ap)
    except BrokenPipeError:  # stdout's reader went away after the file was written: run_cli's to end quietly (141)
        raise
    except (ValueError, OSError, BackendUnavailable) as e:  # ManifestError, InputError, ProfileError are ValueErrors
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
