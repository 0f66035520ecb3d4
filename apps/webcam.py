"""Webcam demo: a DVT bundle classifying camera (or video) frames with early exit, live.

    python -m apps.webcam                                       # the CIFAR-10 reference, camera 0, window
    python -m apps.webcam --bundle bundles/dvt_small_cifar-onnx-fp32
    python -m apps.webcam --bundle B --camera 1 --budget-ms 0.5 --device-name laptop
    python -m apps.webcam --bundle B --video in.mp4 --headless --record out.mp4 --stats stats.json

Each frame goes through ``bundle.preprocess`` (the manifest's channels, resize, center crop,
normalization) and the runtime's cascade (``bundle.predict``), which stops at the first exit
whose confidence passes its threshold. The overlay shows the answer, the exit taken (one
color per exit), the model and frame latency, the FPS, a histogram of the exits of the last
100 frames, the budget or deadline, and what the network sees: the crop region on the frame
and the model input upscaled in a corner.

Budgets and deadlines:

* ``--budget-ms X`` lets the runtime's budget controller pick thresholds from the device's
  calibration (``--device-name NAME`` loads ``<bundle>/calibration/NAME.json``, or ``DIR/NAME.json`` with
  ``--calibration-dir DIR``; by default this
  host's name, the name ``dvt_runtime.calibrate`` saves under). Without a
  calibration the demo runs with the bundle's default thresholds, says so ("UNCALIBRATED" in
  the overlay, a note on stderr with the calibrate command) and still counts the frames that
  overran the budget.
* ``--deadline-ms Y`` skips a later stage when its p90 latency would overrun the deadline.
  The p90s come from the calibration; without one they are profiled on this machine at start
  (``profiled`` in the overlay).

Keys (window mode): q / Esc quit, + / - raise / lower the budget or deadline by 10 %, space
pause. The window needs OpenCV's GUI build (``opencv-python``); the headless build
(``opencv-python-headless``) runs ``--headless`` only.

This module is the command line; the demo's other modules: ``session`` (the frame loop and its
stats), ``modes`` (budget / deadline), ``overlay`` (drawing), ``window`` (window and keys),
``sources`` (camera / video and bundle), ``common`` (the error, hints and formats they share).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a file (python apps/webcam.py): import the apps package
    _HERE = Path(__file__).resolve().parent  # from the repository root, not this folder's modules as top-level ones
    if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
        sys.path.pop(0)
    sys.path.insert(0, str(_HERE.parent))
    import apps  # noqa: F401  (the package its relative imports below resolve in; PEP 366)

    __package__ = "apps"

from dvt_runtime.calibration import CALIBRATION_DIR_HELP  # noqa: E402
from dvt_runtime.cli import Parser, command_name  # noqa: E402
from dvt_runtime.io import check_out_path  # noqa: E402
from dvt_runtime.runfacts import busy_run_note  # noqa: E402
from dvt_runtime.shift import shift_note  # noqa: E402

from .common import CALIBRATE_HINT, GUI_HINT, SOURCE_HINT, AppError, cv2, fmt_ms, output_problem  # noqa: E402
from .modes import Mode, profile_stages, setup_mode  # noqa: E402
from .overlay import EXIT_COLORS, Overlay, annotate, color_of, model_input_image  # noqa: E402
from .session import STATS_SCHEMA, run_session  # noqa: E402
from .sources import open_bundle, open_source, reference_bundle  # noqa: E402
from .window import check_gui, close_windows, handle_key  # noqa: E402

__all__ = ["AppError", "Mode", "Overlay", "annotate", "model_input_image", "open_source", "open_bundle", "reference_bundle", "run",
           "main", "parse_args", "setup_mode", "profile_stages", "handle_key", "color_of", "EXIT_COLORS", "CALIBRATE_HINT",
           "GUI_HINT", "SOURCE_HINT"]


def _is_file(path: str) -> bool:
    """Whether ``path`` names a file (a GStreamer pipeline or a URL longer than a file name can be is not one)."""
    try:
        return Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _same_file(a: str, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one existing file under two spellings (``Clip.mp4`` and ``clip.mp4`` on macOS, where
    resolve() keeps the case given)."""
    try:
        return b.exists() and os.path.samefile(Path(a).expanduser(), b)
    except OSError:
        return False


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = Parser(prog=command_name(f"python -m {__spec__.name if __spec__ else 'apps.webcam'}"),  # dvt_edge.apps in a wheel
                                 description="Live early-exit DVT classification of camera or video frames.",
                                 epilog="keys (window): q/Esc quit, +/- budget or deadline +-10%, space pause")
    ap.add_argument("--bundle", default=None,
                    help="exported bundle directory (python -m dvt_edge.export ...); default: the CIFAR-10 reference, exported once to the cache")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--camera", default=None, help="camera index (default 0), device path, URL or GStreamer pipeline")
    src.add_argument("--video", default=None, help="video file instead of a camera")
    lim = ap.add_mutually_exclusive_group()
    lim.add_argument("--budget-ms", type=float, default=None, help="latency budget: the controller picks thresholds (needs a calibration)")
    lim.add_argument("--deadline-ms", type=float, default=None, help="per-frame deadline, counted from the frame's preprocessing: skip later stages that would overrun it")
    ap.add_argument("--thresholds", default=None, help="per-exit confidence thresholds, e.g. 0.9,0.8 (default: calibration, else manifest)")
    ap.add_argument("--device-name", default=None, help="use <bundle>/calibration/NAME.json, or in --calibration-dir (python -m dvt_runtime.calibrate; default: this host's name, "
                                                            "calibrate's default)")
    ap.add_argument("--calibration-dir", default=None, metavar="DIR", help=CALIBRATION_DIR_HELP)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per stage (default 1)")
    ap.add_argument("--providers", default=None,
                    help="ONNX Runtime execution providers, comma-separated, e.g. CUDAExecutionProvider,CPUExecutionProvider")
    ap.add_argument("--headless", action="store_true", help="no window: process every frame (use with --record/--stats)")
    ap.add_argument("--record", default=None, metavar="OUT.mp4", help="write the annotated video (mp4v)")
    ap.add_argument("--stats", default=None, metavar="OUT.json", help="write per-frame predictions and latency statistics")
    ap.add_argument("--no-progress", action="store_true", help="accepted as every command takes it (the webcam draws no progress bar)")
    ap.add_argument("--snapshot", default=None, metavar="OUT.png", help="write one annotated frame as PNG (default: the last)")
    ap.add_argument("--snapshot-frame", type=int, default=None, metavar="K", help="0-based index of the frame for --snapshot")
    ap.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    ap.add_argument("--force", action="store_true", help="replace an existing --record or --snapshot file (an earlier --stats file is "
                                                          "replaced anyway)")
    args = ap.parse_args(argv)
    if args.thresholds is not None and args.budget_ms is not None:
        ap.error("--thresholds and --budget-ms exclude each other (the budget controller picks the thresholds)")
    if args.threads is not None and args.threads < 0:
        ap.error("--threads must be >= 0 (0 = the backend's default)")
    if args.threads == 0:
        args.threads = None
    from dvt_runtime.bundle import positive_ms

    for flag, v in (("--budget-ms", args.budget_ms), ("--deadline-ms", args.deadline_ms)):
        try:  # the runtime's check (NaN would pass a plain `v <= 0`)
            if v is not None:
                positive_ms(flag, v)
        except ValueError as e:
            ap.error(str(e))
    if args.snapshot_frame is not None and args.snapshot_frame < 0:  # it was accepted, then "not reached"
        ap.error(f"--snapshot-frame must be a 0-based frame index >= 0, got {args.snapshot_frame}")
    if args.max_frames is not None and args.max_frames < 1:
        ap.error(f"--max-frames must be >= 1 (omit it to run until the source ends), got {args.max_frames}")
    if "-" in (args.record, args.stats, args.snapshot):  # a file named "-" had been written where a pipe's reader waited
        ap.error("an output of -: standard output is not a file the webcam writes; name a file")
    outs = {flag: Path(v).expanduser().resolve() for flag, v in (("--record", args.record), ("--stats", args.stats),
                                                                  ("--snapshot", args.snapshot)) if v}
    if args.camera and _is_file(args.camera):  # OpenCV opens a file path as a camera: read it as the video it is (its end is no failure)
        args.video, args.camera = args.camera, None
    if args.video and (Path(args.video).expanduser().resolve() in outs.values() or any(_same_file(args.video, p) for p in outs.values())):
        ap.error(f"an output path is the input video {args.video}: writing it would destroy the video; choose another path")
    if len(set(outs.values())) < len(outs):
        ap.error(f"two outputs share one path ({', '.join(f'{k} {v}' for k, v in outs.items())}); give each its own")
    for flag, p in outs.items():
        problem = output_problem(flag, p)
        if problem:
            ap.error(problem)
        if flag != "--stats" and p.exists() and not args.force:  # a video or photo of the user's (named as they gave it)
            ap.error(f"{flag} {getattr(args, flag[2:])} exists: add --force to replace it, or name a new file")
        if flag == "--stats":  # a file that is not an earlier stats file (a bundle's manifest.json was replaced)
            try:
                check_out_path(p, flag, replaces=STATS_SCHEMA, example="stats.json")
            except ValueError as e:
                ap.error(str(e))
        setattr(args, flag[2:], str(p))  # written where it was checked (a quoted '~/x.png' too)
    return args


