"""Export every exit of a DVT separately, quantized and verified, as a bundle directory.

    python -m dvt_edge.export --checkpoint CKPT --target coreml [--precision fp16]

A bundle is ``manifest.json`` plus one artifact per exit. It is written to a temporary
directory next to its destination and renamed into place, so an interrupted export never
leaves a half bundle, and an existing bundle is replaced only with ``force=True``.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dvt_edge.checkpoint import CheckpointInfo, load_checkpoint
from dvt_edge.data import DataError, default_data, default_preprocess, load_dataset
from dvt_edge.export.common import ExitArtifact, ExitGraph, ExitJob, exit_graphs
from dvt_edge.export.targets import TARGETS, Target, TargetUnavailable, get_target
from dvt_edge.logs import quiet_toolchains
from dvt_edge.models import DVT
from dvt_runtime.bundle import Bundle, softmax
from dvt_runtime.io import current_umask, sha256_file
from dvt_runtime.manifest import ExitSpec, Manifest, ManifestError, TensorSpec, artifact_digest
from dvt_runtime.preprocess import Preprocess

__all__ = ["export_bundle", "ExportError", "TARGETS", "get_target", "TargetUnavailable", "ExportResult"]

FP32_TOL = 1e-3  # max abs logit difference allowed for fp32 artifacts
BATCH_TOL = 1e-4  # max abs logit difference between a batched call and one image per call
VERIFY_BATCH = 64  # images per call in the batched check of a dynamic-batch bundle
INT8_MIN_AGREEMENT = 97.0  # % top-1 agreement with PyTorch fp32 on real images


class ExportError(RuntimeError):
    """Export failed (verification, toolchain); nothing was written to the destination."""


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    report: str


# ----------------------------------------------------------------------------- data


@dataclass
class _Data:
    spec: Optional[str]
    calib: list[np.ndarray]  # (N, C, H, W) images for calibration
    verify_x: Optional[np.ndarray]  # (M, C, H, W) held-out real images for verification
    verify_y: Optional[np.ndarray]
    note: str = ""


def _default_data_spec(model: DVT, info: CheckpointInfo) -> Optional[str]:
    """Real images for calibration and verification: the checkpoint's training data where it is
    on this machine, else the data its variant is registered with (e.g. ``cifar10-ref``, shipped)."""
    candidates = []
    if info.extras.get("eval_data"):  # a published reference's portable set comes first
        candidates.append(str(info.extras["eval_data"]))
    if info.extras.get("data"):
        candidates.append(str(info.extras["data"]))
    summary = info.extras.get("train_summary") or info.extras.get("train", {}).get("args")
    if summary:
        import json

        try:
            d = json.loads(summary) if isinstance(summary, str) else summary
            args = d.get("args", d)
            if args.get("data"):
                candidates.append(str(args["data"]))
        except (ValueError, AttributeError):
            pass
    try:
        candidates.append(default_data(model.name, info.extras, model.cfg))
    except DataError:
        pass
    if (model.cfg.in_chans, model.cfg.img_size) == (1, 28):
        candidates.append("fashion-mnist")
    for spec in dict.fromkeys(candidates):
        try:
            load_dataset(spec, "train", download=False)
            return spec
        except DataError:
            continue
    return candidates[0] if candidates else None


def _load_data(spec: Optional[str], pre: Preprocess, calib_n: int, verify_n: int, need_calib: bool) -> _Data:
    if spec is None:
        if need_calib:
            raise ExportError("int8 needs calibration images and none are known for this checkpoint: "
                              "pass --calib-data SPEC (e.g. imagefolder:PATH or npz:PATH)")
        return _Data(None, [], None, None, "no real images (fixed inputs only); pass --calib-data to verify on real images")
    try:
        train = load_dataset(spec, "train", preprocess=pre)
        calib, _ = train.arrays(calib_n, seed=0)
        try:
            val = load_dataset(spec, "val", preprocess=pre)
        except DataError:
            val = train
        vx, vy = val.arrays(min(verify_n, len(val)), seed=1)
    except DataError as e:
        raise ExportError(f"calibration data {spec!r}: {e}") from None
    return _Data(spec, list(calib), vx, vy, f"{len(calib)} calibration images from {spec}/train, {len(vx)} verification images from {spec}/val")


# ----------------------------------------------------------------------------- reference


@torch.no_grad()
def _torch_cascade(graphs: list[ExitGraph], images: np.ndarray) -> list[list[dict[str, np.ndarray]]]:
    """Per image, per exit: the inputs each exit sees and its outputs, from PyTorch fp32."""
    out = []
    for x in images:
        feats = rels = None
        per_exit = []
        for g in graphs:
            img = torch.from_numpy(x[None])
            inputs = {"image": img.numpy()}
            if g.reuse:
                inputs.update(features=feats.numpy(), relations=rels.numpy())
            logits, f, r = g.stage(img, feats, rels)
            per_exit.append({"inputs": inputs, "logits": logits.numpy()})
            feats, rels = f, r
        out.append(per_exit)
    return out


def _verification_bundle(model: DVT, target: Target, exits: list[ExitSpec], sessions, root: Path,
                         max_batch: Optional[int] = 1) -> Bundle:
    """The runtime's own :class:`Bundle` over freshly loaded sessions (exits ``0..len(sessions)-1``):
    export verifies through the code path the device runs, not a second implementation."""
    n = len(sessions)
    m = Manifest(model=model.name, target=target.name, precision="-", classes=[str(i) for i in range(model.cfg.num_classes)],
                 preprocess=default_preprocess(model.cfg.in_chans, model.cfg.img_size),
                 exits=exits[:n], backend=target.backend, max_batch=max_batch)
    return Bundle(root, m, list(sessions), [0.0] * n)


# ----------------------------------------------------------------------------- thresholds


def _default_thresholds(model: DVT, info: CheckpointInfo, ref_logits: Optional[list[np.ndarray]], labels) -> tuple[Optional[list], str]:
    if info.thresholds is not None and info.thresholds.ndim == 2 and info.thresholds.shape[1] == model.num_exits:
        row = info.thresholds.shape[0] // 2
        t = [float(v) for v in info.thresholds[row]]
        return t[:-1] + [None], f"checkpoint dynamic_threshold row {row} of {info.thresholds.shape[0]}"
    if ref_logits is None:
        return None, "none (no real images to choose them on)"
    from dvt_runtime.search import ExitOutputs, StageCosts, search_thresholds

    probs = np.stack([softmax(lg) for lg in ref_logits])
    costs = StageCosts.from_cumulative([e.gflops for e in model.exits], unit="GFLOPs")
    res = search_thresholds(ExitOutputs.from_probs(probs, labels), costs, budget=costs.cumulative[-1] * (1 + 1e-9), algorithm="exact")
    best = max(p.accuracy for p in res.frontier)
    pick = min((p for p in res.frontier if p.accuracy >= best - 0.5), key=lambda p: p.mean_cost)
    return pick.to_dict()["thresholds"], (f"cheapest FLOPs point within 0.5 points of the best accuracy on {len(labels)} "
                                          "verification images (PyTorch fp32); re-calibrate on the device with dvt_runtime.calibrate")


def _exit_decisions(logits: list[np.ndarray], thresholds: Optional[list]) -> Optional[np.ndarray]:
    if thresholds is None:
        return None
    from dvt_runtime.search import exit_indices, thresholds_from_list

    conf = np.stack([softmax(lg).max(-1) for lg in logits])
    return exit_indices(conf, thresholds_from_list(thresholds))


# ----------------------------------------------------------------------------- verify


def _parity(target: Target, bundle: Bundle, graphs, data: _Data, ref_real, fixed_ref, thresholds) -> dict:
    """Compare the artifacts with PyTorch fp32: fixed inputs (per exit) and real images (chained
    through the runtime's cascade, one image per call and, where the bundle takes a batch, batched)."""
    rows = []
    for e, g in enumerate(graphs):
        ins = {n: t.numpy() for n, t in zip(g.input_names, g.example_inputs())}
        got = bundle.sessions[e].run(ins)["logits"]
        rows.append({"exit": e + 1, "max_abs_diff_fixed": float(np.abs(got - fixed_ref[e]).max()),
                     "finite": bool(np.isfinite(got).all())})
    report = {"runtime": target.backend, "n_real": 0, "exits": rows, "checked": "numerical"}
    if data.verify_x is not None:
        art = _chained(bundle, data.verify_x, 1)
        for e, row in enumerate(rows):
            diff = np.abs(art[e] - ref_real[e])
            row["max_abs_diff_real"] = float(diff.max())
            row["finite"] = row["finite"] and bool(np.isfinite(art[e]).all())
            row["top1_agreement"] = float((art[e].argmax(-1) == ref_real[e].argmax(-1)).mean() * 100)
            row["top1_artifact"] = float((art[e].argmax(-1) == data.verify_y).mean() * 100)
            row["top1_pytorch"] = float((ref_real[e].argmax(-1) == data.verify_y).mean() * 100)
        report["n_real"] = len(data.verify_x)
        if bundle.batch_limit() > 1 and len(data.verify_x) > 1:  # the same images in batches: must give the same logits
            n = min(len(data.verify_x), VERIFY_BATCH if bundle.manifest.max_batch is None else bundle.manifest.max_batch)
            batched = _chained(bundle, data.verify_x, n)
            report["batch_checked"] = n
            for e, row in enumerate(rows):
                row["max_abs_diff_batched"] = float(np.abs(batched[e] - art[e]).max()) if np.isfinite(batched[e]).all() else float("nan")
        d_ref, d_art = _exit_decisions(ref_real, thresholds), _exit_decisions(art, thresholds)
        if d_ref is not None:
            final_ref = np.stack(ref_real)[d_ref, np.arange(len(d_ref))].argmax(-1)
            final_art = np.stack(art)[d_art, np.arange(len(d_art))].argmax(-1)
            report["exit_decision_agreement"] = float((d_ref == d_art).mean() * 100)
            report["cascade_answer_agreement"] = float((final_ref == final_art).mean() * 100)
    return report


def _chained(bundle: Bundle, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Every exit's logits, the runtime chaining the stages, ``batch`` images per call; non-finite
    logits are returned (and reported per exit) instead of raised."""
    return bundle.run_exits(x, max_batch=batch, check_finite=False)


def _check_finite_reference(fixed_ref: list[np.ndarray], real_ref: Optional[list[np.ndarray]], checkpoint: str) -> None:
    """PyTorch itself must give finite logits: otherwise there is nothing to export faithfully."""
    for e, lg in enumerate(fixed_ref):
        bad = not np.isfinite(lg).all() or (real_ref is not None and not np.isfinite(real_ref[e]).all())
        if bad:
            raise ExportError(f"exit {e + 1} of {checkpoint} gives NaN or infinite logits in PyTorch itself: its weights are "
                              "broken (diverged training or a corrupted file); nothing was exported")


def _check_parity(report: dict, precision: str) -> list[str]:
    """Every failed check; NaN is a failure (each comparison is written so that NaN fails it)."""
    problems = []
    for row in report["exits"]:
        if row.get("finite") is False:
            problems.append(f"exit {row['exit']}: the artifact returned NaN or infinite logits where PyTorch's are finite")
        if "max_abs_diff_batched" in row and not row["max_abs_diff_batched"] <= BATCH_TOL:
            problems.append(f"exit {row['exit']}: batched logits differ from one-by-one by {row['max_abs_diff_batched']:.2e} > {BATCH_TOL:g}")
        if precision == "fp32":
            for k in ("max_abs_diff_fixed", "max_abs_diff_real"):
                if k in row and not row[k] <= FP32_TOL:
                    problems.append(f"exit {row['exit']}: fp32 {k} {row[k]:.2e} > {FP32_TOL:g}")
        elif "top1_agreement" in row and not row["top1_agreement"] >= INT8_MIN_AGREEMENT and precision == "int8":
            problems.append(f"exit {row['exit']}: int8 top-1 agreement {row['top1_agreement']:.2f}% < {INT8_MIN_AGREEMENT}% on real images")
    return problems


def format_parity(m: Manifest) -> str:
    p = m.parity
    lines = [f"{m.model} -> {m.target} {m.precision}  ({p.get('checked', '?')} check on {p.get('runtime', '?')}; "
             f"{p.get('n_real', 0)} real images)"]
    head = f"{'exit':>4} {'grid':>6} {'artifact':<28} {'size KB':>8} {'scheme':<10} {'max|dlogit| fixed':>17} {'real':>9} {'top-1 agree %':>13} {'top-1 art/pt %':>15}"
    lines.append(head)
    for e, row in zip(m.exits, p.get("exits", [{}] * len(m.exits))):
        fx = f"{row['max_abs_diff_fixed']:.2e}" if "max_abs_diff_fixed" in row else "-"
        rl = f"{row['max_abs_diff_real']:.2e}" if "max_abs_diff_real" in row else "-"
        ag = f"{row['top1_agreement']:.2f}" if "top1_agreement" in row else "-"
        ac = f"{row['top1_artifact']:.2f}/{row['top1_pytorch']:.2f}" if "top1_artifact" in row else "-"
        lines.append(f"{e.index + 1:>4} {e.grid:>4}x{e.grid:<1} {e.artifact:<28} {e.size_bytes / 1024:>8.0f} "
                     f"{str(e.quantization.get('scheme', '-')):<10} {fx:>17} {rl:>9} {ag:>13} {ac:>15}")
        if e.undelegated_ops:
            lines.append(f"       not delegated to XNNPACK: {', '.join(f'{k} x{v}' for k, v in e.undelegated_ops.items())}")
    if "batch_checked" in p:
        d = [row.get("max_abs_diff_batched", float("nan")) for row in p.get("exits", [])]
        lines.append(f"batched ({p['batch_checked']} images per call) vs one per call: max|dlogit| per exit "
                     + ", ".join(f"{v:.1e}" for v in d))
    lines.append("batch: " + ("any size per call" if m.max_batch is None else f"up to {m.max_batch} per call" if m.max_batch > 1
                              else f"1 per call ({m.batch_note})"))
    if "exit_decision_agreement" in p:
        lines.append(f"exit decision agreement at the default thresholds: {p['exit_decision_agreement']:.2f}%, "
                     f"cascade answer agreement: {p['cascade_answer_agreement']:.2f}%")
    for prob in p.get("problems", []):
        lines.append(f"PROBLEM: {prob}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main entry


def _toolchain() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for d in ("dvt-edge", "dvt-runtime", "torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sessions(target: Target, bundle: Path, graphs, artifacts: list[ExitArtifact]):
    """Load the artifacts with the target's runtime; None when that runtime cannot run on this host."""
    from dvt_runtime.backends import BackendUnavailable, open_session

    sessions = []
    for e, (g, a) in enumerate(zip(graphs, artifacts)):
        try:
            s = open_session(target.backend, bundle / a.artifact, g.input_names, g.output_names, threads=1)
            s.run({n: t.numpy() for n, t in zip(g.input_names, g.example_inputs())})  # some runtimes fail only at first run
        except BackendUnavailable:
            return None
        except Exception as ex:  # the runtime rejects what the toolchain wrote
            raise ExportError(f"exit {e + 1}: {a.artifact} was written but {target.backend} cannot run it "
                              f"({a.quantization.get('scheme', '')} {str(ex).strip()[:300]})") from None
        sessions.append(s)
    return sessions


@dataclass
class _Plan:
    """Everything prepared for one export (checkpoint read, data loaded, PyTorch reference run)."""

    tmp: Path  # the bundle is built here, then installed at dest
    dest: Path
    target: Target
    precision: str
    model: DVT
    info: CheckpointInfo
    pre: Preprocess
    graphs: list[ExitGraph]
    schemes: list[Optional[str]]  # int8 schemes to try ([None] otherwise)
    data: _Data
    calib_ref: list  # per calibration image, per exit: its inputs (PyTorch)
    real_ref: Optional[list[np.ndarray]]  # per exit: (M, classes) PyTorch logits on the verification images
    fixed_ref: list[np.ndarray]  # per exit: PyTorch logits on the fixed example inputs
    thresholds: Optional[list]
    thr_source: str
    spec: Optional[str]
    checkpoint: str
    verify: bool
    progress: bool


def export_bundle(
    checkpoint: str,
    target: str,
    precision: str = "fp32",
    out: Optional[str] = None,
    model_name: Optional[str] = None,
    calib_data: Optional[str] = None,
    calib_n: int = 64,
    verify_n: int = 300,
    scheme: Optional[str] = None,
    force: bool = False,
    verify: bool = True,
    trusted: bool = False,
    progress: bool = True,
    verbose: bool = False,
    log_path: Optional[str] = None,
) -> ExportResult:
    """Export one (model, target, precision) bundle; returns its path, manifest and parity table."""
    for name, v, lo in (("calib_n", calib_n, 1), ("verify_n", verify_n, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {lo}, got {v!r}")
    t = get_target(target)
    t.check_precision(precision)
    t.check_available()
    model, info = load_checkpoint(checkpoint, model=model_name, trusted=trusted)
    pre = info.preprocess or default_preprocess(model.cfg.in_chans, model.cfg.img_size)
    dest = Path(out) if out else Path("bundles") / f"{model.name}-{t.name}-{precision}"
    for note in _recover_leftovers(dest):
        print(f"note: {note}")
    _check_destination(dest, force)
    schemes = [None]
    if precision == "int8":
        valid = list(t.int8.get("schemes", []))
        chosen = scheme or t.int8.get("default_scheme", valid[0])
        if chosen != "auto" and chosen not in valid:
            raise ValueError(f"target {t.name!r} int8 schemes: {valid + ['auto']}; got {chosen!r}")
        schemes = valid if chosen == "auto" else [chosen]
    elif scheme:
        raise ValueError(f"--scheme applies to int8 only (got precision {precision})")

    spec = calib_data or _default_data_spec(model, info)
    data = _load_data(spec, pre, calib_n, verify_n, need_calib=precision == "int8")
    graphs = exit_graphs(model)
    calib_ref = _torch_cascade(graphs, np.stack(data.calib)) if data.calib else []
    real_ref = [np.stack(v) for v in zip(*[[d["logits"][0] for d in per] for per in _torch_cascade(graphs, data.verify_x)])] if data.verify_x is not None else None
    with torch.no_grad():
        fixed_ref = [g.stage(*g.example_inputs())[0].numpy() for g in graphs]
    _check_finite_reference(fixed_ref, real_ref, checkpoint)
    thresholds, thr_source = _default_thresholds(model, info, real_ref, data.verify_y)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a bundle is as readable as any folder the user makes
    log = Path(log_path) if log_path else dest.parent / "dvt-edge-export.log"
    try:
        with quiet_toolchains(log, verbose) as console:
            plan = _Plan(tmp, dest, t, precision, model, info, pre, graphs, schemes, data, calib_ref, real_ref, fixed_ref,
                         thresholds, thr_source, spec, checkpoint, verify, progress)
            return _export_into(plan, console)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_into(p: _Plan, console) -> ExportResult:
    """Export, verify and write the manifest in ``p.tmp``, then install it at ``p.dest``."""
    tmp, t, precision, model, graphs, data = p.tmp, p.target, p.precision, p.model, p.graphs, p.data
    artifacts: list[ExitArtifact] = []
    choice_notes = []
    mod = t.load()
    it = range(len(graphs))
    if p.progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"export {t.name} {precision}", unit="exit", file=console)
    for e in it:
        calib_e = [c[e]["inputs"] for c in p.calib_ref]
        candidates = []
        for sch in p.schemes:
            cdir = tmp if len(p.schemes) == 1 else Path(tempfile.mkdtemp(prefix=f"{sch}-", dir=tmp))
            art = mod.export_exit(ExitJob(e, graphs[e], t, precision, sch, calib_e, cdir))
            candidates.append((sch, cdir, art))
        if len(candidates) > 1:
            sch, cdir, art = _pick_scheme(model, t, candidates, graphs, artifacts, tmp, data, p.real_ref, e, choice_notes)
        else:
            sch, cdir, art = candidates[0]
        artifacts.append(art)
    # the ort target: one required_operators.config for the whole bundle
    cfgs = [f for a in artifacts for f in a.extra_files if f.endswith(".config")]
    if cfgs:
        from dvt_edge.export.onnx import merge_required_operators

        merge_required_operators(tmp, cfgs)

    max_batch, batch_note = _batch_support(t, artifacts)
    exits = _exit_specs(model, graphs, artifacts, tmp)  # artifacts hashed once: verification and manifest

    # -- verification
    sessions = _sessions(t, tmp, graphs, artifacts) if p.verify else None
    if sessions is not None:
        vb = _verification_bundle(model, t, exits, sessions, tmp, max_batch)
        parity = _parity(t, vb, graphs, data, p.real_ref, p.fixed_ref, p.thresholds)
    else:
        parity = {"runtime": t.backend, "checked": "structural" if p.verify else "skipped (--no-verify)", "n_real": 0,
                  "exits": [{"exit": e + 1} for e in range(len(graphs))],
                  "note": f"{t.backend} cannot run on {platform.system()} here"}
        if p.verify and t.name == "coreml":
            from dvt_edge.export.coreml import check_structure

            probs = []
            for g, a in zip(graphs, artifacts):
                probs += [f"{a.artifact}: {p}" for p in check_structure(tmp / a.artifact, g.input_shapes(), g.output_shapes())]
            parity["structure_problems"] = probs
            if probs:
                raise ExportError("Core ML structural check failed: " + "; ".join(probs))
    parity["data"] = data.note
    if choice_notes:
        parity["scheme_selection"] = choice_notes
    problems = _check_parity(parity, precision) if p.verify else []
    parity["problems"] = problems
    parity["passed"] = not problems

    manifest = Manifest(
        model=model.name, target=t.name, precision=precision,
        classes=list(p.info.classes) if p.info.classes else [str(i) for i in range(model.cfg.num_classes)],
        preprocess=p.pre, exits=exits, backend=t.backend, model_config=model.cfg.to_dict(),
        quantization={"schemes_tried": [s for s in p.schemes if s], "recipe": t.recipe} if precision == "int8" else {},
        thresholds=p.thresholds, thresholds_source=p.thr_source, parity=parity, toolchain=_toolchain(),
        source={"checkpoint": str(p.checkpoint), "sha256": sha256_file(p.checkpoint), "format": p.info.format, "data": p.spec},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        max_batch=max_batch, batch_note=batch_note,
    )
    if cfgs:
        manifest.extras["required_operators"] = "required_operators.config"
    manifest.save(tmp)
    report = format_parity(manifest)
    if problems:
        raise ExportError("verification failed (use --no-verify to write the bundle anyway):\n" + report)
    _install(tmp, p.dest)
    return ExportResult(p.dest, manifest, report)


def _pick_scheme(model, t, candidates, graphs, chosen_artifacts, tmp, data, real_ref, e, notes):
    """Keep the int8 scheme whose exit agrees best with PyTorch on real images (chained)."""
    if data.verify_x is None:
        sch, cdir, art = candidates[0]
        notes.append(f"exit {e + 1}: {sch} (no real images to compare schemes)")
    else:
        scored, rejected = [], {}
        for sch, cdir, art in candidates:
            try:
                sess = _sessions(t, tmp, graphs[: e + 1], [*chosen_artifacts, _moved(art, cdir, tmp)])
            except ExportError as ex:
                rejected[sch] = str(ex)
                scored.append((-1.0, -np.inf, sch, cdir, art))
                continue
            if sess is None:
                scored.append((0.0, 0.0, sch, cdir, art))
                continue
            partial = [*chosen_artifacts, _moved(art, cdir, tmp)]
            lg = _chained(_verification_bundle(model, t, _exit_specs(model, graphs, partial, tmp), sess, tmp), data.verify_x, 1)[e]
            agree = float((lg.argmax(-1) == real_ref[e].argmax(-1)).mean() * 100)
            err = float(np.abs(lg - real_ref[e]).max())
            scored.append((agree, -err, sch, cdir, art))
        scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
        if scored[0][0] < 0:
            raise ExportError(f"exit {e + 1}: no int8 scheme produced an artifact the runtime can run: {rejected}")
        _, _, sch, cdir, art = scored[0]
        notes.append(f"exit {e + 1}: " + ", ".join(f"{s[2]} {s[0]:.2f}% agreement (max|dlogit| {-s[1]:.3f})" if s[0] >= 0
                                                 else f"{s[2]} rejected ({rejected[s[2]]})" for s in scored) + f" -> {sch}")
    for name in [art.artifact, *art.extra_files]:
        shutil.move(str(cdir / name), str(tmp / name))
    for _, d, _ in candidates:
        if d != tmp:
            shutil.rmtree(d, ignore_errors=True)
    return sch, tmp, art


def _exit_specs(model: DVT, graphs, artifacts: list[ExitArtifact], root: Path) -> list[ExitSpec]:
    """The manifest's per-exit entries (artifact file, SHA-256, named tensor shapes at batch 1)."""
    exits = []
    for e, (g, a) in enumerate(zip(graphs, artifacts)):
        ex = model.exits[e]
        p = root / a.artifact
        in_s, out_s = g.input_shapes(), g.output_shapes()
        exits.append(ExitSpec(
            index=e, grid=ex.grid, tokens=ex.tokens, gflops=ex.gflops, stage_gflops=ex.stage_flops / 1e9,
            artifact=a.artifact, sha256=artifact_digest(p), size_bytes=_size(p),
            inputs=[TensorSpec(n, list(in_s[n])) for n in g.input_names],
            outputs=[TensorSpec(n, list(out_s[n])) for n in g.output_names],
            quantization=a.quantization, undelegated_ops=a.undelegated_ops,
        ))
    return exits


def _batch_support(t: Target, artifacts: list[ExitArtifact]) -> tuple[Optional[int], str]:
    """The bundle's ``max_batch`` (None: any) and, when it is 1, why."""
    if t.batch != "dynamic":
        return 1, t.batch_note or f"the {t.name} recipe exports batch 1"
    if any(a.quantization.get("scheme") == "dynamic" for a in artifacts):
        return 1, ("dynamic-range int8 quantizes each call's activations with one scale for the whole batch, so a sample's "
                   "answer would depend on its batch-mates: the runtime runs one sample per call")
    return (t.max_batch or None), ""


def _moved(art: ExitArtifact, src: Path, tmp: Path) -> ExitArtifact:
    """An artifact as seen from the bundle root (for scoring before it is moved there)."""
    return ExitArtifact(os.path.relpath(src / art.artifact, tmp), art.quantization, art.undelegated_ops, art.extra_files)


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _install(tmp: Path, dest: Path) -> None:
    """Put the finished bundle at ``dest`` so that the path always holds the old or the new one.

    Linux: one atomic ``renameat2(RENAME_EXCHANGE)`` swaps the two directories. Elsewhere the
    old bundle is renamed aside first; if the process dies between the two renames, the next
    export to the same path puts it back (:func:`_recover_leftovers`).
    """
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_leftovers(dest: Path) -> list[str]:
    """Clean what interrupted exports to ``dest`` left: temporary folders of dead processes are
    removed; an old bundle moved aside is put back when ``dest`` is missing, removed otherwise."""
    notes: list[str] = []
    if dest.name in ("", ".", "..") or not dest.parent.is_dir():
        return notes
    for p in sorted(dest.parent.glob(f".{dest.name}.*")):
        kind, _, rest = p.name[len(dest.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not dest.exists() and (p / "manifest.json").is_file():
            os.replace(p, dest)
            notes.append(f"restored the previous bundle {dest} from an interrupted export")
        else:
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p.name} left by an interrupted export")
    return notes


def _check_destination(dest: Path, force: bool) -> None:
    """Refuse to replace anything but a bundle this package wrote (and never the working directory)."""
    if dest.exists() or dest.is_symlink():
        here = Path.cwd().resolve()
        if dest.resolve() == here or dest.resolve() in here.parents:
            raise ExportError(f"--out {dest} is the current directory (or holds it); name a new folder for the bundle, e.g. --out bundles/my-model")
        if not dest.is_dir():
            raise ExportError(f"{dest} exists and is not a folder; choose another --out")
        if not force:
            raise ExportError(f"{dest} already exists; pass --force to replace it (the old bundle is kept until the new one is complete)")
        try:
            Manifest.load(dest, verify=False)
        except (ManifestError, OSError) as e:
            raise ExportError(f"{dest} exists and is not a dvt-edge bundle ({e}); --force replaces only bundles: "
                              "choose another --out, nothing was changed") from None
    for parent in dest.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"cannot write the bundle under {parent}: it is a file, not a folder; choose another --out")
