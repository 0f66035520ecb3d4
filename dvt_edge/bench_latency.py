"""A latency table for any model, with no data: ``python -m dvt_edge.bench --latency-only``.

    python -m dvt_edge.bench --latency-only --model dvt_t2t_vit_12 --targets onnx,executorch
    python -m dvt_edge.bench --latency-only --checkpoint CKPT [--threads 1] [--runs 60]

Every target x precision that runs here is exported (with its own verification), then every
bundle and the eager PyTorch model are timed on random images in interleaved rounds, so that
a drifting shared machine slows them alike. Per exit: p50/p90 of the stage and of the way to
the exit (cumulative), multiply-accumulates per second of each stage, and that rate as a
percentage of this machine's GEMM peak for the row's precision, measured in the same run
(a short matmul roofline). The comparisons the product promises (ExecuTorch fp32 against
ONNX Runtime fp32 and eager, int8 against fp32 per target) are computed on the same figures.
"""

from __future__ import annotations

import datetime
import io
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dvt_edge.bench_report import SCHEMA, _device_label
from dvt_edge.logs import pyplot, quiet_toolchains
from dvt_runtime.device import available_memory_mb
from dvt_runtime.io import save_png
from dvt_runtime.stats import sample_stats

__all__ = ["ROOF_SHAPES", "MEMORY_FACTOR", "LatencyMemoryError", "gemm_roofline", "memory_need_mb", "run_latency",
           "latency_markdown", "plot_latency"]

ROOF_SHAPES = ((1024, 1024, 1024), (256, 1024, 1024), (197, 384, 1536))  # (M, K, N): square, and ViT-like
# Bytes of memory per byte of fp32 weights while exporting and timing every target: the eager
# model, the checkpoint, the exporters' graph copies, the int8 calibration model and one open
# session per bundle.
MEMORY_FACTOR = 12
MEMORY_BASE_MB = 600.0  # interpreter, torch, the runtimes' libraries
VERIFY_N = 100  # verification images per export (random ones for random weights)
GOALS = {"executorch fp32 / onnx fp32": ("<=", 1.15), "executorch fp32 / eager fp32": ("<=", 1.0),
         "onnx fp32 / onnx int8": (">=", 1.5), "executorch fp32 / executorch int8": (">=", 1.5)}


class LatencyMemoryError(MemoryError):
    """The model would not fit in this machine's available memory (checked before allocating)."""


# ----------------------------------------------------------------------------- roofline


def _best_of(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up (packing, allocation)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_gemm(m: int, k: int, n: int, int8: bool, reps: int) -> float:
    import torch

    if int8:
        a, b = torch.randint(-128, 127, (m, k), dtype=torch.int8), torch.randint(-128, 127, (k, n), dtype=torch.int8)
        return m * k * n / _best_of(lambda: torch._int_mm(a, b), reps) / 1e9
    a, b = torch.randn(m, k), torch.randn(k, n)
    return m * k * n / _best_of(lambda: torch.mm(a, b), reps) / 1e9


def _ort_gemm(m: int, k: int, n: int, int8: bool, reps: int, threads: int) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    ta, tb, ty = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT,) * 3
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["A", "B"], ["Y"])
    g = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", ta, [m, k]), helper.make_tensor_value_info("B", tb, [k, n])],
                          [helper.make_tensor_value_info("Y", ty, [m, n])])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = ({"A": rng.integers(0, 256, (m, k), dtype=np.uint8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)} if int8 else
             {"A": rng.standard_normal((m, k), dtype=np.float32), "B": rng.standard_normal((k, n), dtype=np.float32)})
    return m * k * n / _best_of(lambda: sess.run(None, feeds), reps) / 1e9


