"""Benchmark: dynamic vs static on every target, latency-calibrated vs FLOPs-calibrated.

    python -m dvt_edge.bench --checkpoint CKPT --data fashion-mnist [--targets all|LIST]
        [--precisions fp32,int8] [--budgets 0.3,0.4] [--out DIR]
    python -m dvt_edge.bench report RESULTS.json... [--out DIR]     # merge devices
    python -m dvt_edge.bench --latency-only --model dvt_t2t_vit_12   # no data: per-exit latency table

For each target x precision that runs on this host (a failing one becomes a row with its
error): artifact sizes and export parity, per-exit accuracy of the artifact itself,
per-exit latency from the runtime's profiler, each exit alone as a static model, and the
dynamic cascade at several latency budgets, with thresholds searched (a) on measured
latency and (b) on FLOPs (the paper's way), each run for real on a holdout split and
measured. Writes ``bench.json`` (versioned), ``bench.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dvt_edge.bench_match import _matched_point, _meas, matched_over_halvings, never_stop
from dvt_edge.bench_merge import report_main, saved_then_shown
from dvt_edge.bench_report import SCHEMA, check_results_folder, kept_over_failures, load_results, markdown, write_outputs, wrote_line  # noqa: F401  (load_results: re-exported)
from dvt_edge.bench_throughput import throughput
from dvt_edge.data import DATASETS, DataError, data_for_checkpoint, scoring_set
from dvt_edge.logs import quiet_toolchains
from dvt_edge.provenance import result_provenance
from dvt_edge.references import DEFAULT_REFERENCE
from dvt_runtime.checks import parse_thresholds
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import join_args, silenced_progress
from dvt_runtime.device import contention_since, contention_snapshot
from dvt_runtime.io import os_error_text
from dvt_runtime.stats import sample_stats

REFERENCE = DEFAULT_REFERENCE.checkpoint


# ----------------------------------------------------------------------------- one target


def _run_cascade(bundle, x, y, thresholds) -> dict:
    from dvt_runtime.calibrate import measure_cascade

    return measure_cascade(bundle, x, y, thresholds, warmup=10)


def bench_bundle(bundle, x: np.ndarray, y: np.ndarray, budgets: Optional[list[float]], threads: int = 1,
                 runs: int = 200, holdout: float = 0.5, seed: int = 0, progress: bool = True, device_name: Optional[str] = None,
                 batches: Sequence[int] = ()) -> dict:
    """Everything measured on one bundle (this host); ``bundle``: a bundle folder or an open ``Bundle``."""
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.calibrate import fit

    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, threads=threads, device_name="")
    snap = contention_snapshot()  # how much the measurements below had to compete for a CPU
    f = fit(b, x, y, holdout=holdout, seed=seed, runs=runs, warmup=20, progress=progress)
    if device_name:
        f.profile.device["device_name"] = device_name
    xh, yh = x[f.hold_idx], y[f.hold_idx]
    static = _static_rows(b, f, xh, yh)
    lo, hi = float(f.costs.cumulative[0]), float(f.costs.cumulative[-1])
    if not budgets:
        budgets = [float(v) for v in np.geomspace(lo, hi, 7)[1:-1]]  # denser where early exits decide
    dynamic, flops_rows = _budget_rows(b, f, xh, yh, budgets)
    matched = _matched_point(b, f, xh, yh, static[-1])
    if matched:
        matched["halvings"] = matched_over_halvings(f.outputs, f.costs, len(f.hold_idx))
    out = {"profile": f.profile.summary(), "device": f.profile.device, "runtime_overhead": runtime_overhead(b, x), "static": static,
           "dynamic": dynamic, "flops_calibrated": flops_rows, "matched": matched, "n_holdout": len(f.hold_idx),
           "n_calibration": len(f.cal_idx), "split_seed": seed,  # numpy default_rng(seed) halves the images (halvings: their seeds)
           "contention": contention_since(snap)}
    if batches:  # at the matched-accuracy thresholds (their accuracy delta is reported with them)
        thr = matched["thresholds"] if matched else never_stop(b.num_exits)
        out["throughput"] = {"thresholds": thr, "max_batch": b.manifest.max_batch, "rows": throughput(b, xh, yh, thr, batches),
                             "within_match": matched["within_match"] and not matched.get("at_chance") if matched else None}
    return out


def _static_rows(b, f, xh: np.ndarray, yh: np.ndarray) -> list[dict]:
    """Each exit alone as a static model: stages 1..e always run (it needs its predecessors' reuse tensors)."""
    cum, m = f.profile.cumulative, b.manifest
    rows = []
    for e in range(b.num_exits):
        thr = [0.0 if k == e else None for k in range(b.num_exits - 1)]  # None: never stop there
        meas = _run_cascade(b, xh, yh, thr)
        rows.append({"exit": e + 1, "grid": m.exits[e].grid, "gflops": m.exits[e].gflops,
                     "accuracy_all": float(f.outputs.correct[e].mean() * 100), "accuracy": meas["accuracy"],
                     "profile_p50_ms": cum[e]["median"], "profile_p90_ms": cum[e]["p90"],
                     "measured_mean_ms": meas["mean_ms"], "measured_p90_ms": meas["p90_ms"]})
    return rows


def _budget_rows(b, f, xh: np.ndarray, yh: np.ndarray, budgets: list[float]) -> tuple[list[dict], list[dict]]:
    """Per budget, thresholds searched (a) on measured latency and (b) on FLOPs (the paper's way,
    latency taken as proportional to FLOPs), each run for real on the holdout and measured."""
    from dvt_runtime.search import StageCosts, evaluate_thresholds, search_thresholds

    lat = f.costs  # what a predict() call costs per stage
    lo, hi = float(lat.cumulative[0]), float(lat.cumulative[-1])
    flops = StageCosts.from_cumulative([e.gflops for e in b.manifest.exits], unit="GFLOPs")
    ms_per_gflop = hi / float(flops.cumulative[-1])
    dynamic, flops_rows = [], []
    for budget in budgets:
        row = {"budget_ms": budget}
        if budget < lo:
            row["error"] = f"below exit 1 latency {lo:.4g} ms"
            dynamic.append(row)
            flops_rows.append(dict(row))
            continue
        res = search_thresholds(f.cal, lat, budget, algorithm="exact")
        pred = evaluate_thresholds(f.hold, None, res.best.thresholds, lat)
        meas = _run_cascade(b, xh, yh, res.best.to_dict()["thresholds"])
        dynamic.append({**row, "thresholds": res.best.to_dict()["thresholds"], "predicted_ms": pred.mean_cost,
                        "predicted_accuracy": pred.accuracy, **_meas(meas, budget)})
        fb = budget / ms_per_gflop
        used = max(fb, float(flops.cumulative[0]))  # below exit 1's FLOPs: exit 1 alone (recorded, not hidden)
        fres = search_thresholds(f.cal, flops, used, algorithm="exact")
        fmeas = _run_cascade(b, xh, yh, fres.best.to_dict()["thresholds"])
        flops_rows.append({**row, "flops_budget_gflops": fb, "flops_budget_used_gflops": used, "thresholds": fres.best.to_dict()["thresholds"],
                           **_meas(fmeas, budget), **({"note": "FLOPs budget below exit 1's: raised to it"} if used > fb else {})})
    return dynamic, flops_rows


def runtime_overhead(bundle, x: np.ndarray, n: int = 300) -> dict:
    """What ``predict`` costs beyond the backend's own execute time, for samples stopping at exit 1.

    Interleaves ``predict`` (all samples stop at exit 1) with the bare backend session call on
    the same input, and compares medians.
    """
    thr = [0.0] * (bundle.num_exits - 1)
    sess = bundle.sessions[0]
    pred_ms, backend_ms = [], []
    for i in range(n + 20):
        xi = x[i % len(x)][None]
        t0 = time.perf_counter()
        bundle.predict(xi[0], thresholds=thr)
        t1 = time.perf_counter()
        sess.run({"image": xi})
        t2 = time.perf_counter()
        if i >= 20:
            pred_ms.append((t1 - t0) * 1e3)
            backend_ms.append((t2 - t1) * 1e3)
    p, bk = sample_stats(pred_ms, keep_samples=False)["median"], sample_stats(backend_ms, keep_samples=False)["median"]
    return {"predict_exit1_ms": p, "backend_exit1_ms": bk, "overhead_ms": p - bk, "overhead_pct": 100 * (p - bk) / p,
            "within_goal": (p - bk) <= max(0.05 * p, 0.1), "goal": "<= 5% of the total or 0.1 ms, whichever is larger"}


# ----------------------------------------------------------------------------- driver


def random_checkpoint(model_name: str, out: Path) -> str:
    """A checkpoint of ``model_name`` with random weights (seed 0), for latency/throughput only."""
    import torch

    from dvt_edge.checkpoint import save_checkpoint
    from dvt_edge.data import default_preprocess
    from dvt_edge.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name)
    pre = default_preprocess(model.cfg.in_chans, model.cfg.img_size)
    path = out / f"{model_name}-random-weights.pt"
    save_checkpoint(path, model, preprocess=pre, note="random weights (seed 0): latency and throughput only")
    return str(path)


