"""``dvt-runtime predict``: run a bundle's early-exit cascade on image files, on this device (torch-free).

    dvt-runtime predict --bundle B photo.jpg photos/                    # this device's calibration, else the manifest's thresholds
    dvt-runtime predict --bundle B photos/ --budget-ms 1.5 --out preds.json
    dvt-runtime predict --bundle B photos/ --deadline-ms 4 --profile profile.json

Per image: the class, its confidence, the exit that answered, and the milliseconds the cascade took
(preprocessing timed apart, after one untimed run of every stage); then how many images each exit
answered and the latency percentiles.
Folders are read recursively (``.jpg .jpeg .jfif .jpe .png .bmp .webp .tif .tiff .avif``), decoded as training decoded them
(``dvt_runtime.images``). An unreadable image (a truncated JPEG, or with simplejpeg installed one
whose coded data libjpeg finds corrupt) is listed and makes the exit code 1; the others are still answered. Bad arguments and bundles: exit code 2.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from dvt_runtime.answers import AnswerTally, RowSpool, budget_verdict, format_result, result_json, result_lines  # noqa: F401 (re-exported)
from dvt_runtime.backends import _EXTRA, PROVIDERS_HELP, BackendUnavailable, import_backend, install_hint, parse_providers
from dvt_runtime.calibration import CALIBRATION_DIR_HELP, bundle_args
from dvt_runtime.checks import NonFiniteOutput, check_thresholds, parse_thresholds, positive_ms, preprocessed_here, rough_thresholds
from dvt_runtime.cli import DocFormatter, Parser, command_name
from dvt_runtime.console import WINDOWS, progress, quote_arg, shown  # WINDOWS: its shells pass *.jpg to the command as it is typed
from dvt_runtime.device import contention_since, contention_snapshot, open_here, profiled_here, this_host
from dvt_runtime.images import IMAGE_EXTS, ImageError, can_check_jpegs, cv2_or_fail, read_image
from dvt_runtime.io import atomic_write, check_out_path, os_error_text
from dvt_runtime.npzsets import GRAY_FOR_COLOUR, all_gray, is_blank
from dvt_runtime.runfacts import budget_choice, busy_run_note, run_facts
from dvt_runtime.scoring import LABEL_SOURCES, folder_labels, mark
from dvt_runtime.shift import exit_shift, expected_shares, shift_note
from dvt_runtime.stats import percentile, sample_stats

if TYPE_CHECKING:
    from dvt_runtime.bundle import Bundle

__all__ = ["SCHEMA", "Interrupted", "image_files", "predict_files", "main"]

SCHEMA, SCHEMA_VERSION = "dvt-predictions", 1


def _walk(top: Path, skipped: Optional[dict] = None) -> list[Path]:
    """Image files under ``top``, linked folders followed (each real folder once), hidden ones skipped; sorted. Other
    (not hidden) files go into ``skipped`` (real path -> suffix)."""
    found, seen = [], set()
    for root, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTS]
        if skipped is not None:  # by real path: a folder given with its sub-folder counts each file once
            skipped.update({os.path.realpath(Path(root) / f): Path(f).suffix.lower() or "(none)" for f in files
                            if not f.startswith(".") and Path(f).suffix.lower() not in IMAGE_EXTS})
    return sorted(found)


def _expanded(paths: Sequence[str]) -> list[str]:
    """On Windows, each argument with a wildcard that is not itself a file is expanded here (sorted), as a POSIX shell
    would have; elsewhere the shell did it (a file named ``a*.jpg`` stays itself)."""
    if not WINDOWS:
        return list(paths)
    import glob

    return [m for p in paths for m in (sorted(glob.glob(p)) or [p] if glob.has_magic(p) and not os.path.exists(p) else [p])]


def image_files(paths: Sequence[str], skipped: Optional[collections.Counter] = None) -> list[Path]:
    """The files given (any name: decoding tells) and every image under the folders given (recursive, sorted); a file
    reached twice (given twice, or a folder and its sub-folder) is read once, where it first came. ``skipped``: counts
    the folders' other files by suffix (a HEIC photo, a GIF)."""
    out: list[Path] = []
    others: dict = {}
    for p in map(Path, _expanded(paths)):
        if p.is_dir():
            here: dict = {}
            try:
                found = _walk(p, here)
            except RecursionError:  # os.walk recurses (Python 3.11): 1,200 nested folders ended in a traceback
                raise ValueError(f"{p} nests folders too deeply to walk (hundreds of levels): pass the folders that hold the images") from None
            if not found:
                what = collections.Counter(here.values())
                other = f"; it holds {sum(what.values())} other file(s): " + ", ".join(f"{k}: {v}" for k, v in what.most_common(6)) if what else ""
                raise ValueError(f"{p} holds no images it reads ({', '.join(sorted(IMAGE_EXTS))}, in it or its sub-folders){other}"
                                 + (": convert HEIC photos to JPEG (e.g. with pillow-heif)" if what.keys() & {".heic", ".heif"} else ""))
            others.update(here)
            out += found
        elif p.exists() or p.is_symlink():  # a broken link is that file's error (read_image names its target), not the run's
            out.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder ({p.resolve()}): check the path")
    if skipped is not None:
        skipped.update(others.values())
    seen: set[str] = set()
    return [f for f in out if not ((real := os.path.realpath(f)) in seen or seen.add(real))]


