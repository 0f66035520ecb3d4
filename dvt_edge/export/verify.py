"""Export verification through the device's runtime: each artifact against PyTorch fp32.

An in-memory :class:`dvt_runtime.Bundle` over freshly loaded sessions runs the cascade (the
code the device runs, as ExecuTorch's ``aot_compiler --test_after_export`` does); the result
is a typed :class:`~dvt_runtime.manifest.ParityReport` in the manifest. NaN is a failure:
every comparison below is written so that a non-finite value fails it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from dvt_edge.data import default_preprocess
from dvt_edge.export.common import ExitArtifact, ExitGraph, ExportError, VerificationFailed
from dvt_edge.export.targets import Target
from dvt_edge.models import DVT
from dvt_runtime.bundle import Bundle, softmax
from dvt_runtime.checks import FEW_IMAGES, images_per_call, rough_thresholds
from dvt_runtime.manifest import ExitParity, ExitSpec, Manifest, ParityReport
from dvt_runtime.preprocess import Preprocess

__all__ = ["FP32_TOL", "BATCH_TOL", "VERIFY_BATCH", "VERIFY_PIXELS", "verify_batch", "agreement_measured", "INT8_MIN_AGREEMENT", "torch_cascade", "verification_bundle", "open_sessions",
           "parity", "chained", "check_finite_reference", "check_parity", "format_parity"]

FP32_TOL = 1e-3  # max abs logit difference allowed for fp32 artifacts
BATCH_TOL = 1e-4  # max abs logit difference between a batched call and one image per call
VERIFY_BATCH = 64  # images per call in the batched check of a dynamic-batch bundle, at most ...
#: ... and at most this many input pixels per call, but at least 2 (4 images at 224 px): a T2T-ViT-14 ONNX fp32 export with 80
#: real images peaked at 5.5 GiB resident with calls of 64, at 2.2 GiB with calls of 4 (/usr/bin/time -v)
VERIFY_PIXELS = 4 * 224 * 224
FIXED_BATCH = 8  # fixed example images batched (and run one per call) when there are no real images
INT8_MIN_AGREEMENT = 97.0  # % top-1 agreement with PyTorch fp32 on real images


@torch.no_grad()
def torch_cascade(graphs: list[ExitGraph], images: np.ndarray, keep_inputs: Optional[int] = None) -> list[list[dict[str, np.ndarray]]]:
    """Per image, per exit: the inputs each exit sees (for the first ``keep_inputs`` images; all when None, ``{}``
    after: a 224 px model's reuse tensors take megabytes per image) and its outputs, from PyTorch fp32."""
    out = []
    for i, x in enumerate(images):
        feats = rels = None
        per_exit = []
        keep = keep_inputs is None or i < keep_inputs
        for g in graphs:
            img = torch.from_numpy(x[None])
            inputs = {"image": img.numpy()} if keep else {}
            if g.reuse and keep:
                inputs.update(features=feats.numpy(), relations=rels.numpy())
            logits, f, r = g.stage(img, feats, rels)
            per_exit.append({"inputs": inputs, "logits": logits.numpy()})
            feats, rels = f, r
        out.append(per_exit)
    return out


def verification_bundle(model: DVT, target: Target, exits: list[ExitSpec], sessions, root: Path,
                        max_batch: Optional[int] = 1, preprocess: Optional[Preprocess] = None) -> Bundle:
    """The runtime's own :class:`Bundle` over freshly loaded sessions (exits ``0..len(sessions)-1``):
    export verifies through the code path the device runs, not a second implementation. ``preprocess``: the bundle's
    (its input checks judge the images by it; default: the model's input size and channels with common statistics)."""
    n = len(sessions)
    m = Manifest(model=model.name, target=target.name, precision="-", classes=[str(i) for i in range(model.cfg.num_classes)],
                 preprocess=preprocess or default_preprocess(model.cfg.in_chans, model.cfg.img_size),
                 exits=exits[:n], backend=target.backend, max_batch=max_batch)
    return Bundle(root, m, list(sessions), [0.0] * n)


def open_sessions(target: Target, bundle: Path, graphs, artifacts: list[ExitArtifact]):
    """Load the artifacts with the target's runtime; None when that runtime cannot run on this host."""
    from dvt_runtime.backends import BackendUnavailable, available_backends, import_backend, open_session

    try:
        import_backend(target.backend)
    except BackendUnavailable:  # not installed, or not importable here: unverified, said in the report
        return None
    sessions = []
    for e, (g, a) in enumerate(zip(graphs, artifacts)):
        try:
            s = open_session(target.backend, bundle / a.artifact, g.input_names, g.output_names, threads=1)
            s.run({n: t.numpy() for n, t in zip(g.input_names, g.example_inputs())})  # some runtimes fail only at first run
        except Exception as ex:  # the runtime rejects what the toolchain wrote (never "does not run on this host" where it runs)
            if isinstance(ex, BackendUnavailable) and target.backend not in available_backends():
                return None  # Core ML off macOS
            raise VerificationFailed(f"exit {e + 1}: {a.artifact} was written but {target.backend} cannot run it "
                              f"({a.quantization.get('scheme', '')} {str(ex).strip()[:300]})") from None
        sessions.append(s)
    return sessions


def _exit_decisions(logits: list[np.ndarray], thresholds: Optional[list]) -> Optional[np.ndarray]:
    if thresholds is None:
        return None
    from dvt_runtime.search import exit_indices, thresholds_from_list

    conf = np.stack([softmax(lg.astype(np.float64)).max(-1) for lg in logits])  # float64, as the runtime decides
    return exit_indices(conf, thresholds_from_list(thresholds, n_exits=len(logits)))


def parity(target: Target, bundle: Bundle, graphs: list[ExitGraph], data, ref_real: Optional[list[np.ndarray]],
           fixed_ref: list[np.ndarray]) -> tuple[ParityReport, Optional[list[np.ndarray]]]:
    """Compare the artifacts with PyTorch fp32: fixed inputs (per exit) and real images (chained
    through the runtime's cascade, one image per call and, where the bundle takes a batch, batched).
    Returns the report and the artifacts' logits on the real images (per exit (M, classes); None without them)."""
    rows = []
    for e, g in enumerate(graphs):
        ins = {n: t.numpy() for n, t in zip(g.input_names, g.example_inputs())}
        got = bundle.sessions[e].run(ins)["logits"]
        rows.append(ExitParity(exit=e + 1, max_abs_diff_fixed=float(np.abs(got - fixed_ref[e]).max()), finite=bool(np.isfinite(got).all())))
    report = ParityReport(runtime=target.backend, checked="numerical", exits=rows)
    if data.verify_x is None:  # no real images: the batch check still runs, on fixed example images
        x = graphs[0].example_inputs(FIXED_BATCH)[0].numpy()
        _check_batches(bundle, x, chained(bundle, x, 1), report)
        return report, None
    art = chained(bundle, data.verify_x, 1)
    for e, row in enumerate(rows):
        row.max_abs_diff_real = float(np.abs(art[e] - ref_real[e]).max())
        row.finite = row.finite and bool(np.isfinite(art[e]).all())
        row.top1_agreement = float((art[e].argmax(-1) == ref_real[e].argmax(-1)).mean() * 100)
        if data.verify_y is not None:  # None: the images' labels are not the model's classes
            row.top1_artifact = float((art[e].argmax(-1) == data.verify_y).mean() * 100)
            row.top1_pytorch = float((ref_real[e].argmax(-1) == data.verify_y).mean() * 100)
    report.n_real = len(data.verify_x)
    _check_batches(bundle, data.verify_x, art, report)
    return report, art


def decision_agreement(report: ParityReport, ref_real: list[np.ndarray], art: list[np.ndarray], thresholds) -> None:
    """Where PyTorch fp32 and the artifacts stop, and what the cascade answers, at ``thresholds`` (finite logits)."""
    d_ref, d_art = _exit_decisions(ref_real, thresholds), _exit_decisions(art, thresholds)
    if d_ref is not None:
        final_ref = np.stack(ref_real)[d_ref, np.arange(len(d_ref))].argmax(-1)
        final_art = np.stack(art)[d_art, np.arange(len(d_art))].argmax(-1)
        report.exit_decision_agreement = float((d_ref == d_art).mean() * 100)
        report.cascade_answer_agreement = float((final_ref == final_art).mean() * 100)


def _check_batches(bundle: Bundle, x: np.ndarray, one_by_one: list[np.ndarray], report: ParityReport) -> None:
    """Where the bundle takes a batch, the same images in batches must give the logits of one image per call."""
    if bundle.batch_limit() <= 1 or len(x) <= 1:
        return
    n = min(len(x), verify_batch(bundle.input_shape) if bundle.manifest.max_batch is None else bundle.manifest.max_batch)
    batched = chained(bundle, x, n)
    report.batch_checked = n
    for e, row in enumerate(report.exits):
        row.max_abs_diff_batched = float(np.abs(batched[e] - one_by_one[e]).max()) if np.isfinite(batched[e]).all() else float("nan")


def agreement_measured(p: ParityReport, quantizations: Sequence[dict]) -> bool:
    """Whether top-1 agreement was measured on real images: through the runtime, or simulated in PyTorch (Core ML W8A8)."""
    return p.n_real > 0 or any(q.get("simulated") for q in quantizations)


def verify_batch(input_shape: tuple[int, ...]) -> int:
    """Images per call of the batched check for inputs of ``input_shape`` (C, H, W): ``VERIFY_BATCH`` within ``VERIFY_PIXELS``."""
    return images_per_call(int(np.prod(input_shape[-2:])), VERIFY_PIXELS, VERIFY_BATCH, least=2)


def chained(bundle: Bundle, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Every exit's logits, the runtime chaining the stages, ``batch`` images per call; non-finite
    logits are returned (and reported per exit) instead of raised."""
    return bundle.run_exits(x, max_batch=batch, check_finite=False)


def check_finite_reference(fixed_ref: list[np.ndarray], real_ref: Optional[list[np.ndarray]], checkpoint: str) -> None:
    """PyTorch itself must give finite logits: otherwise there is nothing to export faithfully."""
    for e, lg in enumerate(fixed_ref):
        bad = not np.isfinite(lg).all() or (real_ref is not None and not np.isfinite(real_ref[e]).all())
        if bad:
            raise ExportError(f"exit {e + 1} of {checkpoint} gives NaN or infinite logits in PyTorch itself: its weights are "
                              "broken (diverged training or a corrupted file); nothing was exported")


def batch_tolerance(row, precision: str) -> tuple[float, str]:
    """How far a batched call's logits may be from one image per call, and why when not ``BATCH_TOL``. An int8
    artifact's own rounding may differ by a quantization step when an fp32 reduction's order changes with the
    batch shape (measured: ONNX Runtime's ReduceSum in T2T-ViT-12's Performer, 4e-6 apart in fp32, 1e-2 on
    static int8 logits whose error against PyTorch was 2e-2 to 4e-2): within its error on the same real images
    (the batch check runs on them), it is the artifact's noise. Without real images: ``BATCH_TOL``."""
    own = row.max_abs_diff_real
    if precision != "int8" or own is None or not math.isfinite(own) or own <= BATCH_TOL:
        return BATCH_TOL, ""
    return own, " (int8: the artifact's own error against PyTorch fp32 on these real images)"


def check_parity(report: ParityReport, precision: str, min_agreement: Optional[float] = INT8_MIN_AGREEMENT) -> list[str]:
    """Every failed check; NaN is a failure (each comparison is written so that NaN fails it).
    ``min_agreement``: int8 (and fp16) top-1 agreement required (None: not checked)."""
    problems = []
    for row in report.exits:
        if row.finite is False:
            problems.append(f"exit {row.exit}: the artifact returned NaN or infinite logits where PyTorch's are finite")
        tol, why = batch_tolerance(row, precision)
        if row.max_abs_diff_batched is not None and not row.max_abs_diff_batched <= tol:
            problems.append(f"exit {row.exit}: batched logits differ from one-by-one by {row.max_abs_diff_batched:.2e} > {tol:.2e}{why}")
        if precision == "fp32":
            for k in ("max_abs_diff_fixed", "max_abs_diff_real"):
                v = getattr(row, k)
                if v is not None and not v <= FP32_TOL:
                    problems.append(f"exit {row.exit}: fp32 {k} {v:.2e} > {FP32_TOL:g}")
        elif (precision in ("int8", "fp16") and min_agreement is not None and row.top1_agreement is not None
              and not row.top1_agreement >= min_agreement):  # fp16 (Core ML) held to at least int8's bar
            problems.append(f"exit {row.exit}: {precision} top-1 agreement {row.top1_agreement:.2f}% < {min_agreement}% on real images")
    return problems


def simulated_problems(quantizations: list[dict], min_agreement: Optional[float] = INT8_MIN_AGREEMENT) -> list[str]:
    """Failed checks of quantized graphs simulated in PyTorch (Core ML W8A8 off macOS), NaN failing."""
    problems = []
    for e, q in enumerate(quantizations):
        sim = q.get("simulated")
        if not sim:
            continue
        if sim.get("finite") is not True or not math.isfinite(sim.get("max_abs_logit_diff", float("nan"))):
            problems.append(f"exit {e + 1}: the {q.get('scheme')} graph gave NaN or infinite logits in PyTorch on real images")
        elif min_agreement is not None and not sim.get("agreement", float("nan")) >= min_agreement:
            problems.append(f"exit {e + 1}: {q.get('scheme')} top-1 agreement {sim.get('agreement'):.2f}% < {min_agreement}% "
                            "(simulated in PyTorch on real images)")
    return problems


#: how the data note says that verification ran on the calibration images (too few images to hold any apart)
IN_SAMPLE = "the calibration images themselves"


def _cell(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_parity(m: Manifest) -> str:
    """The export's table: per exit, artifact, size, scheme, logit differences and agreement."""
    p = m.parity or ParityReport(runtime="?", checked="?", exits=[])
    ran = f"{p.n_real} real images" if p.checked == "numerical" else "outputs not compared"
    lines = [f"{m.model} -> {m.target} {m.precision}  ({p.checked} check on {p.runtime}; {ran})"]
    w = max([28, *(len(e.artifact) for e in m.exits)])  # Core ML's names run longer (DvtSmallCifarInt8Exit1.mlpackage)
    lines.append(f"{'exit':>4} {'grid':>6} {'artifact':<{w}} {'size KB':>8} {'scheme':<10} {'max|dlogit| fixed':>17} {'real':>9} "
                 f"{'top-1 agree %':>13} {'top-1 art/pt %':>15}")
    for e in m.exits:
        row = next((r for r in p.exits if r.exit == e.index + 1), ExitParity(e.index + 1))
        ac = f"{row.top1_artifact:.2f}/{row.top1_pytorch:.2f}" if row.top1_artifact is not None else "-"
        lines.append(f"{e.index + 1:>4} {e.grid:>4}x{e.grid:<1} {e.artifact:<{w}} {e.size_bytes / 1024:>8.0f} "
                     f"{str(e.quantization.get('scheme', '-')):<10} {_cell(row.max_abs_diff_fixed, '.2e'):>17} "
                     f"{_cell(row.max_abs_diff_real, '.2e'):>9} {_cell(row.top1_agreement, '.2f'):>13} {ac:>15}")
        if sim := e.quantization.get("simulated"):
            lines.append(f"       simulated in PyTorch ({sim['images']} held-out images): top-1 agreement {sim['agreement']:.2f}%, "
                         f"max|dlogit| {sim['max_abs_logit_diff']:.2e}")
        if n := e.quantization.get("float32_ops"):  # a float16 program with float32 ops: said where its speed is judged
            lines.append(f"       {n} ops kept float32 (the T2T performer's attention: float16 gives 0/0 there; not on the Neural Engine)")
        if e.undelegated_ops:
            lines.append(f"       not delegated to XNNPACK: {', '.join(f'{k} x{v}' for k, v in e.undelegated_ops.items())}")
    if p.batch_checked is not None:
        d = [float("nan") if r.max_abs_diff_batched is None else r.max_abs_diff_batched for r in p.exits]
        lines.append(f"batched ({p.batch_checked} images per call) vs one per call: max|dlogit| per exit " + ", ".join(f"{v:.1e}" for v in d))
    lines.append("batch: " + ("any size per call" if m.max_batch is None else f"up to {m.max_batch} per call" if m.max_batch > 1
                              else f"1 per call ({m.batch_note})"))
    if p.exit_decision_agreement is not None:
        lines.append(f"exit decision agreement at the default thresholds: {p.exit_decision_agreement:.2f}%, "
                     f"cascade answer agreement: {p.cascade_answer_agreement:.2f}%")
    lines.append(_thresholds_line(m))
    lines += [f"scheme choice: {n}" for n in p.scheme_selection]  # int8 "auto": what each exit chose between, and why
    if p.data:  # which images calibrated and verified: said here, not only in the manifest
        lines.append(f"images: {p.data}" + ("" if p.checked == "numerical" else " (not run: --no-verify)" if p.checked.startswith("skipped")
                                            else f" (not run: {p.runtime} does not run here)"))
    if 0 < p.n_real < FEW_IMAGES:
        lines.append(f"warning: agreement measured on only {p.n_real} real images (each is {100 / p.n_real:.2g} points), so it is rough"
                     + (f"; and they are {IN_SAMPLE}" if IN_SAMPLE in p.data else "") + ": export with more labelled images")
    if IN_SAMPLE in p.data and m.precision == "int8" and p.checked == "numerical":  # at any number of images (a --calib-n of 256)
        lines.append(f"warning: int8 agreement measured on {IN_SAMPLE} (too few images to hold any apart), so parity.passed is "
                     "false: export with more labelled images than --calib-n")
    if p.checked == "structural":  # e.g. Core ML off macOS: passed means the structure only
        lines.append(f"note: no numerical check ran ({m.backend} does not run on this host): the artifacts' outputs were not compared "
                     "with PyTorch (parity.passed is false), and the default thresholds are PyTorch's; check and calibrate where it runs "
                     "(dvt-runtime calibrate)")
    if m.precision in ("int8", "fp16") and p.checked == "numerical" and not agreement_measured(p, [e.quantization for e in m.exits]):
        lines.append(f"warning: {m.precision} top-1 agreement not measured: no real images (the fixed inputs' max|dlogit| is recorded, "
                     "not bounded), so parity.passed is false; export with --calib-data (labelled images like the model's) to verify it")
    lines += [f"PROBLEM: {prob}" for prob in p.problems]
    return "\n".join(lines)


def _thresholds_line(m: Manifest) -> str:
    """The default thresholds, where they came from, and whether so few images chose them that they are rough."""
    if m.thresholds is None:
        return f"default thresholds: none, every image runs to the last exit ({m.thresholds_source})"
    shown = ", ".join("-" if v is None else f"{v:.4g}" for v in m.thresholds[:-1])
    rough = (f"; warning: only {n} images chose them, so they are rough (export with more labelled images, or calibrate "
             "on the device)" if (n := rough_thresholds(m.thresholds_source)) else "")
    return f"default thresholds (exits 1-{len(m.thresholds) - 1}): {shown} ({m.thresholds_source}){rough}"