def _each_target(checkpoint: str, model_name: str, targets: list[str], precisions: list[str], out: Path, measure,
                 reuse: bool = False, progress: bool = True, verbose: bool = False, **export_opts) -> list[dict]:
    """Export (or reuse) a bundle per target x precision and ``measure(row, bundle_dir, target)`` it;
    a target that fails becomes a row with its error, never a crash (the format table drives the loop).
    ``export_opts``: more :class:`dvt_edge.export.ExportOptions` fields (e.g. ``calib_data``)."""
    from dvt_edge.export import export_bundle
    from dvt_edge.export.targets import TARGETS, get_target
    from dvt_runtime.io import sha256_file

    names = sorted(TARGETS) if targets == ["all"] else [get_target(t).name for t in targets]
    ckpt_sha = sha256_file(checkpoint) if reuse else None  # once, not per target x precision
    rows = []
    for name in names:
        t = TARGETS[name]
        for prec in precisions:
            if prec not in t.precisions:
                continue
            row = {"target": name, "precision": prec, "backend": t.backend}
            t0 = time.time()
            try:
                bdir = out / "bundles" / f"{model_name}-{name}-{prec}"
                man = _reusable(bdir, checkpoint, ckpt_sha, name, prec, progress) if reuse else None
                if man is None:
                    man = export_bundle(checkpoint, name, prec, out=str(bdir), force=True, progress=progress, verbose=verbose,
                                        log_path=str(out / "bench-toolchains.log"), caller="bench", **export_opts).manifest
                row.update(artifact_kb=[round(e.size_bytes / 1024, 1) for e in man.exits],
                           parity=man.parity.to_dict() if man.parity else None, quantization=[e.quantization.get("scheme") for e in man.exits],
                           undelegated_ops=[e.undelegated_ops for e in man.exits])
                measure(row, bdir, t)
            except Exception as e:  # a failing target is a row, not a crash
                row.update(status="error", error=f"{type(e).__name__}: {str(e).strip()[:4000]}", traceback=traceback.format_exc(limit=3))
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            if progress:
                print(f"[bench] {name} {prec}: {row['status']} ({row['seconds']} s)", file=sys.stderr)
    return rows