def gemm_roofline(threads: int = 1, reps: int = 5, shapes=ROOF_SHAPES) -> dict:
    """This machine's GEMM rate (GMAC/s, best of ``reps``) in fp32 and int8, by torch and by
    ONNX Runtime's MLAS (u8 x s8, the VNNI path), on ``shapes``; the peak of a precision is the
    best engine and shape. An engine that cannot run here is listed with its error."""
    import torch

    torch.set_num_threads(threads)
    engines = {("fp32", "torch.mm"): lambda s: _torch_gemm(*s, False, reps),
               ("int8", "torch._int_mm (s8 x s8)"): lambda s: _torch_gemm(*s, True, reps),
               ("fp32", "onnxruntime MatMul"): lambda s: _ort_gemm(*s, False, reps, threads),
               ("int8", "onnxruntime MatMulInteger (u8 x s8)"): lambda s: _ort_gemm(*s, True, reps, threads)}
    rows = []
    for (prec, engine), fn in engines.items():
        for s in shapes:
            row = {"precision": prec, "engine": engine, "shape_mkn": list(s)}
            try:
                row["gmacs_per_s"] = float(fn(s))
            except Exception as e:  # an engine missing here is a row, not a crash
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
    peaks = {}
    for prec in ("fp32", "int8"):
        ok = [r for r in rows if r["precision"] == prec and "gmacs_per_s" in r and np.isfinite(r["gmacs_per_s"])]
        if ok:
            best = max(ok, key=lambda r: r["gmacs_per_s"])
            peaks[prec] = {"gmacs_per_s": best["gmacs_per_s"], "engine": best["engine"], "shape_mkn": best["shape_mkn"]}
    return {"threads": threads, "reps": reps, "rows": rows, "peak": peaks}


# ----------------------------------------------------------------------------- memory


def memory_need_mb(weight_bytes: float) -> float:
    """Estimated peak memory (MiB) to export and time every target of a model of ``weight_bytes``."""
    return MEMORY_BASE_MB + MEMORY_FACTOR * weight_bytes / 2**20


def _model_weight_bytes(model_name: str) -> float:
    """fp32 bytes of a registered model's parameters and buffers, counted on the meta device
    (nothing is allocated)."""
    import torch

    from dvt_edge.models import create_model

    with torch.device("meta"):
        m = create_model(model_name)
    return float(sum(t.numel() * 4 for t in [*m.parameters(), *m.buffers()]))


def check_memory(weight_bytes: float, what: str) -> dict:
    """Refuse, before anything is allocated, a model whose estimated need exceeds the available memory."""
    need, avail = memory_need_mb(weight_bytes), available_memory_mb()
    facts = {"weights_mb": weight_bytes / 2**20, "estimated_need_mb": need, "available_mb": avail}
    if avail is not None and need > avail:
        raise LatencyMemoryError(
            f"{what} does not fit in memory here: {weight_bytes / 2**20:.0f} MiB of fp32 weights need about {need:.0f} MiB "
            f"to export and time (x{MEMORY_FACTOR} for the exporters' copies and sessions, + {MEMORY_BASE_MB:.0f} MiB), "
            f"and {avail:.0f} MiB is available. Free memory, measure fewer targets at a time (--targets onnx), "
            "or use a smaller model (python -m dvt_edge.models lists them)")
    return facts


def _random_images_npz(model, classes: Optional[list[str]], path: Path, n: int = 64 + VERIFY_N) -> str:
    """An ``npz:`` data spec of uniform random uint8 images of ``model``'s input size, for int8
    calibration of random weights (latency only: the images carry no meaning)."""
    from dvt_runtime.io import atomic_write

    size, chans = model.cfg.img_size, model.cfg.in_chans
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size) if chans == 1 else (n, size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=np.arange(n) % model.cfg.num_classes,
             classes=np.array(classes or [str(i) for i in range(model.cfg.num_classes)]))
    atomic_write(path, buf.getvalue())
    return f"npz:{path}"


# ----------------------------------------------------------------------------- timing