def _budget_facts(bundle: "Bundle", budget_ms: Optional[float]) -> dict:
    """In budget mode: the calibration's statistic the budget is on and the share of it kept spare."""
    c = bundle.calibration
    on = budget_ms is not None and c is not None
    return {"budget_metric": c.metric if on else None, "budget_headroom": c.headroom if on else None}  # every mode: the same keys


def _thresholds_used(bundle: "Bundle", thresholds: Optional[list], budget_ms: Optional[float]) -> Optional[list]:
    """The per-exit thresholds every image ran with, one per exit (None: never stop there; the last exit always answers,
    so its entry is None), or None in budget mode (chosen per call)."""
    if budget_ms is not None:
        return None
    # the cascade's own checked array: one per exit, inf where it never stops, -inf on the last exit (it always answers)
    return [v if math.isfinite(v) else None for v in bundle._thresholds(thresholds).tolist()]


def _thresholds_source(bundle: "Bundle", thresholds: Optional[list], budget_ms: Optional[float], deadline_ms: Optional[float] = None) -> str:
    """Where the thresholds of this run come from, in words."""
    if thresholds is not None:
        return "given (--thresholds)"
    cal = f"the calibration of {bundle.calibration.device!r}" if bundle.calibration is not None else None
    if budget_ms is not None and bundle.calibration is not None:  # the budget's own statistic, and the share kept spare
        c = bundle.calibration
        return f"the budget controller on {cal} ({c.metric} budget" + (f", {100 * c.headroom:.3g}% kept spare)" if c.headroom else ")")
    last = "none: every image runs to the last exit" + (" or until the deadline stops it" if deadline_ms is not None else "")
    m = bundle.manifest
    rough = f" (chosen at export on only {n} images: rough; calibrate this device)" if (n := rough_thresholds(m.thresholds_source)) else ""
    return cal or (f"the manifest's{rough}" if m.thresholds is not None else last)