def _reusable(bdir: Path, checkpoint: str, checkpoint_sha: str, target: str, precision: str, progress: bool):
    """The bundle in ``bdir`` when it was exported from this very checkpoint (``checkpoint_sha``) to this target and
    precision; else None (it is re-exported: a bundle of other weights must never be measured as this one)."""
    from dvt_runtime.manifest import Manifest

    if not (bdir / "manifest.json").is_file():
        return None
    man = Manifest.load(bdir)
    if (man.source or {}).get("sha256") == checkpoint_sha and (man.target, man.precision) == (target, precision):
        return man
    if progress:
        print(f"[bench] {bdir} was exported from {(man.source or {}).get('checkpoint')} ({man.target}/{man.precision}), "
              f"not {checkpoint}: exporting it again", file=sys.stderr)
    return None


THROUGHPUT_N = 256  # images per timed pass of fixed-threshold throughput, unless --n says otherwise


def run_throughput(checkpoint: str, targets: list[str], precisions: list[str], thresholds: list, batches: Sequence[int], out: Path,
                   n: int = THROUGHPUT_N, threads: int = 1, progress: bool = True, device_name: Optional[str] = None, verbose: bool = False,
                   data: Optional[str] = None, reuse: bool = False, trusted: bool = False) -> dict:
    """Static vs dynamic images/s at fixed ``thresholds``: on ``n`` images of ``data`` (with accuracy),
    or on ``n`` random images when ``data`` is None (latency only, e.g. random weights)."""
    from dvt_edge.checkpoint import load_checkpoint
    from dvt_runtime.backends import available_backends
    from dvt_runtime.bundle import Bundle, check_thresholds
    from dvt_runtime.profile import device_facts

    model, info = load_checkpoint(checkpoint, trusted=trusted)
    check_thresholds(thresholds, model.num_exits, "--thresholds")
    if data:
        x, y = _scoring(data_for_checkpoint(data, model.name, info.extras)[0], info, model, n).arrays(progress=progress)  # moved holdout said
    else:
        x, y = np.random.default_rng(0).standard_normal((n, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)).astype(np.float32), None

    def measure(row: dict, bdir: Path, t) -> None:
        if t.backend not in available_backends():
            raise RuntimeError(f"{t.backend} does not run on this host")
        with quiet_toolchains(out / "bench-toolchains.log", verbose):
            b = Bundle.open(bdir, threads=threads, device_name="")
            row["throughput"] = {"thresholds": list(thresholds), "max_batch": b.manifest.max_batch,
                                 "rows": throughput(b, x, y, list(thresholds), batches)}
        row["status"] = "ok"

    rows = _each_target(checkpoint, model.name, targets, precisions, out, measure, reuse, progress, verbose, trusted=trusted)
    dev = device_facts(threads=threads)
    if device_name:
        dev["device_name"] = device_name
    return {"schema": SCHEMA, "schema_version": 1, "mode": "throughput",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "dvt_edge.bench.run_throughput() from Python", "checkpoint": checkpoint, "model": model.name, "data": data or f"{n} random images",
            "n_images": len(x), "threads": threads, "device": dev, "rows": rows, "has_accuracy": y is not None, **result_provenance(checkpoint)}