class _Eager:
    """The PyTorch model run exit by exit as the bundles run (each exit's graph fed the previous one's
    features and relations): the eager row of the table."""

    def __init__(self, model, threads: int):
        import torch

        from dvt_edge.export.common import exit_graphs

        torch.set_num_threads(threads)
        self.torch, self.graphs = torch, exit_graphs(model)

    def time_chain(self, x: np.ndarray) -> list[float]:
        torch, out, carry = self.torch, [], ()
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            for g in self.graphs:
                t0 = time.perf_counter()
                res = g(xt, *carry)
                out.append((time.perf_counter() - t0) * 1e3)
                carry = () if g.last else tuple(res[1:])
        return out


def runs_per_round(runs: int, rounds: int) -> int:
    """Timed runs in each round: ``runs`` spread over ``rounds`` rounds, rounded up (never fewer runs than asked), at least 4."""
    return max(4, -(-runs // rounds))


def _time_rounds(runners: dict[str, Callable[[int], list[list[float]]]], rounds: int, runs: int, progress: bool,
                 console=None) -> dict[str, list]:
    """``runners[name](n)`` -> per-stage samples of n timed chain runs; called in ``rounds`` interleaved
    rounds of ``runs_per_round(runs, rounds)`` runs each. Returns per name: per-stage samples, in run order, or the
    error (a string) of a row that failed while timing."""
    from dvt_runtime.console import progress as bar

    per = runs_per_round(runs, rounds)
    samples: dict[str, list] = {name: None for name in runners}
    order = [name for _ in range(rounds) for name in runners]  # round 1: every row, round 2: every row, ...
    for name in bar(order, len(order), "timing", unit="row", enabled=progress, file=console):
        if isinstance(samples[name], str):
            continue  # failed in an earlier round
        try:
            got = runners[name](per)
        except Exception as e:  # a row that fails while timing becomes an error, the others go on
            samples[name] = f"{type(e).__name__} while timing: {str(e).strip()[:300]}"
            continue
        samples[name] = got if samples[name] is None else [a + b for a, b in zip(samples[name], got)]
    return samples


def _stage_rows(samples: list[list[float]], stage_macs: list[int], peak: Optional[float]) -> list[dict]:
    per_run = np.asarray(samples, dtype=np.float64)  # (stages, runs)
    cum = np.cumsum(per_run, axis=0)
    rows = []
    for e, macs in enumerate(stage_macs):
        st, ct = sample_stats(per_run[e], keep_samples=False), sample_stats(cum[e], keep_samples=False)
        rate = macs / (st["median"] / 1e3) / 1e9
        rows.append({"exit": e + 1, "stage_gmacs": macs / 1e9, "p50_ms": st["median"], "p90_ms": st["p90"], "cum_p50_ms": ct["median"],
                     "cum_p90_ms": ct["p90"], "gmacs_per_s": rate, "pct_of_peak": None if not peak else 100 * rate / peak})
    return rows


def _comparisons(rows: list[dict]) -> list[dict]:
    """The promised ratios, on the p50 latency to reach each exit (cumulative)."""
    by = {f"{r['target']} {r['precision']}": r for r in rows if r.get("status") == "ok"}
    out = []
    for what, (op, goal) in GOALS.items():
        a, b = (s.strip() for s in what.split("/"))
        if a not in by or b not in by:
            continue
        ratio = [x["cum_p50_ms"] / y["cum_p50_ms"] for x, y in zip(by[a]["stages"], by[b]["stages"])]
        ok = [bool(np.isfinite(v) and (v <= goal if op == "<=" else v >= goal)) for v in ratio]
        out.append({"what": what, "per_exit": ratio, "goal": f"{op} {goal}", "met_per_exit": ok, "met": all(ok)})
    return out


def run_latency(checkpoint: Optional[str], model_name: Optional[str], targets: list[str], precisions: list[str], out: Path,
                threads: int = 1, runs: int = 60, rounds: int = 4, warmup: int = 5, progress: bool = True,
                device_name: Optional[str] = None, verbose: bool = False, reuse: bool = False, calib_data: Optional[str] = None,
                trusted: bool = False) -> dict:
    """Per-exit latency of every runnable target x precision and of eager PyTorch, on random images,
    with MAC rates against a GEMM roofline measured in the same run. ``model_name``: random weights
    (int8 then calibrates on random images unless ``calib_data`` names a dataset). ``trusted``: the checkpoint may need
    arbitrary unpickling."""
    from dvt_edge.bench import _each_target, random_checkpoint
    from dvt_edge.checkpoint import load_checkpoint
    from dvt_edge.models import count_exit_flops
    from dvt_runtime.backends import available_backends
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.profile import device_facts, profile_bundle

    if (checkpoint is None) == (model_name is None):
        raise ValueError("--latency-only needs exactly one of --checkpoint CKPT or --model NAME")
    if model_name is not None:
        mem = check_memory(_model_weight_bytes(model_name), model_name)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = random_checkpoint(model_name, out)
    else:
        mem = check_memory(Path(checkpoint).stat().st_size, checkpoint)
    model, info = load_checkpoint(checkpoint, trusted=trusted)
    if model_name is not None and not calib_data:
        calib_data = _random_images_npz(model, info.classes, out / "random-calibration-images.npz")
    macs = [i.stage_flops for i in count_exit_flops(model.cfg)]
    roof = gemm_roofline(threads)
    x = np.random.default_rng(0).standard_normal((4, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)).astype(np.float32)
    eager = _Eager(model, threads)
    runners = {"eager fp32": lambda n: [list(s) for s in zip(*[eager.time_chain(x[i % len(x)][None]) for i in range(warmup + n)][warmup:])]}
    runnable = available_backends()

    def measure(row: dict, bdir: Path, t) -> None:
        if t.backend not in runnable:
            row["status"] = f"exported; {t.backend} does not run on this host (structure checked)"
            return
        with quiet_toolchains(out / "bench-toolchains.log", verbose):
            b = Bundle.open(bdir, threads=threads, device_name="")
        runners[f"{row['target']} {row['precision']}"] = lambda n, b=b: [list(s) for s in profile_bundle(
            b, warmup=warmup, runs=max(n, 4), images=x, threads=threads, progress=False).stage_samples()]
        row["status"] = "ok"

    # random weights: near-equal logits make int8 top-1 agreement noise (recorded, not required)
    opts = {"int8_min_agreement": None} if model_name else {}
    rows = _each_target(checkpoint, model.name, targets, precisions, out, measure, reuse, progress, verbose, calib_data=calib_data,
                        verify_n=VERIFY_N, trusted=trusted, **opts)
    rows.insert(0, {"target": "eager", "precision": "fp32", "backend": "torch", "status": "ok"})
    import torch

    torch.set_num_threads(threads)  # the exporters may have changed it
    with quiet_toolchains(out / "bench-toolchains.log", verbose) as console:  # the bar stays on the terminal
        samples = _time_rounds(runners, rounds, runs, progress, console)
    for row in rows:
        name = f"{row['target']} {row['precision']}"
        if isinstance(samples.get(name), str):
            row.update(status="error", error=samples[name])
        elif name in samples:
            peak = roof["peak"].get("int8" if row["precision"] == "int8" else "fp32", {}).get("gmacs_per_s")
            row["stages"] = _stage_rows(samples[name], macs, peak)
    dev = device_facts(threads=threads)
    if device_name:
        dev["device_name"] = device_name
    return {"schema": SCHEMA, "schema_version": 1, "mode": "latency",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": "dvt_edge.bench_latency.run_latency() from Python",
            "checkpoint": checkpoint, "model": model.name, "weights": "random (seed 0)" if model_name else "checkpoint",
            "input": f"random images {tuple(x.shape[1:])}", "threads": threads, "runs": rounds * runs_per_round(runs, rounds), "rounds": rounds,
            "warmup": warmup,
            "memory": mem, "device": dev, "roofline": roof, "rows": rows, "comparisons": _comparisons(rows)}


# ----------------------------------------------------------------------------- report


def latency_markdown(r: dict, device_label: str) -> list[str]:
    roof = r["roofline"]
    peaks = "; ".join(f"{p} {v['gmacs_per_s']:.0f} GMAC/s ({v['engine']}, {'x'.join(map(str, v['shape_mkn']))})"
                      for p, v in roof["peak"].items())
    out = [f"## {r['model']} on {device_label}: latency only, {r['weights']} weights, {r['input']}\n",
           f"{r['runs']} timed runs per row in {r['rounds']} interleaved rounds (after {r['warmup']} warm-up runs each), "
           f"{r['threads']} thread(s). GEMM peak measured in the same run: {peaks or 'not measured'}.\n"]
    ok = [row for row in r["rows"] if row.get("stages")]
    n = len(ok[0]["stages"]) if ok else 0
    out.append("| target | prec | " + " | ".join(f"exit {e + 1}: p50 / p90 ms to reach it (its stage's p50)" for e in range(n))
               + " | stage GMAC/s (% of peak) |")
    out.append("|---|---|" + "---|" * (n + 1))
    for row in r["rows"]:
        if not row.get("stages"):
            out.append(f"| {row['target']} | {row['precision']} | {(row.get('error') or row.get('status', ''))[:160]} |" + " |" * n)
            continue
        cells = [f"{s['cum_p50_ms']:.2f} / {s['cum_p90_ms']:.2f} ({s['p50_ms']:.2f})" for s in row["stages"]]
        rates = " / ".join(f"{s['gmacs_per_s']:.1f}" + (f" ({s['pct_of_peak']:.0f}%)" if s["pct_of_peak"] is not None else "")
                           for s in row["stages"])
        out.append(f"| {row['target']} | {row['precision']} | " + " | ".join(cells) + f" | {rates} |")
    if r.get("comparisons"):
        out.append("\nRatios of the p50 latency to reach each exit:\n")
        out.append("| ratio | " + " | ".join(f"exit {e + 1}" for e in range(n)) + " | goal | met |")
        out.append("|---|" + "---|" * (n + 2))
        for c in r["comparisons"]:
            cells = [f"{v:.3f}" + ("" if ok else " (miss)") for v, ok in zip(c["per_exit"], c["met_per_exit"])]
            out.append(f"| {c['what']} | " + " | ".join(cells) + f" | {c['goal']} | {'yes' if c['met'] else 'NO'} |")
    return out


def plot_latency(results: list[dict], path: Path) -> bool:
    """Grouped bars: p50 latency to reach each exit (whisker to p90), one bar per target x precision."""
    rs = [r for r in results if r.get("mode") == "latency"]
    if not rs:
        return False
    plt = pyplot()

    same = len({r.get("model") for r in rs}) == 1  # one model on several devices: one scale, or the bars mislead
    fig, axes = plt.subplots(1, len(rs), figsize=(7 * len(rs), 4.5), squeeze=False, sharey=same)
    for ax, r in zip(axes[0], rs):
        ok = [row for row in r["rows"] if row.get("stages")]
        width = 0.8 / max(1, len(ok))
        for k, row in enumerate(ok):
            xs = np.arange(len(row["stages"])) + k * width
            p50 = np.array([s["cum_p50_ms"] for s in row["stages"]])
            p90 = np.array([s["cum_p90_ms"] for s in row["stages"]])
            ax.bar(xs, p50, width, yerr=[np.zeros_like(p50), p90 - p50], capsize=2, label=f"{row['target']} {row['precision']}")
        ax.set_xticks(np.arange(len(ok[0]["stages"])) + 0.4 - width / 2 if ok else [])
        ax.set_xticklabels([f"exit {e + 1}" for e in range(len(ok[0]["stages"]))] if ok else [])
        ax.set_ylabel("ms to reach the exit (p50, whisker p90)")
        ax.set_title(f"{r['model']} on {_device_label(r)}, batch 1", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return True
