"""Export every exit of a DVT separately, quantized and verified, as a bundle directory.

    python -m dvt_edge.export --checkpoint CKPT --target coreml [--precision fp16]

A bundle is ``manifest.json`` plus one artifact per exit. It is written to a temporary
directory next to its destination and renamed into place, so an interrupted export never
leaves a half bundle, and an existing bundle is replaced only with ``force=True``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dvt_edge.checkpoint import CheckpointInfo, load_checkpoint
from dvt_edge.data import (
    checkpoint_data,
    default_preprocess,
    holdout_changed,
    npz_in_sample,
    own_holdout,
    recorded_train_args,
    same_data,
    trained_on_val,
)
from dvt_edge.export.common import ExitArtifact, ExitGraph, ExitJob, ExportError, VerificationFailed, exit_graphs, exit_specs
from dvt_edge.export.defaults import MIN_THRESHOLD_IMAGES, THRESHOLD_TOLERANCE, _default_thresholds  # noqa: F401  (tests)
from dvt_edge.export.images import _Data, _load_data, _same_images  # noqa: F401  (_Data, _same_images: tests)
from dvt_edge.export.install import carry_over, check_destination, install, recover_leftovers, staging_stem
from dvt_edge.export.int8 import CALIBRATED, int8_schemes, pick_scheme
from dvt_edge.export.targets import TARGETS, Target, TargetUnavailable, get_target
from dvt_edge.export.verify import (
    FP32_TOL,
    IN_SAMPLE,
    INT8_MIN_AGREEMENT,
    agreement_measured,
    check_finite_reference,
    check_parity,
    decision_agreement,
    format_parity,
    open_sessions,
    parity,
    simulated_problems,
    torch_cascade,
    verification_bundle,
)
from dvt_edge.imageset import default_classes
from dvt_edge.logs import log_footer, quiet_toolchains
from dvt_edge.models import DVT, imagenet_layout
from dvt_edge.npzdata import HOLDOUT_MARK
from dvt_edge.provenance import code_changes, code_revision, created_at
from dvt_runtime.backends import available_backends
from dvt_runtime.console import progress, quote_arg
from dvt_runtime.io import current_umask, hold_lock, sha256_file
from dvt_runtime.manifest import ExitParity, ExitSpec, Manifest, ParityReport
from dvt_runtime.preprocess import Preprocess

CHECK_BYTES = 256 << 20  # per-exit inputs of verification images kept for the recipes (e.g. Core ML W8A8's simulated check)

__all__ = ["export_bundle", "ExportOptions", "ExportError", "VerificationFailed", "ExportResult", "TARGETS", "get_target", "TargetUnavailable", "FP32_TOL",
           "format_parity"]

@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    report: str
    notes: list[str] = field(default_factory=list)  # said on the console too (e.g. device calibrations kept by --force)

    def __repr__(self) -> str:  # the bundle, not its whole manifest (several KB in a notebook's cell)
        m, par = self.manifest, self.manifest.parity
        return (f"ExportResult({str(self.path)!r}, {m.model} {m.target}/{m.precision}, {len(m.exits)} exits, "
                f"check {par.checked if par else 'none'}{', passed' if par and par.passed else ''})")


# ----------------------------------------------------------------------------- thresholds


# ----------------------------------------------------------------------------- main entry


def _toolchain() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for d in ("dvt-edge", "dvt-runtime", "torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime", "onnxscript", "numpy",
              "opencv-python-headless", "opencv-python"):  # numpy and OpenCV: the verification images' decoding and resizing
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    if rev := code_revision():  # which checkout made it (every checkout of one version carries the same number), how modified
        out.update({"dvt-edge-revision": rev, **({"dvt-edge-changes": code_changes()} if code_changes() else {})})
    return out


@dataclass
class ExportOptions:
    """How to export: every knob of :func:`export_bundle` beyond the checkpoint, target and precision."""

    out: Optional[str] = None  # bundle folder (default bundles/<model>-<target>-<precision>)
    model_name: Optional[str] = None  # registered model (published checkpoints: inferred)
    calib_data: Optional[str] = None  # dataset spec for int8 calibration and verification images
    calib_n: int = 64  # calibration images
    verify_n: int = 1000  # verification images (the default thresholds are chosen on them)
    # int8 (and Core ML fp16) top-1 agreement with PyTorch the export requires (None: recorded, not required; for
    # random weights, whose near-equal logits make top-1 noise: bench --latency-only --model)
    int8_min_agreement: Optional[float] = INT8_MIN_AGREEMENT
    scheme: Optional[str] = None  # int8 scheme, or "auto" to measure each and keep the best per exit
    force: bool = False  # replace an existing bundle (only one this package wrote)
    verify: bool = True  # refuse to write a bundle that fails its checks
    trusted: bool = False  # allow a non-weights-only checkpoint
    progress: bool = True
    verbose: bool = False  # toolchain logs on the terminal instead of the log file
    log_path: Optional[str] = None
    caller: str = "export"  # whose flags advice names: "export" (--calib-data, --scheme) or "bench" (--data)
    etrecord: bool = False  # ExecuTorch: an ETRecord beside each .pte (the Inspector names an ETDump's operators with it)
    command: Optional[str] = None  # the command line, recorded in the manifest (None: called from Python)

    @property
    def data_flag(self) -> str:
        return "--data" if self.caller == "bench" else "--calib-data"

    def __post_init__(self) -> None:
        for name in ("calib_n", "verify_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        a = self.int8_min_agreement
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 100 or 0 < a < 1):
            raise ValueError(f"--int8-min-agreement (int8_min_agreement) must be a percentage in [0, 100] or None (not required), got "
                             f"{a!r}" + (f": a fraction? pass {a * 100:g} for {a:.0%}" if isinstance(a, float) and 0 < a < 1 else ""))


@dataclass
class _Plan:
    """Everything prepared for one export (checkpoint read, data loaded, PyTorch reference run)."""

    dest: Path
    target: Target
    precision: str
    opts: ExportOptions
    model: DVT
    info: CheckpointInfo
    pre: Preprocess
    graphs: list[ExitGraph]
    schemes: list[list[Optional[str]]]  # per exit, the int8 schemes to try ([None] otherwise)
    data: _Data
    calib_ref: list  # per calibration image, per exit: its inputs (PyTorch)
    real_ref: Optional[list[np.ndarray]]  # per exit: (M, classes) PyTorch logits on the verification images
    fixed_ref: list[np.ndarray]  # per exit: PyTorch logits on the fixed example inputs
    thresholds: Optional[list]
    thr_source: str
    spec: Optional[str]
    checkpoint: str
    check_inputs: list  # per verification image (as many as CHECK_BYTES hold, at least 16), per exit: its inputs (PyTorch)
    tmp: Path = Path()  # the bundle is built here (set once everything is prepared), then installed at dest
    log: Optional[Path] = None  # the toolchains' log
    inputs: list = field(default_factory=list)  # the checkpoint and data paths (never inside dest)


def export_bundle(checkpoint: str, target: str, precision: str = "fp32", options: Optional[ExportOptions] = None, **kwargs) -> ExportResult:
    """Export one (model, target, precision) bundle; returns its path, manifest and parity table.

    ``options`` (or its fields as keyword arguments, e.g. ``out=..., force=True``): see
    :class:`ExportOptions`.
    """
    valid = list(ExportOptions.__dataclass_fields__)
    if unknown := sorted(set(kwargs) - set(valid)):
        raise ValueError(f"unknown export option(s) {unknown}; valid: {valid}")
    if options is not None and kwargs:
        raise ValueError("pass either options= or keyword options, not both")
    opts = options or ExportOptions(**kwargs)
    t = get_target(target)
    t.check_precision(precision)
    t.check_etrecord(opts.etrecord)
    t.load(precision)  # installed, and its exporter makes that precision: refused before any work
    created_at()  # a bad SOURCE_DATE_EPOCH too (it had been found after the conversion and verification)
    model, info = load_checkpoint(checkpoint, model=opts.model_name, trusted=opts.trusted)
    dest = Path(opts.out) if opts.out else Path("bundles") / f"{model.name}-{t.name}-{precision}"
    for note in recover_leftovers(dest):
        print(f"note: {note}", file=sys.stderr)
    log = Path(opts.log_path) if opts.log_path else dest.parent / "dvt-edge-export.log"
    inputs = [checkpoint] + ([opts.calib_data.partition(":")[2]] if opts.calib_data and ":" in opts.calib_data else [])
    check_destination(dest, opts.force, inputs, log, checkpoint, log_written=not opts.verbose, made=(t.name, precision))
    code_revision(), code_changes()  # the checkout as this export started (a pull, or this bundle in it, does not change that)
    schemes = int8_schemes(t, precision, opts.scheme, model.num_exits)  # per exit
    if any(len(c) > 1 for c in schemes) and t.backend not in available_backends():  # auto measures each scheme: not here
        schemes = [[d if (d := t.int8.get("default_scheme")) in c else c[0]] for c in schemes]  # a recipe whose default is auto: its first
        print(f"note: --scheme auto picks each exit's scheme by measured agreement and speed, which needs {t.backend} to run; "
              f"it does not run on this host, so the recipe's default (or its first) is exported: {','.join(c[0] for c in schemes)} "
              "(export where it runs to choose, or name a scheme)", file=sys.stderr)
    plan = _prepare(dest, t, precision, opts, model, info, schemes, checkpoint)  # fails before anything is written
    plan.log, plan.inputs = log, inputs
    made, had_log = _missing_folders(dest.parent) + _missing_folders(log.parent), log.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    plan.tmp = tmp = Path(tempfile.mkdtemp(prefix=f".{staging_stem(dest)}.tmp-{os.getpid()}-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a bundle is as readable as any folder the user makes
    try:  # held while it works: another export's clean-up leaves a live folder alone, whatever this process's PID looks like there
        header = f"export {checkpoint} -> {t.name} {precision} at {dest}"
        with hold_lock(tmp, wait=True), quiet_toolchains(log, opts.verbose, header=header) as console:
            if not tmp.is_dir():  # removed in the moment before it was locked (a clean-up that found it unheld)
                raise ExportError(f"the export's temporary folder {tmp} was removed before it started; export again")
            res = _export_into(plan, console)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _undo_setup(made, None if had_log else log, header)
        if not opts.verbose:  # the log kept (a toolchain's lines in it): how the export it holds ended, after them
            log_footer(log, f"failed, nothing written at {dest}: {type(e).__name__}" + (f": {str(e).splitlines()[0]}" if str(e).strip() else ""))
        raise
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    if not opts.verbose:  # the verdict and the notes had reached the terminal only
        par = res.manifest.parity
        log_footer(log, f"done: {dest} (check {par.checked if par else 'none'}{', passed' if par and par.passed else ', NOT passed'}; default "
                        f"thresholds: {res.manifest.thresholds_source})" + "".join(f"\nnote: {n}" for n in res.notes))
    return res


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first: what ``mkdir(parents=True)`` will make."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def _undo_setup(made: list[Path], new_log: Optional[Path], header: str = "") -> None:
    """After a failed export: remove the log it created if nothing but its own header is in it, and the folders it made
    while they are empty (a log with the toolchain's error in it stays, and so does its folder; so does one another export
    into the same folder writes to: its header is there too)."""
    with contextlib.suppress(OSError):
        lines = [line for line in new_log.read_text(errors="replace").splitlines() if line.strip()] if new_log is not None else []
        if new_log is not None and len(lines) <= 1 and all(line.startswith("====") and header in line for line in lines):
            new_log.unlink()  # nothing in it but the header quiet_toolchains wrote for this export
    for folder in sorted(set(made), key=lambda f: len(f.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder


_SAID: set[str] = set()  # warnings already printed in this process
#: fewer calibration images give rough int8 activation ranges: on the CIFAR reference's ExecuTorch static int8, 2 images left
#: the logits 1.1-1.6 off and 95.1% of decisions the same, against 0.1-0.4 and 99% with 64 (a helper's export, session 54)
FEW_CALIB = 32


def _tried(schemes: list[list[Optional[str]]]) -> list[str]:
    """Every int8 scheme some exit tries, once each, in order."""
    return list(dict.fromkeys(s for c in schemes for s in c if s))


def _prepare(dest: Path, t: Target, precision: str, opts: ExportOptions, model: DVT, info: CheckpointInfo,
             schemes: list[list[Optional[str]]], checkpoint: str) -> _Plan:
    """Load the calibration and verification images and run the PyTorch reference on them."""
    pre = info.preprocess or default_preprocess(model.cfg.in_chans, model.cfg.img_size)
    if model.cfg.img_size >= 224:  # said before the long part; measured per recipe ([minutes_224])
        if took := t.minutes_224.get(precision):
            took = took if any(len(c) > 1 for c in schemes) else took.replace(" (every scheme tried)", " with every scheme tried; one scheme takes less")
            print(f"note: exporting a {model.cfg.img_size} px model to {t.name} {precision} takes {took} (measured: "
                  f"{t.minutes_224.get('measured_on', f'on what, {t.recipe} does not say')})", file=sys.stderr)
        else:
            print(f"note: exporting a {model.cfg.img_size} px model to {t.name} {precision} may take minutes (not measured for "
                  f"this target: {t.recipe} has no [minutes_224] {precision})", file=sys.stderr)
    # a run's own npz file given: its held-out part verifies (and chooses thresholds), not the 90% trained on
    spec, stand_in = ((own_holdout(opts.calib_data, info.extras), "") if opts.calib_data else
                      checkpoint_data(model.name, info.extras, model.cfg))
    trained = recorded_train_args(info.extras).get("data")
    if in_sample := spec and trained_on_val(spec, trained):  # verification, thresholds: in-sample
        if not opts.calib_data:
            raise ExportError(f"{in_sample}: no stand-in to verify on and choose thresholds with; pass {opts.data_flag} SPEC "
                              "(images the model did not train on)")
        print(f"warning: {in_sample}: verification and the default thresholds are in-sample", file=sys.stderr)
    elif old_npz := spec and npz_in_sample(spec, trained):  # the run's own set (no other has its classes): used, and said
        print(f"warning: {old_npz}: verification and the default thresholds are in-sample", file=sys.stderr)
    if stand_in:  # another set calibrates and verifies: said on the console and in the parity table
        print(f"note: {stand_in} (pass {opts.data_flag} SPEC to choose)", file=sys.stderr)
    if (moved := spec and holdout_changed(spec, info.extras) or "") and moved not in _SAID:  # thresholds are chosen on the holdout
        _SAID.add(moved)  # once per process: bench exports one bundle per target and precision from the same data
        print(moved, file=sys.stderr)
    need = [s for s in _tried(schemes) if s in CALIBRATED]  # weight-only and dynamic schemes calibrate nothing
    if need and spec is None:
        free = [s for s in t.int8.get("schemes", []) if s not in CALIBRATED]
        raise ExportError(f"int8 scheme(s) {', '.join(need)} need calibration images and none are known for this checkpoint: pass "
                          f"{opts.data_flag} SPEC (e.g. imagefolder:PATH or npz:PATH)"
                          + (f", or --scheme {' or '.join(free)} (no calibration)" if free and opts.caller == "export" else ""))
    trained = recorded_train_args(info.extras).get("data")  # an npz trained on records its holdout: PATH#holdout on both sides
    own = bool(spec) and isinstance(trained, str) and same_data(spec.removesuffix(HOLDOUT_MARK), trained.removesuffix(HOLDOUT_MARK))
    data = _load_data(spec, pre, opts.calib_n, opts.verify_n, need_calib=bool(need), num_classes=model.cfg.num_classes,
                      classes=info.classes, own=own)  # the model's own images (gray X-rays, small photos) are not another set's
    if need and 0 < len(data.calib) < FEW_CALIB and (few := f"{len(data.calib)} {', '.join(need)}") not in _SAID:  # once a process
        _SAID.add(few)  # ranges from a handful of images: measured 1.1-1.6 logits off (0.1-0.4 from 64)
        print(f"warning: {', '.join(need)} int8 takes its activation ranges from {len(data.calib)} calibration image(s), which are "
              f"rough: pass {FEW_CALIB} or more (--calib-n, the default 64, or a larger {opts.data_flag})", file=sys.stderr)
    data.note = "; ".join(n for n in (stand_in, moved, data.note) if n)  # in the manifest's parity too
    if data.verify_x is None:  # said now, not only in the manifest
        print(f"note: {data.note}" if t.backend in available_backends() else  # off its platform real images verify nothing here
              f"note: no real images; {t.backend} does not run on this host, so the export is checked structurally here (verify it "
              "where it runs); images (--calib-data) would choose the default thresholds on real images", file=sys.stderr)
    graphs = exit_graphs(model)
    calib_ref = torch_cascade(graphs, np.stack(data.calib)) if data.calib else []
    real_ref, check_inputs = None, []
    if data.verify_x is not None:  # per exit: (M, classes)
        # only quantization recipes check against the exits' inputs: kept for as many images as CHECK_BYTES hold, none otherwise
        keep = 0
        if precision == "int8":
            per_image = sum(a.numel() * a.element_size() for g in graphs for a in g.example_inputs())
            keep = max(16, CHECK_BYTES // max(per_image, 1))
        real_io = torch_cascade(graphs, data.verify_x, keep_inputs=keep)
        real_ref = [np.stack(v) for v in zip(*[[d["logits"][0] for d in per] for per in real_io])]
        check_inputs = [[d["inputs"] for d in per] for per in real_io[:keep]]
    with torch.no_grad():
        fixed_ref = [g.stage(*g.example_inputs())[0].numpy() for g in graphs]
    check_finite_reference(fixed_ref, real_ref, checkpoint)
    thresholds, thr_source = _default_thresholds(model, info, real_ref, data.verify_y, precision=precision)
    if thresholds is None and stand_in:  # the model's own images are not here, and the stand-in's labels are not its classes
        print(f"warning: the bundle will have no thresholds (every image runs to the last exit): {stand_in}, whose labels are not "
              f"this model's classes. Pass {opts.data_flag} SPEC with the images the model was trained on (moved? their new path)",
              file=sys.stderr)
    return _Plan(dest, t, precision, opts, model, info, pre, graphs, schemes, data, calib_ref, real_ref, fixed_ref,
                 thresholds, thr_source, spec, checkpoint, check_inputs)


def _classes(p: _Plan) -> list[str]:
    return list(p.info.classes) if p.info.classes else default_classes(p.model.cfg.num_classes, imagenet_layout(p.model.name))


def _export_exits(p: _Plan, console) -> tuple[list[ExitArtifact], list[str]]:
    """Each exit through the target's recipe (every int8 scheme tried, the best kept); the artifacts and scheme notes."""
    artifacts: list[ExitArtifact] = []
    notes: list[str] = []
    mod = p.target.load()
    for e in progress(range(len(p.graphs)), desc=f"export {p.target.name} {p.precision}", unit="exit",
                      enabled=p.opts.progress, file=console, leave=True):
        calib_e = [c[e]["inputs"] for c in p.calib_ref]
        candidates = []
        for sch in p.schemes[e]:
            cdir = p.tmp if len(p.schemes[e]) == 1 else Path(tempfile.mkdtemp(prefix=f"{sch}-", dir=p.tmp))
            check_e = [c[e] for c in p.check_inputs]
            art = mod.export_exit(ExitJob(e, p.graphs[e], p.target, p.precision, sch, calib_e, cdir, {"etrecord": p.opts.etrecord, "about": {
                "model": p.model.name, "num_exits": len(p.graphs), "classes": _classes(p), "preprocess": p.pre.to_dict()}}, check_e))
            candidates.append((sch, cdir, art))
        if len(candidates) > 1:
            _, _, art = pick_scheme(p.model, p.target, candidates, p.graphs, artifacts, p.tmp, p.data, p.real_ref, e, notes, p.pre)
        else:
            art = candidates[0][2]
        artifacts.append(art)
    return artifacts, notes