def run_bench(checkpoint: str, data: Optional[str], targets: list[str], precisions: list[str], budgets: Optional[list[float]],
              out: Path, n: int = 2000, threads: int = 1, runs: int = 200, progress: bool = True,
              device_name: Optional[str] = None, reuse: bool = False, verbose: bool = False, batches: Sequence[int] = (),
              trusted: bool = False) -> dict:
    from dvt_edge.checkpoint import load_checkpoint
    from dvt_runtime.backends import available_backends

    model, info = load_checkpoint(checkpoint, trusted=trusted)
    data, data_note = data_for_checkpoint(data, model.name, info.extras, model.cfg)
    x, y = _scoring(data, info, model, n, data_note).arrays(progress=progress)
    runnable = available_backends()

    def measure(row: dict, bdir: Path, t) -> None:
        if t.backend not in runnable:
            row["status"] = f"exported; {t.backend} does not run on this host (structure checked)"
            return
        if progress:
            print(f"[bench] {t.name} {row['precision']}: profiling and measuring the cascade ...", file=sys.stderr, flush=True)
        with quiet_toolchains(out / "bench-toolchains.log", verbose):  # runtimes' own chatter goes to the log
            row.update(bench_bundle(bdir, x, y, budgets, threads, runs, progress=False, device_name=device_name, batches=batches))
        row["status"] = "ok"

    rows = _each_target(checkpoint, model.name, targets, precisions, out, measure, reuse, progress, verbose, trusted=trusted)
    from dvt_runtime.profile import device_facts

    dev = device_facts(threads=threads)
    if device_name:
        dev["device_name"] = device_name
    return {"schema": SCHEMA, "schema_version": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "dvt_edge.bench.run_bench() from Python", "checkpoint": checkpoint, "model": model.name, "data": data, "data_note": data_note, "n_images": len(x),
            "threads": threads, "device": dev, "rows": rows, **result_provenance(checkpoint)}



