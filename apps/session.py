"""One run of the webcam demo over a source's frames: open the bundle, decide the mode, warm up,
then the frame loop (preprocess, the runtime's cascade, the overlay, the record / snapshot, the
window), and the stats it ends with."""

from __future__ import annotations

import datetime
import math
import statistics
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dvt_runtime.checks import check_thresholds
from dvt_runtime.console import sigterm_as_interrupt
from dvt_runtime.device import contention_since, contention_snapshot
from dvt_runtime.npzsets import is_blank
from dvt_runtime.runfacts import run_facts
from dvt_runtime.shift import exit_shift, expected_shares

from . import window
from .common import AppError, cv2, warn
from .modes import Mode, deadline_fits, setup_mode
from .overlay import Overlay, annotate, drawn_scale
from .sources import open_bundle, read_first_frame

__all__ = ["FrameLoop", "Tally", "build_stats", "latency_summary", "run_session"]

WARMUP_RUNS = 3  # the first runs of a session are slow
MAX_MISSED_READS = 10  # a camera may drop a frame now and then; a video may hold a few it cannot decode
KEEP_FRAMES = 10_000  # per-frame records the stats keep (the latest); counts and latency summaries cover every frame
STATS_SCHEMA = "dvt-webcam-stats/1"  # --stats replaces only an earlier stats file
SUMMARY_KEYS = ("mean", "p50", "p90", "p99", "max")  # of sample_stats, in the stats JSON


def run_session(args, cap, source: str, thresholds: Optional[list]) -> dict:
    """Classify the frames of ``cap`` as ``args`` asks; returns the stats (also written to ``args.stats``)."""
    frame = read_first_frame(cap, source, is_video=args.video is not None, retries=0 if args.video is not None else MAX_MISSED_READS)
    bundle = open_bundle(args)
    mode = prepare_mode(args, bundle, thresholds)
    pre_ms = warm_up(bundle, frame, thresholds)
    deadline_fits(bundle, mode, pre_ms)  # a deadline counts the frames' preprocessing: a 720p frame's alone can overrun it
    fps_in = source_fps(cap)
    writer = open_writer(args.record, frame, fps_in)
    loop = FrameLoop(args, cap, bundle, mode, Overlay.for_bundle(bundle, mode), writer, fps_in)
    loop.run(frame)
    stats = build_stats(args, source, frame, bundle, mode, thresholds, loop)
    if args.stats:  # atomic: an interrupted write never leaves half a file
        from dvt_runtime.io import atomic_write_json

        try:
            atomic_write_json(args.stats, stats)  # its folder made there too: an error names the path either way
        except OSError as e:
            raise AppError(f"--stats: {e.strerror or e}") from None  # "cannot write PATH: why" (atomic_write names the path)
    return stats


def prepare_mode(args, bundle, thresholds: Optional[list]) -> Mode:
    """Check ``--thresholds`` against the bundle and set up the budget / deadline mode (notes on stderr)."""
    try:
        if thresholds is not None:  # predict's check and words ("need 2 (or 3) thresholds for 3 exits")
            check_thresholds(thresholds, bundle.num_exits, "--thresholds")
        mode = setup_mode(bundle, args.budget_ms, args.deadline_ms, thresholds)
    except ValueError as e:
        raise AppError(str(e)) from None
    if mode.note:
        warn(mode.note)
    return mode


def model_input(bundle, frame):
    """The frame preprocessed for the bundle; a frame the model cannot take (16-bit depth or IR) is an AppError."""
    try:
        return bundle.preprocess(frame)
    except ValueError as e:
        raise AppError(f"cannot classify a {frame.dtype} frame of shape {frame.shape} ({e}): the demo takes 8-bit gray, "
                       "BGR or BGRA frames; convert a 16-bit depth or IR stream to 8 bits first") from None


def warm_up(bundle, frame, thresholds: Optional[list], runs: int = WARMUP_RUNS) -> float:
    """A few runs on the first frame, then a fresh budget controller; returns the frame's preprocessing ms (median)."""
    pre = []
    for _ in range(runs):
        t0 = time.perf_counter()
        x = model_input(bundle, frame)
        pre.append((time.perf_counter() - t0) * 1e3)
        bundle.predict(x, thresholds=thresholds)
    bundle.reset_budget()
    return float(statistics.median(pre))


