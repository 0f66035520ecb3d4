"""python -m dvt_edge.export --target TARGET [--checkpoint CKPT] [--precision fp32|fp16|int8] ..."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from dvt_edge.checkpoint import CheckpointError
from dvt_edge.data import DATASETS, DataError
from dvt_edge.export import ExportError, ExportOptions, VerificationFailed, export_bundle
from dvt_edge.export.targets import TARGETS, TargetUnavailable, get_target
from dvt_edge.export.verify import INT8_MIN_AGREEMENT
from dvt_edge.provenance import THREADS_HELP, set_torch_threads
from dvt_runtime.cli import Parser, command_name
from dvt_runtime.console import join_args, silenced_progress

#: what a full or read-only disk raises while the bundle is written
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def _os_error(e: OSError) -> str:
    """An OS error as one line: a write error (full disk, read-only) names where the export writes and the fix."""
    if e.errno not in WRITE_ERRNOS:
        return str(e)
    return (f"cannot write the bundle or its temporary files: {e}; free space there or choose another --out (temporary files go "
            f"under --out's folder and {tempfile.gettempdir()}, set by TMPDIR); nothing was changed")


def list_targets() -> str:
    lines = [f"{'target':<11} {'precisions':<16} {'int8 --scheme (default)':<37} {'extra':<11} {'available':<9} produces"]
    for t in TARGETS.values():
        schemes = f"{','.join(t.int8['schemes'])},auto ({t.int8.get('default_scheme', t.int8['schemes'][0])})" if t.int8.get("schemes") else "-"
        lines.append(f"{t.name:<11} {','.join(t.precisions):<16} {schemes:<37} {t.extra:<11} {'yes' if t.available else 'no':<9} {t.produces}")
    lines.append("auto: every scheme exported per exit, the best kept by measured agreement and speed; a comma list: one per exit")
    return "\n".join(lines)


def check_scheme(scheme: Optional[str], jobs: list[tuple[str, str]], int8_flags: Optional[dict] = None) -> None:
    """--scheme against every int8 job's recipe, before any export; ValueError lists the valid ones per target. ``int8_flags``
    (flag -> value, None when not given): the other int8-only flags, refused without an int8 job (they were ignored unsaid)."""
    int8 = sorted({n for n, p in jobs if p == "int8"})
    given = [f for f, v in (int8_flags or {}).items() if v is not None]
    if given and not int8:
        raise ValueError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to int8 only; add --precision int8 "
                         f"(or drop {' and '.join(given)})")
    if not scheme:
        return
    if not int8:
        raise ValueError(f"--scheme {scheme} applies to int8 only; add --precision int8 (or drop --scheme)")
    bad = {n: TARGETS[n].int8.get("schemes", []) + ["auto"] for n in int8
           if any(s != "auto" and s not in TARGETS[n].int8.get("schemes", []) for s in scheme.split(","))}
    if bad:
        raise ValueError(f"--scheme {scheme!r} is not an int8 scheme of {', '.join(bad)}; valid per target: {bad}"
                         + ("; export those targets in separate runs" if len(bad) < len(int8) else ""))


def _agreement(v: Optional[str]) -> Optional[float]:
    """--int8-min-agreement: a percentage, 'none' (not required) or the default when not given."""
    if v is None:
        return INT8_MIN_AGREEMENT
    if v.strip().lower() == "none":
        return None
    try:
        return float(v)  # the range (and NaN) is checked by ExportOptions
    except ValueError:
        raise ValueError(f"--int8-min-agreement must be a percentage in [0, 100] (97, not 97% or 0.97) or 'none', got {v!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=command_name("python -m dvt_edge.export"), description=__doc__)
    ap.add_argument("--checkpoint", help="our checkpoint or a published DVT .pth.tar (default: the CIFAR-10 reference dvt_small_cifar)")
    ap.add_argument("--model", default=None, help="registered model name (published checkpoints: inferred when omitted)")
    ap.add_argument("--target", help=f"required: one of {sorted(TARGETS)} or 'all'")
    ap.add_argument("--precision", "--precisions", default="fp32", help="fp32, fp16 (coreml) or int8; comma-separated for several (default fp32)")
    ap.add_argument("--scheme", default=None, help="int8 scheme (see --list-targets; default: the recipe's, 'auto' picks by accuracy "
                    "and speed), or one per exit, comma-separated (e.g. dynamic,dynamic,static: an auto export's choices, pinned)")
    ap.add_argument("--calib-data", "--data", default=None, help=f"calibration/verification data spec ({', '.join(DATASETS)}); "
                    "default: the checkpoint's training data (--data: the same, as the other commands spell it)")
    ap.add_argument("--calib-n", type=int, default=None, help=f"calibration images for static int8 (default {ExportOptions.calib_n})")
    ap.add_argument("--verify-n", type=int, default=1000, help="held-out real images for verification and the default thresholds "
                                                              "(default 1000)")
    ap.add_argument("--out", default=None, help="bundle directory (one target/precision; an existing bundle, with or without a trailing /), or "
                         "the parent of one folder per bundle (several, a new path ending in /, or an existing folder that is not a "
                         "bundle); default bundles/")
    ap.add_argument("--force", action="store_true", help="replace an existing bundle")
    ap.add_argument("--int8-min-agreement", default=None, metavar="PCT",
                    help=f"int8: least top-1 agreement with PyTorch fp32 on real images, per exit (default {INT8_MIN_AGREEMENT:g}); "
                         "'none' records it without requiring it (e.g. random weights), every other check still runs")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity checks: the bundle is written unverified (its manifest says so: parity.passed false)")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling (only for files you trust)")
    ap.add_argument("--verbose", action="store_true", help="show the toolchains' own output (default: it goes to dvt-edge-export.log in the folder holding the bundle: "
                    "--out's parent, or --out itself where it names a folder of bundles)")
    ap.add_argument("--etrecord", action="store_true", help="ExecuTorch: write exitK.etrecord beside each .pte, for ExecuTorch's Inspector "
                    "to name the operators of an ETDump (profile --etdump-dir); other targets of the run ignore it")
    ap.add_argument("--list-targets", action="store_true", help="print the targets and exit")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (as TQDM_DISABLE=1)")
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    return ap


def _scheme_hint(jobs: list[tuple[str, str]], names: list[str]) -> str:
    """For a precision that is an int8 scheme of a target asked for (``--precision w8a8``), the flags that ask for it."""
    schemes = sorted({p for _, p in jobs if any(p in TARGETS[n].int8.get("schemes", ()) for n in names)})
    return "".join(f"; {s} is an int8 scheme: --precision int8 --scheme {s}" for s in schemes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_targets:
        return print(list_targets()) or 0
    if not args.target:
        ap.error(f"--target is required: one of {sorted(TARGETS)} or 'all' (or --list-targets)")
    try:
        set_torch_threads(args.threads)
        if not args.checkpoint:
            from dvt_edge.references import default_for_model

            ref = default_for_model(args.model)
            args.checkpoint = str(ref.checkpoint)
            print(f"no --checkpoint: exporting the reference model {ref.model} ({args.checkpoint})", file=sys.stderr)
        # "onnx,onnx" exported twice then failed on its own bundle; "int8," and "fp32, int8" named a blank precision
        names = sorted(TARGETS) if args.target == "all" else list(dict.fromkeys(get_target(n.strip()).name for n in args.target.split(",")
                                                                                if n.strip()))
        precisions = list(dict.fromkeys(p.strip() for p in args.precision.split(",") if p.strip()))
        if not names or not precisions:
            raise ValueError(f"--target and --precision name at least one each (e.g. --target onnx --precision int8), got "
                             f"--target {args.target!r} --precision {args.precision!r}")
        jobs = [(n, p) for n in names for p in precisions if p in TARGETS[n].precisions or len(names) == 1]
        if not jobs:
            valid = {n: list(TARGETS[n].precisions) for n in names}
            raise ValueError(f"no target supports precision(s) {precisions}; valid per target: {valid}")
        for n in names:  # a target left out of a multi-target run is said, not dropped silently
            if len(names) > 1 and (skip := [p for p in precisions if p not in TARGETS[n].precisions]):
                print(f"skipping {n} {','.join(skip)}: {n} supports {', '.join(TARGETS[n].precisions)}", file=sys.stderr)
        # --out is the parent (one folder per job, named like the default) with several jobs, or when it ends in "/"
        # or names an existing folder that is not a bundle (e.g. --out bundles/); else the bundle folder itself
        several = len(jobs) > 1
        if bad := sorted({f"{n} {p}" for n, p in jobs if p not in TARGETS[n].precisions}):  # before any export: not after minutes
            raise ValueError(f"unsupported precision(s): {', '.join(bad)}; valid per target: "
                             f"{ {n: list(TARGETS[n].precisions) for n in names} }{_scheme_hint(jobs, names)}")
        check_scheme(args.scheme, jobs, {"--calib-n": args.calib_n, "--int8-min-agreement": args.int8_min_agreement})
        if args.etrecord and "executorch" not in names:
            get_target(names[0]).check_etrecord(True)  # the error that names the fix
        if several and args.out and (Path(args.out) / "manifest.json").exists():
            raise ValueError(f"--out {args.out} is a bundle, and {len(jobs)} bundles were asked for: name the folder to hold them "
                             "(e.g. --out bundles/), or export one target and precision to replace this bundle")
        is_bundle = bool(args.out) and (Path(args.out) / "manifest.json").exists()  # "bundles/mine/" (tab completion) is that bundle
        as_parent = bool(args.out) and (several or (not is_bundle and (args.out.endswith(("/", os.sep)) or Path(args.out).is_dir())))
        base = ExportOptions(model_name=args.model, calib_data=args.calib_data, calib_n=ExportOptions.calib_n if args.calib_n is None else args.calib_n, verify_n=args.verify_n,
                             force=args.force, verify=not args.no_verify, trusted=args.trust_checkpoint, verbose=args.verbose,
                             int8_min_agreement=_agreement(args.int8_min_agreement),
                             command=join_args(["python", "-m", "dvt_edge.export", *(sys.argv[1:] if argv is None else argv)]))
        failed, model_name = 0, None
        if as_parent:
            from dvt_edge.checkpoint import load_checkpoint

            model_name = load_checkpoint(args.checkpoint, model=args.model, trusted=args.trust_checkpoint)[0].name
        for name, prec in jobs:
            out = None
            if args.out:
                out = str(Path(args.out) / f"{model_name}-{name}-{prec}") if as_parent else args.out
            try:
                opts = dataclasses.replace(base, out=out, scheme=args.scheme if prec == "int8" else None,  # --scheme: int8 jobs only
                                           etrecord=args.etrecord and TARGETS[name].backend == "executorch")
                with silenced_progress(args.no_progress):
                    r = export_bundle(args.checkpoint, name, prec, opts)
                print(r.report)
                print(f"wrote {r.path}\n")
            except Exception as e:  # noqa: BLE001  one failed job is a FAILED line; the other targets still run
                if not several:
                    raise
                failed += 1
                user = (ExportError, TargetUnavailable, CheckpointError, DataError)  # the user's to fix, not a toolchain's crash
                kind = "" if isinstance(e, user) else f"{type(e).__name__} in the toolchain: "
                print(f"FAILED {name} {prec}: {kind}{str(e).strip()[:2000]}\n", file=sys.stderr)
        return 1 if failed else 0
    except VerificationFailed as e:  # the work failed, as one job of several does (1); not a bad argument (2)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ExportError, TargetUnavailable, CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder made read-only meanwhile: the export cleaned up after itself
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