def _verify(p: _Plan, exits: list[ExitSpec], artifacts: list[ExitArtifact], max_batch: Optional[int], notes: list[str]) -> ParityReport:
    """The parity report: numerical where the target's runtime runs here, structural otherwise."""
    t = p.target
    sessions = open_sessions(t, p.tmp, p.graphs, artifacts) if p.opts.verify else None
    if sessions is not None:
        vb = verification_bundle(p.model, t, exits, sessions, p.tmp, max_batch, p.pre)
        report, art = parity(t, vb, p.graphs, p.data, p.real_ref, p.fixed_ref)
        # the device decides on the artifacts' logits: choose on those (non-finite ones fail the parity check below)
        if art is not None and all(r.finite for r in report.exits):
            p.thresholds, p.thr_source = _default_thresholds(p.model, p.info, art, p.data.verify_y,
                                                             f"the {t.backend} {p.precision} artifacts through the runtime", p.precision)
            decision_agreement(report, p.real_ref, art, p.thresholds)
    else:
        report = ParityReport(runtime=t.backend, checked="structural" if p.opts.verify else "skipped (--no-verify)",
                              exits=[ExitParity(e + 1) for e in range(len(p.graphs))],
                              note=f"{t.backend} cannot run on {platform.system()} here" if p.opts.verify else
                              "not verified: exported with --no-verify, nothing was compared")
        if p.opts.verify and t.backend == "coreml":
            from dvt_edge.export.coreml import check_structure

            for g, a in zip(p.graphs, artifacts):
                report.structure_problems += [f"{a.artifact}: {q}" for q in check_structure(p.tmp / a.artifact, g.input_shapes(), g.output_shapes(),
                                                                                            a.quantization.get("scheme"))]
            if report.structure_problems:
                raise VerificationFailed("Core ML structural check failed: " + "; ".join(report.structure_problems))
    report.data = p.data.note
    report.scheme_selection = notes
    if notes and report.checked == "numerical":  # the winner's agreement is the best of those measured on these same images
        report.note = ((report.note + "; " if report.note else "") + "int8 'auto' chose each exit's scheme by agreement and speed "
                       "measured on these same verification images (scheme_selection), so its agreement is not an out-of-sample figure")
    report.problems = check_parity(report, p.precision, p.opts.int8_min_agreement) if p.opts.verify else []
    if p.opts.verify:
        report.problems += simulated_problems([a.quantization for a in artifacts], p.opts.int8_min_agreement)
    if p.precision == "int8" and p.opts.int8_min_agreement is None:
        report.note = (report.note + "; " if report.note else "") + "int8 top-1 agreement recorded, not required (--int8-min-agreement none, as for random weights)"
    # int8/fp16 logits are held to a bar only on real images: on the fixed inputs alone their difference is recorded, unbounded
    unmeasured = p.opts.verify and p.precision in ("int8", "fp16") and report.checked == "numerical" and not agreement_measured(report, [a.quantization for a in artifacts])
    if unmeasured:
        report.note = ((report.note + "; " if report.note else "") + f"{p.precision} top-1 agreement not measured (no real images: the "
                       "fixed inputs' max|dlogit| is recorded, not bounded); export with --calib-data to verify it")
    # int8 agreement on the very images that set its ranges (too few to hold any apart) is optimistic: recorded, no pass
    in_sample = p.opts.verify and p.precision == "int8" and report.checked == "numerical" and IN_SAMPLE in report.data
    if in_sample:
        report.note = ((report.note + "; " if report.note else "") + f"int8 top-1 agreement measured on {IN_SAMPLE} (too few images to "
                       "hold any apart): optimistic, so not a pass; export with more labelled images than --calib-n")
    # passed: numerically verified; an unverified bundle, or one whose structure alone was checked (Core ML off macOS), never reads so
    report.passed = p.opts.verify and report.checked == "numerical" and not report.problems and not unmeasured and not in_sample
    return report