class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``args[0]``: ``"SIGTERM"``, as :func:`dvt_runtime.console.sigterm_as_interrupt` says) during
    :func:`predict_files`; ``partial``: its result for the images answered until then (``interrupted``, ``n_files``)."""

    def __init__(self, how: str, partial: dict):
        super().__init__(how)
        self.partial = partial


def predict_files(bundle: "Bundle", files: Sequence[Path], thresholds: Optional[list] = None, budget_ms: Optional[float] = None,
                  deadline_ms: Optional[float] = None, show_progress: bool = True, labels: Optional[dict[str, int]] = None,
                  rows: Optional[Union[list, RowSpool]] = None) -> dict:
    """Every file through ``bundle.predict`` one at a time, as a camera would feed it: the versioned result dict.
    ``labels`` (:func:`dvt_runtime.scoring.folder_labels`'): each answer marked right or not, and the result's ``accuracy``.
    ``rows``: where each image's answer goes, the result's ``images`` (default a new list; the CLI's :class:`RowSpool`
    keeps memory flat over any number of images)."""
    rows = [] if rows is None else rows
    tally, unreadable, failed = AnswerTally(bundle.num_exits), [], []
    every_gray = bundle.manifest.preprocess.channels != "gray"  # a colour model, and every image so far grayscale
    content = False  # an image that is not blank was read
    strict = can_check_jpegs()  # a JPEG libjpeg finds corrupt decodes to wrong pixels: listed, not answered
    stopped: Optional[KeyboardInterrupt] = None
    spilled = ""  # why the answers went on in memory (the spool's disk full), said in the notes
    snap = contention_snapshot()  # a busy CPU makes every latency below this host's under that load
    try:  # Ctrl-C or SIGTERM: the images answered so far are kept (a job stopped after hours had lost them all)
        for f in progress(files, desc="predict", unit="image", enabled=show_progress):
            try:
                img = read_image(f, strict=strict)
            except ImageError as e:
                unreadable.append({"file": str(f), "error": str(e)})
                continue
            t0 = time.perf_counter()
            x = bundle.preprocess(img)[0]  # (C, H, W) float32: one image
            pre_ms = (time.perf_counter() - t0) * 1e3
            try:
                with preprocessed_here():  # an image whose pixels normalize into [0, 1] is not unnormalized
                    if not len(tally):  # one untimed run of every stage first: the first call's set-up is no image's latency
                        bundle.run_exits(x[None])
                    # a deadline counts the image's preprocessing, as predict of the uint8 image would
                    choice = budget_choice(bundle, budget_ms) if budget_ms is not None and bundle.calibration is not None else None
                    shares = expected_shares(bundle, thresholds, budget_ms, deadline_ms, choice)  # before the call: the row it runs
                    t0 = time.perf_counter()
                    p = bundle.predict(x, thresholds=thresholds, budget_ms=budget_ms, deadline_ms=deadline_ms, spent_ms=pre_ms)
                    call_ms = (time.perf_counter() - t0) * 1e3  # the stages and predict's own work: what a budget is priced at
            except NonFiniteOutput as e:  # this image's answer would be meaningless: listed, and the others still answered
                failed.append({"file": str(f), "error": str(e)})
                continue
            small = min(img.shape[:2])  # an image far smaller than the model's input is answered, but from few real pixels
            tiny = {"upscaled": round(bundle.manifest.preprocess.resize / small, 1)} if 4 * small <= bundle.manifest.preprocess.resize else {}
            few = img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)]  # (<= ~256, <= ~256[, C]): enough to judge
            blank = {"uniform": True} if is_blank(few) else {}  # a lens cap, a wall: its answer is no object's
            every_gray = every_gray and (bool(blank) or all_gray([few]))  # a blank frame is neither gray nor colour
            content = content or not blank
            ran = {"budget_thresholds": choice["thresholds"], "speed_scale": choice["speed_scale"], "mix_scale": choice["mix_scale"]} if choice else {}
            row = {"file": str(f), **p.to_dict(), "preprocess_ms": pre_ms, "predict_ms": call_ms, **tiny, **blank, **ran}
            if labels is not None:
                mark(row, labels, bundle.manifest.classes)
            tally.add(row, shares)
            try:
                rows.append(row)  # an image interrupted before this is no image's
            except OSError as e:  # the spool's disk is full (or gone): the answers so far and on are kept in memory
                rows, spilled = _in_memory(rows, row, e, len(tally))
    except KeyboardInterrupt as e:
        stopped = e
        tally.truncate(len(rows))
    out = _summary(bundle, tally, rows, thresholds, budget_ms, deadline_ms, contention_since(snap), every_gray and content)
    out["notes"] += [spilled] if spilled else []
    out.update(unreadable=unreadable, failed=failed)  # failed: an exit answered NaN or infinite logits
    verdict = budget_verdict(out, tally.predict_ms)  # from the tally: no pass over the spooled answers
    out["budget_met"] = None if verdict is None else verdict[1]  # the summary's "within" / "OVER", for a monitor
    out["interrupted"] = None if stopped is None else str(stopped) or "Ctrl-C"  # the images after it were not read
    out["n_files"] = len(files)  # given: answered, unreadable, failed and (interrupted) not reached
    if labels is not None:
        out["accuracy"] = tally.score(bundle.manifest.classes, len(unreadable) + len(failed))
    if stopped is not None:
        raise Interrupted(str(stopped), out)
    return out


def _in_memory(rows, row: dict, e: OSError, n: int) -> tuple[list, str]:
    """The answers spooled so far, and ``row`` (the ``n``-th), as a list, and why (the spool could not take ``row``: ``e``)."""
    if isinstance(rows, list):  # memory was already where they were
        raise e
    why = f"the answers' spool {rows.path} could not be written ({os_error_text(e)}): the answers from image {n} on were kept in memory"
    return [*rows, row], why


def _summary(bundle: "Bundle", tally: AnswerTally, rows, thresholds: Optional[list], budget_ms: Optional[float],
             deadline_ms: Optional[float], contention: dict, gray: bool) -> dict:
    """The result's summary of the answers ``tally`` counted (``rows``: the answers themselves, the result's ``images``)."""
    counts = tally.exit_counts()
    busy = busy_run_note(contention, "predicting")
    m, n = bundle.manifest, len(tally)
    cascade, pre = np.asarray(tally.total_ms), np.asarray(tally.preprocess_ms)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"path": str(bundle.path), "model": m.model, "target": m.target, "precision": m.precision},
        "mode": "deadline" if deadline_ms is not None else "budget" if budget_ms is not None else "thresholds",
        "budget_ms": budget_ms, "deadline_ms": deadline_ms, **_budget_facts(bundle, budget_ms), "thresholds_from": _thresholds_source(bundle, thresholds, budget_ms, deadline_ms),
        "thresholds": _thresholds_used(bundle, thresholds, budget_ms), "device_name": bundle.device_name, "threads": bundle.threads,
        "providers": bundle.providers,  # what ONNX Runtime started (a CUDA it could not load falls back to the CPU); None elsewhere
        "n_images": n, "exit_counts": counts,  # exits numbered from 1 in rows; counts[k] is exit k + 1
        # images whose preprocessing and stages overran the deadline (exit 1 always runs: a deadline below it is missed)
        "deadline_missed": int(np.sum(pre + cascade > deadline_ms)) if deadline_ms is not None else None,
        "latency_ms": {"cascade": sample_stats(cascade, keep_samples=False) if n else None,
                       "preprocess": sample_stats(pre, keep_samples=False) if n else None},
        "confidence": {"mean": float(np.mean(tally.confidence)), "p10": percentile(tally.confidence, 10)} if n else None,
        # where the images stopped against where the calibration's did under the same thresholds (None: no calibration ran)
        "shift": exit_shift(counts, tally.expected_shares(), bundle),
        "contention": contention,  # how much the run competed for a CPU: wait_pct, steal_pct (None: the OS does not say)
        # what the images as a whole, and the run, say (on stderr too)
        "notes": ([GRAY_FOR_COLOUR] if gray else []) + ([busy] if busy else []),
        **run_facts(bundle),  # which bundle bytes, calibration file and machine ran: for an audit from the file alone
        "images": rows,
    }


def _parser() -> argparse.ArgumentParser:
    ap = Parser(prog=command_name("python -m dvt_runtime.predict"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("images", nargs="+", help="image files and folders (read recursively)")
    ap.add_argument("--bundle", required=True, help="bundle directory (manifest.json + one artifact per exit)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--thresholds", default=None, help="per-exit confidences, e.g. 0.9,0.8 ('none' or '-': never stop there)")
    mode.add_argument("--budget-ms", type=float, default=None, help="latency budget on this device's calibration's metric (the mean "
                                                                      "unless calibrated with --metric p90 or the like)")
    ap.add_argument("--deadline-ms", type=float, default=None,
                    help="per-image deadline, counted from the image's preprocessing: a later stage is skipped when its p90 would "
                         "overrun (p90s from the calibration or --profile)")
    ap.add_argument("--profile", default=None, help="with --deadline-ms: per-stage p90s from this profile JSON (dvt-runtime profile --out)")
    ap.add_argument("--device-name", default=None, help="use calibration/<name>.json (in --calibration-dir if given; default: DVT_DEVICE_NAME if set, else this host's name)")
    ap.add_argument("--calibration-dir", default=None, metavar="DIR", help=CALIBRATION_DIR_HELP)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1; 0: the backend's default, every core)")
    ap.add_argument("--providers", default=None, help=PROVIDERS_HELP)
    ap.add_argument("--out", default=None, help="also write every answer and the summary as JSON (schema dvt-predictions); "
                    "'-': that JSON on stdout, the table on stderr")
    ap.add_argument("--labels", default=None, choices=LABEL_SOURCES,
                    help="score the answers: 'folders', each image's class is the name of its folder (DIR/<class>/*.jpg); "
                         "prints the accuracy (Wilson 95%% interval), per exit and per class, and marks each answer correct or not")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _check_mode(bundle, args: argparse.Namespace, why: Sequence[str] = ()) -> None:
    """What --budget-ms and --deadline-ms need, said in commands (the API's own errors speak Python); ``why``: opening
    the bundle's warnings (a calibration there, but stale: its reason had been left out)."""
    b = quote_arg(str(args.bundle))  # commands the user pastes: a path with spaces, quotes or $ stays one argument
    if args.budget_ms is not None and bundle.calibration is None:
        name = f" --device-name {quote_arg(args.device_name)}" if args.device_name else ""
        path = bundle.calibration_path(bundle.device_name or this_host())
        reason = next((w for w in why if str(path) in w), None) if path.exists() else None
        raise ValueError(f"--budget-ms needs a calibration of this device (none usable at "
                         f"{path}{f': {reason}' if reason else ''}): "
                         f"dvt-runtime calibrate {bundle_args(bundle.path, bundle.calibration_dir)} --data VAL.npz --budget-ms "
                         f"{args.budget_ms:g}{name} (or pass --device-name "
                         "NAME here, if it was made under another name)")
    if args.deadline_ms is not None and bundle.stage_p90_ms is None:
        raise ValueError(f"--deadline-ms needs each stage's p90 latency: pass --profile PROFILE.json (dvt-runtime profile --bundle {b} "
                         "--out PROFILE.json), or calibrate this device (dvt-runtime calibrate)")


def _with_backend(err: ImageError, bundle_dir: str) -> ImageError:
    """OpenCV missing: the bundle's backend library too when it is missing, in one pip command (a fresh device had met
    one, installed it, then met the other)."""
    from dvt_runtime.manifest import Manifest

    try:
        backend = Manifest.load(bundle_dir, verify=False).backend
        import_backend(backend)
    except BackendUnavailable as e:
        if backend == "onnxruntime" and "could not be imported" in str(e) and "needs OpenCV:" in str(err):  # both plainly missing
            # (ExecuTorch's own message carries torch's CPU index: kept whole)
            return ImageError(f"reading image files needs OpenCV, and this {backend} bundle needs its library: "
                              f"{install_hint(_EXTRA[backend] + ',opencv')}")
        return ImageError(f"{err}; and {e}")
    except Exception:  # no manifest to read here: opening the bundle says why, once OpenCV is installed
        pass
    return err


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.ExitStack() as held:  # the answers' spool is removed however predict ends
        return _main(args, held)


def _main(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    try:
        from dvt_runtime.latency import load_profile_arg

        if args.profile and args.deadline_ms is None:
            raise ValueError("--profile gives the p90s --deadline-ms needs: pass --deadline-ms too (or drop --profile)")
        for flag in ("budget_ms", "deadline_ms"):
            if getattr(args, flag) is not None:
                positive_ms(f"--{flag.replace('_', '-')}", getattr(args, flag))
        if sys.stdout is None and args.out in (None, "-"):  # a service started with stdout closed: the answers went nowhere, exit 0
            raise ValueError("standard output is closed: the answers would be lost; pass --out FILE (or open stdout)")
        out = check_out_path(args.out, replaces=SCHEMA, example="predictions.json") if args.out and args.out != "-" else None
        thresholds = parse_thresholds(args.thresholds) if args.thresholds is not None else None
        providers = parse_providers(args.providers)  # a malformed option before the folders are walked
        skipped: collections.Counter = collections.Counter()
        files = image_files(args.images, skipped)
        if skipped:  # the training loader says so too: a folder of phone photos lost its HEIC ones unsaid
            print(f"note: skipped {sum(skipped.values())} file(s) in the folders that are not images it reads ("
                  + ", ".join(f"{k}: {v}" for k, v in skipped.most_common()) + f"; it reads {', '.join(sorted(IMAGE_EXTS))})"
                  + ("; convert HEIC photos to JPEG to use them (e.g. with pillow-heif)" if skipped.keys() & {".heic", ".heif"} else ""),
                  file=sys.stderr)
        try:
            cv2_or_fail()  # once, not "unreadable" for every file
        except ImageError as e:
            raise _with_backend(e, args.bundle) from None
        with warnings.catch_warnings(record=True) as said:  # held: a budget with no calibration is an error, said alone
            bundle = open_here(args.bundle, args.device_name, threads=args.threads, providers=providers,
                               calibration_dir=args.calibration_dir)
        if not (args.budget_ms is not None and bundle.calibration is None):  # else "the manifest's thresholds run", then refused
            for w in said:  # through the filters again (a user's -W ignore holds)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if args.profile:
            prof = load_profile_arg(args.profile)
            bundle.use_profile(prof)
            if not profiled_here(prof):
                print(f"note: {args.profile} was not measured on this host ({(prof.device or {}).get('device_name')!r}): deadlines are "
                      "judged on its latencies, not this host's", file=sys.stderr)
        if thresholds is not None:  # refused before any image, not after the first
            check_thresholds(thresholds, bundle.num_exits, "--thresholds")
        _check_mode(bundle, args, [str(w.message) for w in said])
        labels = folder_labels(files, bundle.manifest.classes) if args.labels else None  # refused before any image runs
        spool = _spool(out, held)
        try:
            r, stopped = predict_files(bundle, files, thresholds, args.budget_ms, args.deadline_ms, show_progress=not args.no_progress,
                                       labels=labels, rows=spool), None
        except Interrupted as e:  # the answers so far are written and summed up, then it ends as an interrupt does
            r, stopped = e.partial, e
    except (ValueError, OSError, BackendUnavailable) as e:  # ManifestError, InputError, CalibrationError are ValueErrors
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    return _report(args, r, out, said, skipped, len(files), stopped)


def _spool(out: Optional[Path], held: contextlib.ExitStack) -> Union[RowSpool, list]:
    """Where the answers go as they come: a spool on disk beside ``--out`` (where its folder is there), else in the
    system's temporary folder (a million images' rows had been held in memory, 4.8 KB each); in memory where neither
    takes a file (the result is written or printed at the end either way)."""
    for folder in ([out.parent] if out is not None and out.parent.is_dir() else []) + [None]:
        try:
            return held.enter_context(RowSpool(folder))
        except OSError:
            continue
    return []


def _report(args: argparse.Namespace, r: dict, out: Optional[Path], said: list, skipped: collections.Counter, n_files: int,
            stopped: Optional[Interrupted]) -> int:
    """The result written (``--out``), printed and summed up; the exit code (or the interrupt raised again)."""
    r["skipped_files"] = dict(skipped.most_common())  # by suffix: files in the folders given that are not images it reads
    own = list(r["notes"])  # the images' (said below); open's warnings were said as warnings
    r["notes"] = [str(w.message) for w in said] + own  # a stale calibration, another thread count: in the file too
    saved, unsaved = None, None
    if out is not None:  # before anything is printed: a reader gone from stdout (| head) must not lose the file
        try:
            saved = atomic_write(out, result_json(r))  # the rows streamed from the spool
        except OSError as e:  # found writable before the run (os.access), refused now: a read-only or pseudo filesystem
            unsaved = e
    if unsaved is not None:  # said first: a reader gone from stdout would hide it behind exit 141
        print(f"error: {os_error_text(unsaved)}; the predictions (printed next) were not saved: give --out a path you can write",
              file=sys.stderr)
    table = sys.stderr if args.out == "-" else sys.stdout
    for line in result_lines(r):  # a line at a time: the table of a million images is not built in memory
        print(line, file=table)
    for note in own:
        print(f"note: {note}", file=sys.stderr)
    if note := shift_note(r["shift"]):  # after the summary it explains (an OVER, a slow mean)
        print(note, file=sys.stderr)
    if args.out == "-":  # for a pipeline: the JSON alone on stdout (it had written a file named "-")
        for piece in result_json(r):
            sys.stdout.write(piece)
    if unsaved is not None:
        return 2
    if saved is not None:
        print(f"wrote {shown(saved)}")  # a name with control characters is shown escaped, as in the table
    if stopped is not None:  # run_cli says how it was stopped and exits 130 or 143
        print(f"note: stopped after answering {r['n_images']} of the {n_files} images given" + (f"; the answers so far are in {shown(saved)}"
              if saved is not None else ""), file=sys.stderr)
        raise KeyboardInterrupt(*stopped.args)
    return 1 if r["unreadable"] or r["failed"] else 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