def _scoring(data: str, info, model, n: int, stand_in: str = ""):
    return scoring_set(data, "val", info.preprocess, model.cfg.num_classes, info.classes, "benchmark", limit=n, checkpoint=info.path,
                       stand_in=stand_in)


def _checkpoint_data(checkpoint: str, trusted: bool) -> str:
    from dvt_edge.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint, trusted=trusted)
    return data_for_checkpoint(None, model.name, info.extras, model.cfg)[0]


def _budgets(text: Optional[str]) -> Optional[list[float]]:
    """``--budgets``: comma-separated finite positive milliseconds, or None."""
    try:
        budgets = [float(v) for v in text.split(",")] if text else None
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated milliseconds such as 0.3,0.5, got {text!r}") from None
    if budgets and not all(math.isfinite(v) and v > 0 for v in budgets):  # NaN fails every comparison: ask for finite
        raise ValueError(f"--budgets must be finite positive milliseconds, got {text!r}")
    return budgets


def _ints(text: str, name: str) -> list[int]:
    try:
        v = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated whole numbers, e.g. 1,8,32,128; got {text!r}") from None
    if any(b < 1 for b in v):
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def check_targets(targets: str, precisions: str, any_target: bool = False) -> None:
    """``--targets`` (all or names) and ``--precisions`` (comma-separated) before any work: a ValueError naming the
    valid choices. Every precision must be supported by a selected target (``any_target``: by any target at all,
    for a default list like the demo's that names fp16 for Core ML only)."""
    from dvt_edge.export.targets import TARGETS, get_target

    names = sorted(TARGETS) if targets == "all" else [get_target(t).name for t in targets.split(",")]
    supported = sorted({p for t in (sorted(TARGETS) if any_target else names) for p in TARGETS[t].precisions})
    unknown = [p for p in precisions.split(",") if p not in supported]
    if unknown:
        raise ValueError(f"--precisions {unknown} not supported by {', '.join(names)}; valid: {supported}")


def _check_run_args(a: argparse.Namespace) -> None:
    """Arguments checked before anything is exported or timed (a mistake found after the work loses it)."""
    if (a.model or a.thresholds) and not a.latency_only and (a.budgets or a.runs):  # they had been ignored unsaid
        raise ValueError("fixed-threshold throughput (--model / --thresholds) times whole passes at the given thresholds, calibrating "
                         "no budget: drop --budgets and --runs")
    if a.rounds is not None and not a.latency_only:  # ignored unsaid: throughput's rounds are fixed, the full benchmark has none
        raise ValueError("--rounds sets --latency-only's interleaved timing rounds: drop it (or add --latency-only)")
    if a.n is not None and a.latency_only:  # ignored unsaid: the latency mode times random images, as many as --runs
        raise ValueError("--latency-only times random images (--runs per stage), no evaluation set: drop --n")
    from dvt_runtime.stats import MIN_RUNS

    if a.threads < 1:
        raise ValueError(f"--threads must be >= 1 (threads per session, stated in the report: 0, the backend's default, would state "
                         f"none), got {a.threads}")
    if a.runs is not None and a.runs < MIN_RUNS:
        raise ValueError(f"--runs must be at least {MIN_RUNS} (the fewest a profile summarises; the throttling check needs 12 and percentiles 20), got {a.runs}")
    if a.n is None:  # 2,000 random 224 px images at 4 batch sizes x 3 rounds had run over an hour, unsaid
        a.n = THROUGHPUT_N if (a.model or a.thresholds) and not a.latency_only else 2000
    if a.n < 4:
        raise ValueError(f"--n must be at least 4 images (half choose thresholds, half measure), got {a.n}")
    check_targets(a.targets, a.precisions)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the bench's results")
    if a.model and a.checkpoint:  # the checkpoint was ignored: random weights were timed, unsaid
        raise ValueError(f"--model {a.model} times random weights of that architecture and --checkpoint {a.checkpoint} a trained "
                         "file: pass one (a checkpoint's architecture is read from it)")
    a.checkpoint = a.checkpoint or str(REFERENCE)