def _export_into(p: _Plan, console) -> ExportResult:
    """Export, verify and write the manifest in ``p.tmp``, then install it at ``p.dest``."""
    t, model = p.target, p.model
    artifacts, notes = _export_exits(p, console)
    cfgs = [f for a in artifacts for f in a.extra_files if f.endswith(".config")]
    if cfgs:  # the ort target: one required_operators.config for the whole bundle
        from dvt_edge.export.onnx import merge_required_operators

        merge_required_operators(p.tmp, cfgs, [a.artifact for a in artifacts])
    max_batch, batch_note = _batch_support(t, artifacts)
    exits = exit_specs(model, p.graphs, artifacts, p.tmp)  # artifacts hashed once: verification and manifest
    report = _verify(p, exits, artifacts, max_batch, notes)
    manifest = Manifest(
        model=model.name, target=t.name, precision=p.precision,
        classes=_classes(p),
        preprocess=p.pre, exits=exits, backend=t.backend, model_config=model.cfg.to_dict(),
        quantization={"schemes_tried": _tried(p.schemes), "recipe": t.recipe,
                      "min_top1_agreement": p.opts.int8_min_agreement if p.opts.verify and agreement_measured(report, [a.quantization for a in artifacts]) else None}
        if p.precision == "int8" else {},
        thresholds=p.thresholds, thresholds_source=p.thr_source, parity=report, toolchain=_toolchain(),
        source={"checkpoint": str(p.checkpoint), "sha256": sha256_file(p.checkpoint), "format": p.info.format, "data": p.spec,
                "command": p.opts.command or "dvt_edge.export.export_bundle() from Python",
                "options": {k: getattr(p.opts, k) for k in ("calib_data", "calib_n", "verify_n", "int8_min_agreement", "scheme")}},
        created=created_at(),
        max_batch=max_batch, batch_note=batch_note,
    )
    if cfgs:
        manifest.extras["required_operators"] = "required_operators.config"  # for a reduced ORT build, checked by verify()
        manifest.extras["required_operators_sha256"] = sha256_file(p.tmp / "required_operators.config")
    if records := [f for a in artifacts for f in a.extra_files if f.endswith(".etrecord")]:  # listed (--force replaces them), not hashed
        manifest.extras["etrecords"] = records
    manifest.save(p.tmp)
    table = format_parity(manifest)
    if report.problems:
        agreement_only = all("agreement" in str(pr) for pr in report.problems)  # the targeted way out, not every check skipped
        if p.opts.caller == "bench":  # bench has neither flag: a bundle exported by hand into its folder is reused
            way_out = (f"export it with python -m dvt_edge.export --checkpoint {quote_arg(str(p.checkpoint))} --target {t.name} "
                       f"--precision {p.precision} --out {quote_arg(str(p.dest))} " + ("--int8-min-agreement none" if agreement_only else "--no-verify")
                       + ", then rerun the bench with --reuse-bundles")
        else:
            more = f"calibrate on more images (--calib-n N; {len(p.data.calib)} now), or " if p.data.calib else ""
            way_out = (f"int8 top-1 agreement below the required: {more}try another --scheme ({', '.join(t.int8.get('schemes', []))}), or "
                       "pass --int8-min-agreement PCT, or 'none' to record it without requiring it" if agreement_only else
                       "use --no-verify to write the bundle anyway")
        raise VerificationFailed(f"verification failed ({way_out}):\n" + table)
    check_destination(p.dest, p.opts.force, p.inputs, p.log, log_written=not p.opts.verbose)  # again: a folder may have appeared there while the export ran
    notes = carry_over(p.dest, p.tmp, manifest, p.log)
    install(p.tmp, p.dest)
    if any(len(c) > 1 for c in p.schemes):  # chosen by measurement here: the same choice, pinned, for a re-export
        notes.append(f"int8 schemes chosen per exit; to export the same again: --scheme {','.join(e.quantization.get('scheme', '?') for e in exits)}")
    return ExportResult(p.dest, manifest, table, notes)


def _batch_support(t: Target, artifacts: list[ExitArtifact]) -> tuple[Optional[int], str]:
    """The bundle's ``max_batch`` (None: any) and, when it is 1, why."""
    if t.batch != "dynamic":
        return 1, t.batch_note or f"the {t.name} recipe exports batch 1"
    if any(a.quantization.get("scheme") == "dynamic" for a in artifacts):
        return 1, ("dynamic-range int8 quantizes each call's activations with one scale for the whole batch, so a sample's "
                   "answer would depend on its batch-mates: the runtime runs one sample per call")
    return (t.max_batch or None), ""