def run(args) -> dict:
    """Run the demo (window or ``args.headless``); returns the stats (also written to ``args.stats``)."""
    if cv2 is None:
        raise AppError("OpenCV is not installed: pip install opencv-python (window) or opencv-python-headless (--headless)")
    if args.snapshot_frame is not None and not args.snapshot:
        raise AppError("--snapshot-frame needs --snapshot OUT.png")
    thresholds = _parse_thresholds(args.thresholds)
    if not args.headless:
        check_gui()
    cap, source = open_source(args.camera, args.video)
    try:
        return run_session(args, cap, source, thresholds)
    finally:
        cap.release()
        if not args.headless:
            close_windows()


def _parse_thresholds(s: Optional[str]) -> Optional[list[Optional[float]]]:
    from dvt_runtime.checks import parse_thresholds

    try:
        return None if s is None else parse_thresholds(s)
    except ValueError as e:
        raise AppError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        stats = run(args)
    except AppError as e:
        print(f"webcam: error: {e}", file=sys.stderr)
        return e.code
    lat = stats["latency_ms"]
    counts = stats["exit_counts"]  # as predict says them
    line = (f"{stats['frames']} frames from {stats['source']}: exits 1-{len(counts)} answered {' / '.join(map(str, counts))}, predict p50 {fmt_ms(lat['predict']['p50'])} ms "
            f"p90 {fmt_ms(lat['predict']['p90'])} ms, frame p50 {fmt_ms(lat['frame']['p50'])} ms, {stats['fps'] or 0:.1f} FPS")
    if stats["budget"]:
        b = stats["budget"]
        metric = b.get("metric") or "mean"  # the calibration's (an uncalibrated budget falls back to fixed thresholds)
        since = b.get("since_frame") or 0  # changed with +/-: the final value is judged on the frames it ran under
        judged = b["predict_since"] if since else lat["predict"]
        if b["kind"] == "budget" and judged.get(metric) is not None:  # a budget is on a statistic: judged on it
            v = judged[metric]
            line += (f"; budget {fmt_ms(b['ms'])} ms ({metric}): predict {metric} {fmt_ms(v)} ms, "
                     + ("met" if v <= b["ms"] else f"over by {100 * (v / b['ms'] - 1):.0f}%"))
            if since:
                line += f" (on frames {since}-{stats['frames'] - 1}, since the budget was last changed)"
        else:  # a deadline is per frame (and a percentile the summary does not keep, counted per frame too)
            line += (f"; {b['kind']} {fmt_ms(b['ms'])} ms met on {b['hits']}/{stats['frames']} frames"
                     + (" (each against the value it ran under)" if since else ""))
    print(line)
    if note := shift_note(stats["shift"], "frames"):  # why a budget ran over, or the answers look unsure
        print(note, file=sys.stderr)
    if note := busy_run_note(stats["contention"], "classifying the frames"):  # why a budget ran over, on a shared CPU
        print(f"note: {note}", file=sys.stderr)
    if stats["uniform_frames"]:  # a covered lens had been labelled "deer 77%" as any object
        print(f"note: {stats['uniform_frames']} of the {stats['frames']} frames were blank (a lens cap, a wall): answered, but their "
              "answers are no object's (\"blank frame\" on screen; \"uniform\" in their records, which the stats keep for the latest "
              "10,000 frames)", file=sys.stderr)
    for k in ("record", "stats", "snapshot"):
        v = stats.get(k) if k != "stats" else args.stats
        if v:
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