def exit_status(r: dict, targets: str) -> int:
    """1 when a target x precision row asked for failed (said on stderr), else 0. Under the default ``--targets all`` a
    toolchain not installed here is a row that says so, not a failure, unless nothing at all was measured."""
    asked = [row for row in r["rows"] if row.get("target") != "eager"]  # eager PyTorch: the latency mode's own reference row
    missing_ok = targets == "all"  # the default: a toolchain not installed here is a row that says so, not a failed run
    failed = [row for row in asked if row.get("status") == "error"
              and not (missing_ok and str(row.get("error", "")).startswith("TargetUnavailable"))]  # a pipeline reads the exit status
    if asked and all(row.get("status") == "error" for row in asked):  # nothing measured, installed or not: no success
        failed = asked
    if failed:
        every = "every target x precision asked for" if len(failed) == len(asked) else f"{len(failed)} of {len(asked)} rows"
        print(f"error: {every} failed ({', '.join(row['target'] + ' ' + row['precision'] for row in failed)}): "
              "see 'Failed rows' above" + ("" if len(failed) == len(asked) else "; the others are in the report"), file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    ap = Parser(prog=command_name("python -m dvt_edge.bench"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--checkpoint", default=None, help="checkpoint (default: the natural-image reference dvt_small_cifar)")
    ap.add_argument("--data", default=None, help=f"dataset spec: {', '.join(DATASETS)} (default: the checkpoint's evaluation set; "
                                                 "with --latency-only: int8 calibration images, default random images for --model)")
    ap.add_argument("--targets", "--target", default="all", help="all or a comma-separated list (--target: the same, as export spells it)")
    ap.add_argument("--precisions", "--precision", default="fp32,int8", help="comma-separated (default fp32,int8; --precision: the same)")
    ap.add_argument("--budgets", default=None, help="comma-separated latency budgets in ms (default: 5, geometrically spaced between exit 1 and exit 3)")
    ap.add_argument("--n", type=int, default=None, help="evaluation images (half calibrate thresholds, half measure; default 2000), or "
                                                        "images per pass of fixed-threshold throughput (default 256)")
    ap.add_argument("--threads", type=int, default=1, help="threads per session, stated in the report (default 1; at least 1)")
    ap.add_argument("--runs", type=int, default=None, help="profiler runs per stage (default 200; 60 with --latency-only)")
    ap.add_argument("--device-name", default=None, help="label of this device in reports")
    ap.add_argument("--reuse-bundles", action="store_true", help="reuse bundles already in OUT/bundles")
    ap.add_argument("--verbose", action="store_true", help="show the toolchains' own output (default: OUT/bench-toolchains.log)")
    ap.add_argument("--batches", default=None,
                    help="throughput mode: comma-separated batch sizes, e.g. 1,8,32,128 (images/s of the static model and the "
                         "dynamic cascade per batch size)")
    ap.add_argument("--latency-only", action="store_true",
                    help="no data: per-exit p50/p90 of every target x precision and of eager PyTorch on random images, MAC "
                         "rates against this machine's GEMM peak (with --model NAME for random weights, or --checkpoint)")
    ap.add_argument("--rounds", type=int, default=None, help="with --latency-only: interleaved timing rounds (default 4)")
    ap.add_argument("--model", default=None, help="with --batches or --latency-only: a registered model with random weights "
                                                  "(random images, no accuracy)")
    ap.add_argument("--thresholds", default=None,
                    help="with --batches: fixed per-exit thresholds, e.g. 0.9,0.8 ('-' or 'none': never stop there), instead of the full "
                         "benchmark's matched-accuracy ones")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling of --checkpoint (only for files you trust)")
    ap.add_argument("--force", action="store_true", help="replace a result of another mode in --out (a full benchmark by a quick run)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (as TQDM_DISABLE=1)")
    ap.add_argument("--out", default=None, help="folder for bench.json, bench.md, plots and bundles (default runs/bench; --latency-only "
                                                "runs/bench-latency, fixed --thresholds runs/bench-throughput: a quick run never replaces a full one)")
    a = ap.parse_args(argv)
    a.out = a.out or ("runs/bench-latency" if a.latency_only else "runs/bench-throughput" if a.model or a.thresholds else "runs/bench")
    try:
        budgets = _budgets(a.budgets)
        _check_run_args(a)
        out = Path(a.out)
        check_results_folder(out, "bench", "latency" if a.latency_only else "throughput" if a.model or a.thresholds else None, a.force)
        batches = _ints(a.batches, "--batches") if a.batches else []
        with silenced_progress(a.no_progress):
            if a.latency_only:
                from dvt_edge.bench_latency import run_latency

                if a.batches or a.thresholds or a.budgets:
                    raise ValueError("--latency-only measures latency alone: drop --batches, --thresholds and --budgets")
                ckpt = None if a.model else a.checkpoint
                r = run_latency(ckpt, a.model, a.targets.split(","), a.precisions.split(","), out, a.threads, a.runs or 60,
                                _ints(str(4 if a.rounds is None else a.rounds), "--rounds")[0], device_name=a.device_name, verbose=a.verbose,
                                reuse=a.reuse_bundles, calib_data=a.data, trusted=a.trust_checkpoint)
            elif a.model or a.thresholds:
                if not batches or not a.thresholds:
                    raise ValueError("fixed-threshold throughput (--model / --thresholds) needs both --batches and --thresholds")
                out.mkdir(parents=True, exist_ok=True)
                thr = parse_thresholds(a.thresholds)
                ckpt = random_checkpoint(a.model, out) if a.model else a.checkpoint
                data = None if a.model else (a.data or _checkpoint_data(ckpt, a.trust_checkpoint))
                r = run_throughput(ckpt, a.targets.split(","), a.precisions.split(","), thr, batches, out, n=a.n, threads=a.threads,
                                   device_name=a.device_name, verbose=a.verbose, data=data, reuse=a.reuse_bundles, trusted=a.trust_checkpoint)
            else:
                r = run_bench(a.checkpoint, a.data, a.targets.split(","), a.precisions.split(","), budgets, out, a.n, a.threads,
                              a.runs or 200, device_name=a.device_name, reuse=a.reuse_bundles, verbose=a.verbose, batches=batches,
                              trusted=a.trust_checkpoint)
    except (DataError, ValueError, OSError, MemoryError) as e:
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    r["command"] = join_args(["python", "-m", "dvt_edge.bench", *argv])  # rerunnable (sys.argv[0] is bench.py's path)
    kept = kept_over_failures(out, r)  # a run whose every row failed replaced a working one
    lost = "the results below were not saved ({}); " + f"{out}'s earlier results are as they were"
    if (written := saved_then_shown(markdown([r]), lambda: [] if kept else write_outputs([r], out), lost)) is None:
        return 2
    print(kept or wrote_line(written, out, "bench"))
    return exit_status(r, a.targets)


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