def source_fps(cap) -> float:
    """The source's frame rate when it reports a plausible one, else 30."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and 1 <= fps <= 240 else 30.0


def open_writer(path, frame, fps: float):
    """A video writer (mp4v) for ``--record``, frames of the annotated ``frame``'s size; None without ``--record``."""
    if not path:
        return None
    k = drawn_scale(*frame.shape[:2])  # a small frame is annotated enlarged: a writer of the source's size drops every frame
    h, w = frame.shape[0] * k, frame.shape[1] * k
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise AppError(f"cannot write video {path} with the mp4v codec; try a .mp4 or .avi path in a writable folder")
    return writer


def write_png(path, img) -> str:
    from dvt_runtime.io import atomic_write

    try:  # OpenCV 5 raises where 4 returned False
        ok, png = cv2.imencode(Path(path).suffix or ".png", img)  # encoded here: imwrite fails on Windows' non-ASCII paths
        if ok:
            atomic_write(path, png.tobytes())
    except (OSError, cv2.error):
        ok = False
    if not ok:
        raise AppError(f"cannot write snapshot {path} (use a .png path in a writable folder)")
    return str(path)


@dataclass
class Tally:
    """What the session saw, frame by frame: predictions (the latest ``KEEP_FRAMES``: a kiosk's day is millions of frames,
    and every record was kept, 0.84 KB a frame), latencies (8 bytes a frame each), exits, frames within the budget / deadline."""

    num_exits: int
    predictions: deque = field(default_factory=lambda: deque(maxlen=KEEP_FRAMES))
    predict_ms: array = field(default_factory=lambda: array("d"))
    frame_ms: array = field(default_factory=lambda: array("d"))
    exit_counts: list[int] = field(init=False)
    uniform_frames: int = 0  # blank frames (a lens cap, a wall: dvt_runtime.npzsets.is_blank), answered but no object's
    hits: int = 0  # frames whose predict time (a deadline's: preprocessing and predict) met the budget / deadline
    misses: int = 0
    frames: int = 0
    limit_since: int = 0  # the first frame of the latest run of frames under one budget / deadline (changed with +/-)
    last_limit: Optional[float] = None
    expected_sum: Optional[list] = None  # summed over frames: where the calibration's images stopped under each frame's thresholds
    expected_known: bool = True  # every frame ran thresholds a calibration measured
    _pending: Optional[Sequence[float]] = field(default=None, repr=False)  # the frame being predicted's expected shares

    def __post_init__(self) -> None:
        self.exit_counts = [0] * self.num_exits

    def expect(self, shares: Optional[Sequence[float]]) -> None:
        """The next frame's expected exit shares (:func:`dvt_runtime.shift.expected_shares`; None: unknown), counted
        when :meth:`add` counts the frame (an interrupt between the two counts neither)."""
        self._pending = shares

    def _count_expected(self) -> None:
        shares, self._pending = self._pending, None
        if shares is None or len(shares) != self.num_exits:
            self.expected_known = False
        elif self.expected_known:
            self.expected_sum = [a + float(b) for a, b in zip(self.expected_sum or [0.0] * self.num_exits, shares)]

    def expected_fractions(self) -> Optional[list]:
        """Mean expected exit shares over the frames, or None where a frame's were unknown."""
        if not self.expected_known or self.expected_sum is None or not self.frames:
            return None
        return [v / self.frames for v in self.expected_sum]

    def add(self, pred, predict_ms: float, frame_ms: float, limit_ms: Optional[float], counted_ms: Optional[float] = None,
            preprocess_ms: Optional[float] = None, uniform: bool = False) -> None:
        """One frame; ``counted_ms`` (default ``predict_ms``) is what its budget or deadline judges (a deadline: its
        preprocessing too), recorded with it."""
        self.predictions.append({
            "frame": self.frames, "label": int(pred.label), "class": str(pred.class_name),
            "class_name": str(pred.class_name), "confidence": float(pred.confidence),
            "exit": int(pred.exit) + 1, "total_ms": float(pred.total_ms), "stage_ms": [float(v) for v in pred.stage_ms],
            "predict_ms": predict_ms, "preprocess_ms": preprocess_ms, "frame_ms": frame_ms, "deadline_skipped": bool(pred.deadline_skipped),
            "limit_ms": limit_ms, "counted_ms": predict_ms if counted_ms is None else counted_ms, **({"uniform": True} if uniform else {})})
        self.uniform_frames += bool(uniform)
        if limit_ms != self.last_limit:
            self.limit_since, self.last_limit = self.frames, limit_ms
        self._count_expected()
        self.frames += 1
        self.predict_ms.append(predict_ms)
        self.frame_ms.append(frame_ms)
        self.exit_counts[pred.exit] += 1
        if limit_ms is not None:
            if (predict_ms if counted_ms is None else counted_ms) > limit_ms:
                self.misses += 1
            else:
                self.hits += 1


def cut_short(cap, failed: int) -> Optional[str]:
    """Why a video stopped before the frames its header counts (damaged or truncated: it had ended unsaid, exit 0);
    None at its end (a header's count may be an estimate off by a frame or two)."""
    count, pos = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_POS_FRAMES)
    if not (math.isfinite(count) and math.isfinite(pos)) or count <= 0 or count - pos <= max(2.0, 0.02 * count):
        return None
    return f"{failed} reads failed at frame {int(pos)} of the {int(count)} its header counts: damaged or truncated from there"


class FrameLoop:
    """Read, classify, draw, record and (in a window) show frames until the source ends, ``--max-frames``,
    q / Esc, a closed window or Ctrl-C."""

    def __init__(self, args, cap, bundle, mode: Mode, overlay: Overlay, writer=None, fps_in: float = 30.0):
        self.args, self.cap, self.bundle, self.mode, self.overlay = args, cap, bundle, mode, overlay
        self.writer, self.fps_in = writer, fps_in
        self.tally = Tally(bundle.num_exits)
        self.snapshot: Optional[str] = None  # the PNG written for --snapshot
        self.last_img = None
        self.interrupted = False
        self.wall_s = 0.0  # not counting pauses
        self.undecodable = 0  # video frames OpenCV could not decode, skipped (the frames after them are read)
        self.source_stopped: Optional[str] = None  # why a camera stopped delivering frames (a video's end is no failure)
        self.contention: dict = {}  # how much the loop competed for a CPU (device.contention_since), set when it ends

    def run(self, frame) -> None:
        """The loop, from ``frame`` (already read) on; then the release of the writer and the default snapshot."""
        t_start, paused_s = time.perf_counter(), 0.0
        snap = contention_snapshot()  # a busy CPU makes the frames' latencies this host's under that load
        try:  # SIGTERM (timeout, systemd, docker stop) ends the run as Ctrl-C does: the stats written, the recording closed
            with sigterm_as_interrupt():
                while self.args.max_frames is None or self.tally.frames < self.args.max_frames:
                    if self.tally.frames > 0:
                        frame = self._read()
                        if frame is None:
                            break
                    go_on, paused = self._step(frame)
                    paused_s += paused
                    if not go_on:
                        break
        except KeyboardInterrupt:
            self.interrupted = True
            warn("interrupted: writing what was processed so far")
        finally:
            if self.writer is not None:
                self.writer.release()
        self.wall_s = time.perf_counter() - t_start - paused_s
        self.contention = contention_since(snap)
        if self.undecodable:
            warn(f"{self.undecodable} frame(s) of the video could not be decoded: skipped, the frames after them were read")
        if self.source_stopped:  # an unplugged camera had ended the run as if it were done, exit status 0, nothing said
            warn(f"the source stopped after {self.tally.frames} frame(s) ({self.source_stopped}): the stats cover those")
        self._final_snapshot()

    def _read(self):
        """The next frame, or None at the end: a camera gets a few retries for dropped frames, a video reads on past
        frames it cannot decode (counted once a later frame is read; a failed read ended the video there)."""
        misses = 0
        while True:
            try:
                ok, frame = self.cap.read()
            except cv2.error as e:  # a driver failure mid-run: said, and the stats still written
                self.source_stopped = f"read failed: {str(e).strip().splitlines()[-1]}"
                return None
            if ok and frame is not None:
                if self.args.video is not None:
                    self.undecodable += misses
                return frame
            if misses >= MAX_MISSED_READS:
                self.source_stopped = cut_short(self.cap, misses + 1) if self.args.video is not None else \
                    f"no frame in {MAX_MISSED_READS + 1} reads"
                return None
            misses += 1
            if self.args.video is None:
                time.sleep(0.02)

    def _step(self, frame) -> tuple[bool, float]:
        """One frame: classify, draw, count and record it; in a window, show it and apply the keys.
        Returns (go on?, seconds spent paused)."""
        t0 = time.perf_counter()
        x = model_input(self.bundle, frame)
        t1 = time.perf_counter()
        pre_ms = (t1 - t0) * 1e3
        pred = self._predict(x, pre_ms)
        t2 = time.perf_counter()
        p_ms = (t2 - t1) * 1e3
        # after the timed call (it had counted in each frame's predict_ms and budget): the frame's time holds it; judged on
        # at most ~64 rows (predict's 256 took 11 ms of a 640x480 frame): a blank frame gets no object's label unmarked
        self.overlay.uniform = is_blank(frame[:: max(1, frame.shape[0] // 64), :: max(1, frame.shape[1] // 64)])
        self.overlay.record(pred, t2)
        img = annotate(frame, pred, self.overlay, model_input=x, model_ms=p_ms)
        f_ms = (time.perf_counter() - t0) * 1e3
        self.overlay.add_frame_ms(f_ms)
        self._keep(img, pred, p_ms, f_ms, pre_ms)
        if self.args.headless:
            return True, 0.0
        redraw = lambda: self.overlay.draw(frame, pred, model_input=x, model_ms=p_ms)
        return window.present(img, self.mode, self.overlay, self._wait_ms(t0), redraw)

    def _predict(self, x, pre_ms: float):
        kw = self.mode.predict_kwargs(pre_ms)
        try:  # a deadline counts the frame's preprocessing, as the runtime's own uint8 path does
            self.tally.expect(expected_shares(self.bundle, kw.get("thresholds"), kw.get("budget_ms"), kw.get("deadline_ms")))
            pred = self.bundle.predict(x, **kw)
        except (ValueError, ImportError) as e:
            raise AppError(f"prediction failed in {self.mode.kind} mode: {e}") from None
        return pred[0] if isinstance(pred, list) else pred  # a (1, C, H, W) batch of one

    def _keep(self, img, pred, p_ms: float, f_ms: float, pre_ms: float) -> None:
        """Count the frame, write it to the record and, when it is ``--snapshot-frame``, to the snapshot."""
        index = self.tally.frames
        self.tally.add(pred, p_ms, f_ms, self.mode.ms, p_ms + pre_ms if self.mode.kind == "deadline" else p_ms, pre_ms,
                       self.overlay.uniform)
        if self.writer is not None:
            self.writer.write(img)
        if self.args.snapshot and self.args.snapshot_frame is not None and index == self.args.snapshot_frame:
            self.snapshot = write_png(self.args.snapshot, img)
        self.last_img = img

    def _wait_ms(self, t0: float) -> int:
        """How long the window waits for a key: a video file plays at its own frame rate (headless runs flat out)."""
        if self.args.video is None:
            return 1
        return max(1, int(1000.0 / self.fps_in - (time.perf_counter() - t0) * 1e3))

    def _final_snapshot(self) -> None:
        """Without ``--snapshot-frame`` the snapshot is the last frame; say so when the chosen one was not reached."""
        if not self.args.snapshot:
            return
        if self.args.snapshot_frame is None and self.last_img is not None:
            self.snapshot = write_png(self.args.snapshot, self.last_img)
        elif self.snapshot is None:
            left = f"; {self.args.snapshot} is an earlier run's, left as it was" if Path(self.args.snapshot).exists() else ""
            warn(f"--snapshot-frame {self.args.snapshot_frame} was not reached ({self.tally.frames} frames processed): "
                 f"no snapshot written{left}")


def latency_summary(values: Sequence[float]) -> dict:
    """mean / p50 / p90 / p99 / max (ms) of ``values`` by the runtime's ``sample_stats``; all None when empty."""
    if not len(values):
        return dict.fromkeys(SUMMARY_KEYS)
    from dvt_runtime.stats import sample_stats

    s = sample_stats(values, keep_samples=False)
    return {k: s[k] for k in SUMMARY_KEYS}


def _budget_stats(mode: Mode, tally: Tally, bundle) -> dict:
    """Hits and misses per frame (each against the budget or deadline it ran under), and the frames run under the
    final value: a budget changed with +/- is judged only on those (``since_frame``, ``predict_since``)."""
    n = tally.frames
    since = tally.limit_since if tally.last_limit == mode.ms else n
    metric = bundle.calibration.metric if mode.kind == "budget" and mode.active else None
    after = latency_summary(tally.predict_ms[since:])
    key = (metric or "mean") if mode.kind == "budget" else ""  # an uncalibrated budget: the mean, as the summary judges it
    judged = (after if since else latency_summary(tally.predict_ms)).get(key)
    return {"kind": mode.kind, "ms": mode.ms, "hits": tally.hits, "misses": tally.misses, "metric": metric,
            "hit_rate": tally.hits / n if n else None,  # frames under the limit, each alone: a mean budget is judged by "met"
            "met": None if judged is None else bool(judged <= mode.ms),  # the budget's statistic within it (the summary's "met")
            "counted_on": "preprocessing + predict wall time per frame" if mode.kind == "deadline" else "predict wall time per frame",
            "since_frame": since, "predict_since": after,
            # the budget controller's estimates at the end (predict's speed_scale / mix_scale); None: no controller ran
            "controller": None if (ctl := getattr(bundle, "controller", None)) is None or metric is None else {
                "speed_scale": float(ctl.scale), "mix_scale": float(ctl.mix)}}


def _jsonable(thresholds) -> list:
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in thresholds]


def build_stats(args, source: str, frame, bundle, mode: Mode, thresholds: Optional[list], loop: FrameLoop) -> dict:
    """The session's stats: source, bundle, mode, exit counts, latency summaries, budget hits, FPS, per-frame predictions."""
    tally, n, m = loop.tally, loop.tally.frames, bundle.manifest
    fixed_thresholds = mode.kind != "budget" or not mode.active
    return {
        "schema": STATS_SCHEMA, "schema_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # when the session ended
        "source": source,
        "frames": n,
        "undecodable_frames": loop.undecodable,
        "frame_size": [int(frame.shape[1]), int(frame.shape[0])],
        "bundle": str(bundle.path),
        "model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend,
        "num_exits": bundle.num_exits,
        "device_name": bundle.device_name,
        "calibrated": bundle.calibration is not None,
        "threads": args.threads,
        "mode": mode.to_dict(),
        "budget_ms": mode.ms if mode.kind == "budget" else None,
        "deadline_ms": mode.ms if mode.kind == "deadline" else None,
        "thresholds": _jsonable(thresholds if thresholds is not None else bundle.default_thresholds()) if fixed_thresholds else None,
        "exit_counts": tally.exit_counts,
        "exit_fractions": [c / n if n else 0.0 for c in tally.exit_counts],
        "shift": exit_shift(tally.exit_counts, tally.expected_fractions(), bundle),  # frames unlike the calibration's images
        **run_facts(bundle),  # which bundle bytes, calibration file and machine ran: for an audit from the file alone
        "latency_ms": {"predict": latency_summary(tally.predict_ms), "frame": latency_summary(tally.frame_ms)},
        "budget": None if mode.ms is None else _budget_stats(mode, tally, bundle),
        "fps": n / loop.wall_s if loop.wall_s > 0 else None,
        "wall_s": loop.wall_s,
        "interrupted": loop.interrupted,
        "uniform_frames": tally.uniform_frames,  # blank frames, each record marked "uniform" (its answer is no object's)
        "contention": loop.contention,  # wait_pct, steal_pct: how much the frames competed for a CPU (None: the OS does not say)
        "source_stopped": loop.source_stopped,  # why a camera stopped delivering frames (None: it did not)
        "record": str(args.record) if args.record else None,
        "snapshot": loop.snapshot,
        "predictions_from_frame": n - len(tally.predictions),  # the latest KEEP_FRAMES frames' records (all of a shorter run)
        "predictions": list(tally.predictions),
    }
