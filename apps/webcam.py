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
  calibration (``--device-name NAME`` loads ``<bundle>/calibration/NAME.json``). Without a
  calibration the demo runs with the bundle's default thresholds, says so ("UNCALIBRATED" in
  the overlay, a note on stderr with the calibrate command) and still counts the frames that
  overran the budget.
* ``--deadline-ms Y`` skips a later stage when its p90 latency would overrun the deadline.
  The p90s come from the calibration; without one they are profiled on this machine at start
  (``profiled`` in the overlay).

Keys (window mode): q / Esc quit, + / - raise / lower the budget or deadline by 10 %, space
pause. The window needs OpenCV's GUI build (``opencv-python``); the headless build
(``opencv-python-headless``) runs ``--headless`` only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - reported by main()
    cv2 = None

__all__ = ["AppError", "Mode", "Overlay", "annotate", "crop_box", "model_input_image", "open_source", "run", "main", "parse_args",
           "EXIT_COLORS", "CALIBRATE_HINT", "GUI_HINT"]

WINDOW = "dvt-edge webcam"
HISTORY = 100  # frames in the rolling exit histogram
FPS_WINDOW = 30  # frames in the rolling FPS / frame-latency average
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (a literal so the module imports without cv2)

# one BGR color per exit: green (cheapest) -> yellow -> red, then orange, violet, ...
EXIT_COLORS: list[tuple[int, int, int]] = [
    (90, 220, 60), (0, 220, 255), (70, 90, 255), (0, 150, 255), (240, 90, 200), (255, 160, 40), (200, 200, 200), (120, 255, 200),
]

CALIBRATE_HINT = ("calibrate this device first: python -m dvt_runtime.calibrate --bundle {bundle} --data val.npz --budget-ms {ms:g} "
                  "--device-name {name}, then pass --device-name {name}")
GUI_HINT = ("this OpenCV has no GUI (the opencv-python-headless build): run with --headless (add --record OUT.mp4 / --stats OUT.json), "
            "or install the GUI build in its own environment: pip uninstall opencv-python-headless && pip install opencv-python "
            "(the two builds must not be installed into one environment)")
SOURCE_HINT = "pick another camera with --camera 1 (2, ...), or pass a video file with --video FILE"


class AppError(Exception):
    """A user-facing error: printed without a traceback, exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def color_of(exit_index: int) -> tuple[int, int, int]:
    return EXIT_COLORS[exit_index % len(EXIT_COLORS)]


# ----------------------------------------------------------------------------- budget / deadline mode


@dataclass
class Mode:
    """How the cascade is asked to run: default thresholds, or a budget, or a deadline.

    ``active`` is False when a budget was asked for but cannot be honoured (no calibration):
    the cascade then runs with the default thresholds and frames are still counted against
    ``ms``.
    """

    kind: str = "none"  # none | budget | deadline
    ms: Optional[float] = None
    thresholds: Optional[list[Optional[float]]] = None  # explicit --thresholds
    active: bool = True
    source: str = ""  # where thresholds / p90s come from, for the overlay
    note: str = ""  # why the mode fell back, for stderr and the stats

    def predict_kwargs(self) -> dict:
        kw: dict = {}
        if self.thresholds is not None:
            kw["thresholds"] = self.thresholds
        if self.active and self.kind == "budget":
            kw["budget_ms"] = self.ms
        if self.active and self.kind == "deadline":
            kw["deadline_ms"] = self.ms
        return kw

    def scale(self, factor: float) -> bool:
        """Raise/lower the budget or deadline (the +/- keys); False when there is none."""
        if self.kind == "none" or self.ms is None:
            return False
        self.ms = float(self.ms * factor)
        return True

    def label(self) -> str:
        if self.kind == "none":
            return f"no budget | thresholds: {self.source}"
        text = f"{self.kind} {_ms(self.ms)} ms"
        if not self.active:
            return text + " | UNCALIBRATED: default thresholds"
        return text + (f" | {self.source}" if self.source else "")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ms": self.ms, "thresholds": self.thresholds, "active": self.active, "source": self.source,
                "note": self.note}


def setup_mode(bundle, budget_ms: Optional[float] = None, deadline_ms: Optional[float] = None,
               thresholds: Optional[list] = None, profile_runs: int = 30) -> Mode:
    """Decide how ``bundle.predict`` is called, falling back clearly when calibration is missing."""
    cal_src = f"calibration {bundle.device_name}" if getattr(bundle, "calibration", None) is not None else "manifest"
    thr_src = "--thresholds" if thresholds is not None else cal_src
    if budget_ms is not None and deadline_ms is not None:
        raise AppError("pass either --budget-ms or --deadline-ms, not both")
    if budget_ms is not None:
        if budget_ms <= 0:
            raise AppError(f"--budget-ms must be positive, got {budget_ms:g}")
        mode = Mode("budget", float(budget_ms), thresholds, source=cal_src)
        if getattr(bundle, "calibration", None) is None:
            mode.active, mode.source = False, thr_src
            where = f"no calibration for device {bundle.device_name!r}" if bundle.device_name else "no --device-name given"
            mode.note = (f"budget mode needs this device's calibration ({where}); running with the default thresholds. "
                         + CALIBRATE_HINT.format(bundle=bundle.path, ms=budget_ms, name=bundle.device_name or "NAME"))
            return mode
        try:  # a dry run: the controller needs the device's calibration (its Pareto table)
            bundle.predict(np.zeros((1,) + tuple(bundle.input_shape), np.float32), **mode.predict_kwargs())
        except (ValueError, ImportError, KeyError, TypeError) as e:
            mode.active, mode.source = False, thr_src
            mode.note = f"budget mode unavailable ({e}); running with the default thresholds. " + \
                CALIBRATE_HINT.format(bundle=bundle.path, ms=budget_ms, name=bundle.device_name or "NAME")
        finally:
            if hasattr(bundle, "controller"):
                bundle.controller = None  # start the controller fresh on the first real frame
        return mode
    if deadline_ms is not None:
        if deadline_ms <= 0:
            raise AppError(f"--deadline-ms must be positive, got {deadline_ms:g}")
        mode = Mode("deadline", float(deadline_ms), thresholds, source=f"p90 {cal_src}")
        if getattr(bundle, "stage_p90_ms", None) is None:
            p90 = profile_stages(bundle, profile_runs)
            bundle.use_profile(p90)
            mode.source = "p90 profiled at start"
            mode.note = (f"no calibration with per-stage latencies: profiled the stages here ({profile_runs} runs, p90 "
                         f"{' / '.join(_ms(v) for v in p90)} ms). " + CALIBRATE_HINT.format(bundle=bundle.path, ms=deadline_ms, name=bundle.device_name or "NAME"))
        return mode
    return Mode("none", None, thresholds, source=thr_src)


def profile_stages(bundle, runs: int = 30) -> list[float]:
    """p90 latency (ms) of every stage on this machine: the runtime's profiler, ``runs`` chain runs after 2 warm-up runs."""
    from dvt_runtime.profile import MIN_RUNS, profile_bundle

    return profile_bundle(bundle, warmup=2, runs=max(int(runs), MIN_RUNS), progress=False).stage_p90()


# ----------------------------------------------------------------------------- geometry


def crop_box(pre, height: int, width: int) -> tuple[int, int, int, int]:
    """The region (x0, y0, x1, y1) of a ``width`` x ``height`` frame that ``pre`` (a Preprocess) feeds the model.

    Mirrors ``Preprocess._resize_crop``: resize the shorter side to ``pre.resize``, then
    center-crop ``pre.size`` x ``pre.size``.
    """
    scale = pre.resize / min(height, width)
    nh, nw = max(pre.size, round(height * scale)), max(pre.size, round(width * scale))
    top, left = (nh - pre.size) // 2, (nw - pre.size) // 2
    sy, sx = height / nh, width / nw
    return (int(round(left * sx)), int(round(top * sy)), int(round((left + pre.size) * sx)), int(round((top + pre.size) * sy)))


def model_input_image(x: np.ndarray, pre) -> np.ndarray:
    """Undo the normalization of a (1, C, H, W) / (C, H, W) model input: a BGR uint8 (H, W, 3) image."""
    a = np.asarray(x, np.float32)
    a = a[0] if a.ndim == 4 else a
    img = a.transpose(1, 2, 0) * np.asarray(pre.std, np.float32) + np.asarray(pre.mean, np.float32)
    if pre.invert:
        img = 1.0 - img
    img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, ::-1]) if pre.channels == "rgb" else img


# ----------------------------------------------------------------------------- overlay


def _ms(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _text(img, s: str, org: tuple[int, int], scale: float, color, thick: int = 1) -> None:
    """Anti-aliased text; callers put it on a dark panel (an outline drawn with a thicker pen drifts
    away from the glyphs in OpenCV 5, whose font gets wider with the thickness)."""
    cv2.putText(img, s, (int(org[0]), int(org[1])), FONT, scale, color, thick, cv2.LINE_AA)


def _panel(img, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.68) -> None:
    """Darken a rectangle (semi-transparent background for text)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    roi[:] = (roi.astype(np.float32) * (1.0 - alpha)).astype(np.uint8)


def _text_w(s: str, scale: float, thick: int) -> int:
    return cv2.getTextSize(s, FONT, scale, thick)[0][0]


class Overlay:
    """Rolling state (exit history, FPS, frame latency) and the drawing of one annotated frame."""

    def __init__(self, num_exits: int, grids: Optional[Sequence[int]] = None, model_line: str = "", preprocess=None,
                 mode: Optional[Mode] = None, history: int = HISTORY, fps_window: int = FPS_WINDOW):
        self.num_exits = int(num_exits)
        self.grids = list(grids) if grids is not None else [None] * self.num_exits
        self.model_line = model_line
        self.preprocess = preprocess
        self.mode = mode or Mode()
        self.exits: deque[int] = deque(maxlen=history)
        self.stamps: deque[float] = deque(maxlen=fps_window + 1)
        self.frame_ms: deque[float] = deque(maxlen=fps_window)
        self.paused = False
        self.message, self.message_until = "", 0.0

    @classmethod
    def for_bundle(cls, bundle, mode: Optional[Mode] = None, **kw) -> Overlay:
        m = bundle.manifest
        backend = getattr(m, "backend", "")
        line = f"{m.model}  {m.target}/{m.precision}" + (f"  ({backend})" if backend and backend != m.target else "")
        return cls(bundle.num_exits, [e.grid for e in m.exits], line, m.preprocess, mode, **kw)

    # -------------------------------------------------------------- state
    def record(self, pred, now: Optional[float] = None) -> None:
        """Count a frame's exit and time stamp (before drawing it)."""
        self.exits.append(int(pred.exit))
        self.stamps.append(time.perf_counter() if now is None else now)

    def add_frame_ms(self, ms: float) -> None:
        """End-to-end time of a finished frame (preprocess + predict + drawing)."""
        self.frame_ms.append(float(ms))

    def flash(self, message: str, seconds: float = 2.0) -> None:
        self.message, self.message_until = message, time.perf_counter() + seconds

    @property
    def fps(self) -> Optional[float]:
        if len(self.stamps) < 2:
            return None
        dt = self.stamps[-1] - self.stamps[0]
        return (len(self.stamps) - 1) / dt if dt > 0 else None

    def histogram(self) -> np.ndarray:
        return np.bincount(np.asarray(self.exits, np.int64), minlength=self.num_exits)[: self.num_exits] if self.exits \
            else np.zeros(self.num_exits, np.int64)

    # -------------------------------------------------------------- drawing
    def draw(self, frame: np.ndarray, pred, model_input: Optional[np.ndarray] = None, model_ms: Optional[float] = None) -> np.ndarray:
        """A copy of ``frame`` with the overlay drawn on it (the input frame is not modified)."""
        img = np.ascontiguousarray(frame if frame.ndim == 3 and frame.shape[2] == 3 else _to_bgr(frame)).copy()
        h, w = img.shape[:2]
        u = max(0.6, min(h, w) / 480.0)  # 1.0 for a 640x480 frame
        fs, fb = 0.6 * u, 0.95 * u  # font scales: normal, big
        th, tb = max(1, round(1.2 * u)), max(2, round(2 * u))
        lh = int(26 * u)  # line height
        pad = int(8 * u)
        ecolor = color_of(pred.exit)

        # the region the model sees, and the model input itself
        if self.preprocess is not None:
            x0, y0, x1, y1 = crop_box(self.preprocess, h, w)
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), ecolor, max(1, round(2 * u)), cv2.LINE_AA)
        if model_input is not None and self.preprocess is not None:
            self._draw_inset(img, model_input, u, fs, th, pad, ecolor)

        # top-left: answer, exit, latency, fps, budget
        name = str(pred.class_name)
        lines = [
            (f"{name}  {100 * pred.confidence:.0f}%", fb, (255, 255, 255), tb),
            (self._exit_text(pred), fs, ecolor, th),
            (self._latency_text(pred, model_ms), fs, (255, 255, 255), th),
            (self._fps_text(), fs, (255, 255, 255), th),
            (self.mode.label(), fs, (255, 255, 255) if self.mode.active else (80, 180, 255), th),
        ]
        width = max(_text_w(s, sc, t) for s, sc, _, t in lines) + 2 * pad
        height = int(lh * 1.35) + lh * (len(lines) - 1) + pad
        _panel(img, 0, 0, width, height)
        y = pad + int(lh * 1.0)
        for i, (s, sc, col, t) in enumerate(lines):
            _text(img, s, (pad, y), sc, col, t)
            y += int(lh * 1.35) if i == 0 else lh

        # bottom-left: exit color legend and model / target / precision
        legend_h = self._draw_legend(img, u, fs, th, lh, pad)
        # bottom-right: rolling exit histogram
        self._draw_histogram(img, u, fs, th, pad, legend_h)

        if self.paused:
            s = "PAUSED (space)"
            tw = _text_w(s, fb * 1.2, tb)
            _panel(img, (w - tw) // 2 - pad, h // 2 - int(lh * 1.5), (w + tw) // 2 + pad, h // 2 + pad)
            _text(img, s, ((w - tw) // 2, h // 2), fb * 1.2, (255, 255, 255), tb)
        if self.message and time.perf_counter() < self.message_until:
            tw = _text_w(self.message, fs, th)
            _panel(img, (w - tw) // 2 - pad, h // 2 + lh, (w + tw) // 2 + pad, h // 2 + 2 * lh + pad)
            _text(img, self.message, ((w - tw) // 2, h // 2 + 2 * lh), fs, (255, 255, 255), th)
        return img

    def _exit_text(self, pred) -> str:
        g = self.grids[pred.exit] if pred.exit < len(self.grids) else None
        s = f"exit {pred.exit + 1}/{self.num_exits}" + (f"  ({g}x{g} tokens)" if g else "")
        if getattr(pred, "deadline_skipped", False):
            s += "  deadline cut"
        return s

    def _latency_text(self, pred, model_ms: Optional[float]) -> str:
        stages = [_ms(v) for v in pred.stage_ms] + ["-"] * max(0, self.num_exits - len(pred.stage_ms))
        total = model_ms if model_ms is not None else pred.total_ms
        return f"model {_ms(total)} ms  (stages " + " | ".join(stages) + ")"

    def _fps_text(self) -> str:
        fps = self.fps
        fm = float(np.mean(self.frame_ms)) if self.frame_ms else None
        return f"frame {_ms(fm)} ms   FPS {fps:.1f}" if fps else f"frame {_ms(fm)} ms   FPS -"

    def _draw_inset(self, img, model_input, u, fs, th, pad, ecolor) -> int:
        h, w = img.shape[:2]
        small = model_input_image(model_input, self.preprocess)
        side = small.shape[0]
        k = max(1, int(round(min(h, w) * 0.25 / side)))  # ~ a quarter of the frame, integer zoom
        big = cv2.resize(small, (small.shape[1] * k, side * k), interpolation=cv2.INTER_NEAREST)
        bh, bw = big.shape[:2]
        if bh + 2 * pad + int(24 * u) > h or bw + 2 * pad > w:
            return w
        cap = f"model input {small.shape[1]}x{side}"
        cw = _text_w(cap, fs * 0.85, th)
        x1 = w - pad
        x0 = x1 - bw
        _panel(img, min(x0, x1 - cw) - pad, 0, w, pad + bh + int(30 * u))
        img[pad : pad + bh, x0:x1] = big
        cv2.rectangle(img, (x0 - 1, pad - 1), (x1, pad + bh), ecolor, max(1, round(2 * u)))
        _text(img, cap, (x1 - cw, pad + bh + int(22 * u)), fs * 0.85, (255, 255, 255), th)
        return min(x0, x1 - cw) - pad

    def _draw_legend(self, img, u, fs, th, lh, pad) -> int:
        h, w = img.shape[:2]
        sq = int(14 * u)
        items = []
        for e in range(self.num_exits):
            g = self.grids[e]
            items.append(f"E{e + 1}" + (f" {g}x{g}" if g else ""))
        widths = [sq + int(6 * u) + _text_w(s, fs * 0.85, th) + int(12 * u) for s in items]
        legend_w = sum(widths) + 2 * pad
        model_w = _text_w(self.model_line, fs * 0.85, th) + 2 * pad
        box_h = 2 * lh + pad
        _panel(img, 0, h - box_h, max(legend_w, model_w), h)
        x, y = pad, h - lh - pad // 2
        for s, ww, e in zip(items, widths, range(self.num_exits)):
            cv2.rectangle(img, (x, y - sq), (x + sq, y), color_of(e), -1)
            _text(img, s, (x + sq + int(6 * u), y), fs * 0.85, color_of(e), th)
            x += ww
        _text(img, self.model_line, (pad, h - pad // 2 - int(4 * u)), fs * 0.85, (230, 230, 230), th)
        return box_h

    def _draw_histogram(self, img, u, fs, th, pad, legend_h) -> None:
        h, w = img.shape[:2]
        counts = self.histogram()
        n = int(counts.sum())
        bar_w, gap, bar_h = int(30 * u), int(12 * u), int(70 * u)
        title = f"exits, last {n}" if n < (self.exits.maxlen or HISTORY) else f"exits, last {self.exits.maxlen}"
        inner_w = max(self.num_exits * (bar_w + gap) - gap, _text_w(title, fs * 0.8, th), _text_w("100%", fs * 0.75, th) * self.num_exits)
        box_w = inner_w + 2 * pad
        box_h = bar_h + int(70 * u)
        x0, y0 = w - box_w, h - box_h
        if x0 < 0 or y0 < 0:
            return
        _panel(img, x0, y0, w, h)
        _text(img, title, (x0 + pad, y0 + int(20 * u)), fs * 0.8, (255, 255, 255), th)
        base = h - int(26 * u)
        step = (inner_w - bar_w) / max(1, self.num_exits - 1) if self.num_exits > 1 else 0
        for e in range(self.num_exits):
            frac = counts[e] / n if n else 0.0
            bx = int(x0 + pad + e * step)
            top = base - int(round(frac * bar_h))
            cv2.rectangle(img, (bx, base - bar_h), (bx + bar_w, base), (70, 70, 70), 1)
            if frac > 0:
                cv2.rectangle(img, (bx, top), (bx + bar_w, base), color_of(e), -1)
            pct = f"{100 * frac:.0f}%"
            pw = _text_w(pct, fs * 0.75, th)
            _text(img, pct, (bx + (bar_w - pw) // 2, max(y0 + int(40 * u), top - int(5 * u))), fs * 0.75, (255, 255, 255), th)
            lab = f"E{e + 1}"
            lw = _text_w(lab, fs * 0.8, th)
            _text(img, lab, (bx + (bar_w - lw) // 2, h - int(7 * u)), fs * 0.8, color_of(e), th)


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(frame[:, :, :3])


def annotate(frame: np.ndarray, pred, state: Overlay, model_input: Optional[np.ndarray] = None,
             model_ms: Optional[float] = None) -> np.ndarray:
    """Draw the overlay for ``pred`` on a copy of ``frame`` (``state`` holds the rolling history)."""
    return state.draw(frame, pred, model_input=model_input, model_ms=model_ms)


# ----------------------------------------------------------------------------- capture


def _quiet_opencv() -> None:
    try:  # OpenCV prints backend warnings ("can't open camera by index") we replace with our own message
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass


def open_source(camera=None, video: Optional[str] = None):
    """Open a camera (index, or a device path / GStreamer pipeline / URL) or a video file; returns (capture, description).

    Raises :class:`AppError` (exit status 2) with the way out when nothing can be read.
    """
    _quiet_opencv()
    if video is not None:
        p = Path(video)
        if not p.is_file():
            raise AppError(f"cannot read video {video!r}: no such file. {SOURCE_HINT}")
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            cap.release()
            raise AppError(f"cannot read video {video!r}: OpenCV cannot decode it. {SOURCE_HINT}")
        return cap, f"video {video}"
    cam = 0 if camera is None else camera
    if isinstance(cam, str) and cam.strip().lstrip("-").isdigit():
        cam = int(cam)
    if isinstance(cam, str) and "!" in cam:
        cap = cv2.VideoCapture(cam, cv2.CAP_GSTREAMER)  # e.g. a Jetson CSI camera (nvarguscamerasrc ... ! appsink)
    else:
        cap = cv2.VideoCapture(cam)
    if not cap.isOpened():
        cap.release()
        raise AppError(f"camera {cam} is not available (not connected, busy, or no permission). {SOURCE_HINT}")
    return cap, f"camera {cam}"


# ----------------------------------------------------------------------------- GUI


def _check_gui() -> None:
    """Fail early, with the fix, when no window can be opened."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise AppError("no display to open a window on (DISPLAY is not set, e.g. over ssh): run with --headless "
                       "(--record OUT.mp4 to keep the annotated video), or export DISPLAY=:0 on the device's own screen")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
    except cv2.error:
        raise AppError(GUI_HINT) from None


def _show(img) -> None:
    try:
        cv2.imshow(WINDOW, img)
    except cv2.error:
        raise AppError(GUI_HINT) from None


def _handle_key(key: int, mode: Mode, overlay: Overlay) -> bool:
    """Apply a key press; returns False to quit."""
    if key in (ord("q"), ord("Q"), 27):
        return False
    if key == ord(" "):
        overlay.paused = not overlay.paused
    elif key in (ord("+"), ord("="), ord("-"), ord("_")):
        factor = 1.1 if key in (ord("+"), ord("=")) else 0.9
        if mode.scale(factor):
            overlay.flash(f"{mode.kind} {_ms(mode.ms)} ms")
        else:
            overlay.flash("no budget to change: start with --budget-ms or --deadline-ms")
    return True


# ----------------------------------------------------------------------------- run


def _summary(values: Sequence[float]) -> dict:
    if not len(values):
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _parse_thresholds(s: Optional[str]) -> Optional[list[Optional[float]]]:
    if s is None:
        return None
    out: list[Optional[float]] = []
    for part in s.split(","):
        part = part.strip()
        if part.lower() in ("", "none", "-"):
            out.append(None)
            continue
        try:
            v = float(part)
        except ValueError:
            raise AppError(f"--thresholds: {part!r} is not a number (expected e.g. 0.9,0.8)") from None
        if not 0.0 <= v <= 1.0:
            raise AppError(f"--thresholds: {v:g} is outside [0, 1] (thresholds are softmax confidences)")
        out.append(v)
    return out


def reference_bundle() -> Path:
    """The natural-image reference (``dvt_small_cifar``) exported to ONNX fp32 in the user cache,
    exported once on first use (needs ``dvt-edge[onnx]``; the app itself needs only the runtime)."""
    try:
        from dvt_edge.data import cache_dir
        from dvt_edge.export import export_bundle
        from dvt_edge.references import DEFAULT_REFERENCE
    except ImportError as e:
        raise AppError(f"no --bundle given, and the reference model cannot be exported here ({e}); pass --bundle DIR "
                       "(python -m dvt_edge.export ...) or install dvt-edge[onnx]") from None
    ref = DEFAULT_REFERENCE
    d = cache_dir() / "bundles" / f"{ref.model}-onnx-fp32"
    if not (d / "manifest.json").is_file():
        _warn(f"no --bundle given: exporting the reference {ref.checkpoint.name} to {d} (once)")
        export_bundle(str(ref.checkpoint), "onnx", "fp32", out=str(d), force=d.exists(), progress=False)
    return d


def open_bundle(args):
    """Open the bundle named by ``args`` (the runtime is imported here, so ``--help`` works without it)."""
    if args.bundle is None:
        args.bundle = str(reference_bundle())
    try:
        from dvt_runtime.backends import BackendUnavailable
        from dvt_runtime.bundle import Bundle
        from dvt_runtime.manifest import ManifestError
    except ImportError as e:
        raise AppError(f"dvt-runtime is not importable ({e}); install it: pip install ./runtime[onnx]") from None
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if getattr(args, "providers", None) else None
    try:
        bundle = Bundle.open(args.bundle, threads=args.threads, providers=providers, device_name=args.device_name)
    except (ManifestError, BackendUnavailable, FileNotFoundError, OSError, ValueError) as e:  # ValueError: CalibrationError
        raise AppError(f"cannot open bundle {args.bundle}: {e}") from None
    return bundle


def run(args) -> dict:
    """Run the demo (window or ``args.headless``); returns the stats (also written to ``args.stats``)."""
    if cv2 is None:
        raise AppError("OpenCV is not installed: pip install opencv-python (window) or opencv-python-headless (--headless)")
    if args.snapshot_frame is not None and not args.snapshot:
        raise AppError("--snapshot-frame needs --snapshot OUT.png")
    thresholds = _parse_thresholds(args.thresholds)
    if not args.headless:
        _check_gui()
    cap, source = open_source(args.camera, args.video)
    try:
        return _run(args, cap, source, thresholds)
    finally:
        cap.release()
        if not args.headless:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass


def _run(args, cap, source: str, thresholds) -> dict:
    ok, frame = cap.read()
    if not ok or frame is None:
        what = "delivered no frame" if args.video is None else "holds no decodable frame"
        raise AppError(f"{source} {what}. {SOURCE_HINT}")
    frame_size = [int(frame.shape[1]), int(frame.shape[0])]
    bundle = open_bundle(args)
    if thresholds is not None and len(thresholds) not in (bundle.num_exits - 1, bundle.num_exits):
        raise AppError(f"--thresholds: this bundle has {bundle.num_exits} exits: give {bundle.num_exits - 1} thresholds "
                       f"(the last exit always answers), got {len(thresholds)}")
    if args.device_name and bundle.calibration is None:
        _warn(f"no calibration for device {args.device_name!r} ({bundle.calibration_path(args.device_name)}): "
              "using the manifest's thresholds")
    try:
        mode = setup_mode(bundle, args.budget_ms, args.deadline_ms, thresholds)
    except ValueError as e:
        raise AppError(str(e)) from None
    if mode.note:
        _warn(mode.note)
    for _ in range(3):  # warm-up: the first runs of a session are slow
        bundle.predict(bundle.preprocess(frame), thresholds=thresholds)
    if hasattr(bundle, "controller"):
        bundle.controller = None

    overlay = Overlay.for_bundle(bundle, mode)
    fps_in = cap.get(cv2.CAP_PROP_FPS)
    fps_in = float(fps_in) if fps_in and math.isfinite(fps_in) and 1 <= fps_in <= 240 else 30.0
    writer = None
    if args.record:
        h, w = frame.shape[:2]
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(args.record), cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
        if not writer.isOpened():
            raise AppError(f"cannot write video {args.record} with the mp4v codec; try a .mp4 or .avi path in a writable folder")

    preds: list[dict] = []
    predict_ms: list[float] = []
    frame_ms: list[float] = []
    exit_counts = [0] * bundle.num_exits
    budget_hits = budget_misses = 0
    snapshot_written: Optional[str] = None
    snapshot_index = args.snapshot_frame
    last_img = None
    index = misses = 0
    interrupted = False
    t_start = time.perf_counter()
    paused_s = 0.0
    try:
        while True:
            if args.max_frames is not None and index >= args.max_frames:
                break
            if index > 0:
                ok, frame = cap.read()
                if not ok or frame is None:
                    if args.video is None and misses < 10:  # a camera may drop a frame now and then
                        misses += 1
                        time.sleep(0.02)
                        continue
                    break
                misses = 0
            t0 = time.perf_counter()
            x = bundle.preprocess(frame)
            t1 = time.perf_counter()
            try:
                pred = bundle.predict(x, **mode.predict_kwargs())
                if isinstance(pred, list):  # a (1, C, H, W) batch of one
                    pred = pred[0]
            except (ValueError, ImportError) as e:
                raise AppError(f"prediction failed in {mode.kind} mode: {e}") from None
            t2 = time.perf_counter()
            p_ms = (t2 - t1) * 1e3
            overlay.record(pred, t2)
            img = annotate(frame, pred, overlay, model_input=x, model_ms=p_ms)
            t3 = time.perf_counter()
            f_ms = (t3 - t0) * 1e3
            overlay.add_frame_ms(f_ms)

            predict_ms.append(p_ms)
            frame_ms.append(f_ms)
            exit_counts[pred.exit] += 1
            if mode.ms is not None:
                if p_ms > mode.ms:
                    budget_misses += 1
                else:
                    budget_hits += 1
            preds.append({"frame": index, "label": int(pred.label), "class": str(pred.class_name), "confidence": float(pred.confidence),
                          "exit": int(pred.exit), "total_ms": float(pred.total_ms), "stage_ms": [float(v) for v in pred.stage_ms],
                          "predict_ms": p_ms, "frame_ms": f_ms, "deadline_skipped": bool(pred.deadline_skipped),
                          "limit_ms": mode.ms})
            if writer is not None:
                writer.write(img)
            if args.snapshot and snapshot_index is not None and index == snapshot_index:
                snapshot_written = _write_png(args.snapshot, img)
            last_img = img
            index += 1

            if not args.headless:
                _show(img)
                wait_ms = 1
                if args.video is not None:  # play a file at its own frame rate (headless runs flat out)
                    wait_ms = max(1, int(1000.0 / fps_in - (time.perf_counter() - t0) * 1e3))
                key = cv2.waitKey(wait_ms) & 0xFF
                if key != 255 and not _handle_key(key, mode, overlay):
                    break
                tp = time.perf_counter()
                while overlay.paused:  # keep the window alive, read no frames
                    _show(overlay.draw(frame, pred, model_input=x, model_ms=p_ms))
                    key = cv2.waitKey(30) & 0xFF
                    if key != 255 and not _handle_key(key, mode, overlay):
                        raise _Quit
                    if _window_closed():
                        raise _Quit
                paused_s += time.perf_counter() - tp
                if _window_closed():
                    break
    except _Quit:
        pass
    except KeyboardInterrupt:
        interrupted = True
        _warn("interrupted: writing what was processed so far")
    finally:
        if writer is not None:
            writer.release()
    wall = time.perf_counter() - t_start - paused_s

    if args.snapshot and snapshot_index is None and last_img is not None:
        snapshot_written = _write_png(args.snapshot, last_img)
    elif args.snapshot and snapshot_written is None:
        _warn(f"--snapshot-frame {snapshot_index} was not reached ({index} frames processed): no snapshot written")

    m = bundle.manifest
    stats = {
        "source": source,
        "frames": index,
        "frame_size": frame_size,
        "bundle": str(bundle.path),
        "model": m.model, "target": m.target, "precision": m.precision, "backend": m.backend,
        "num_exits": bundle.num_exits,
        "device_name": args.device_name,
        "calibrated": bundle.calibration is not None,
        "threads": args.threads,
        "mode": mode.to_dict(),
        "budget_ms": mode.ms if mode.kind == "budget" else None,
        "deadline_ms": mode.ms if mode.kind == "deadline" else None,
        "thresholds": _jsonable(thresholds if thresholds is not None else bundle.default_thresholds())
        if mode.kind != "budget" or not mode.active else None,
        "exit_counts": exit_counts,
        "exit_fractions": [c / index if index else 0.0 for c in exit_counts],
        "latency_ms": {"predict": _summary(predict_ms), "frame": _summary(frame_ms)},
        "budget": None if mode.ms is None else {"kind": mode.kind, "ms": mode.ms, "hits": budget_hits, "misses": budget_misses,
                                                "hit_rate": budget_hits / index if index else None,
                                                "counted_on": "predict wall time per frame"},
        "fps": index / wall if wall > 0 else None,
        "wall_s": wall,
        "interrupted": interrupted,
        "record": str(args.record) if args.record else None,
        "snapshot": snapshot_written,
        "predictions": preds,
    }
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats).write_text(json.dumps(stats, indent=1) + "\n")
    return stats


class _Quit(Exception):
    pass


def _window_closed() -> bool:
    """True once the user closed the window. Qt, Win32 and Cocoa report 0 then; GTK does not implement
    the property and always answers -1 (opencv/opencv#25346), so there only q / Esc quit."""
    try:
        return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) == 0
    except cv2.error:
        return False


def _jsonable(thresholds) -> list:
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in thresholds]


def _write_png(path, img) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise AppError(f"cannot write snapshot {path} (use a .png path in a writable folder)")
    return str(path)


def _warn(msg: str) -> None:
    print(f"webcam: note: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m apps.webcam", description="Live early-exit DVT classification of camera or video frames.",
                                 epilog="keys (window): q/Esc quit, +/- budget or deadline +-10%%, space pause")
    ap.add_argument("--bundle", default=None,
                    help="exported bundle directory (python -m dvt_edge.export ...); default: the CIFAR-10 reference, exported once to the cache")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--camera", default=None, help="camera index (default 0), device path, URL or GStreamer pipeline")
    src.add_argument("--video", default=None, help="video file instead of a camera")
    lim = ap.add_mutually_exclusive_group()
    lim.add_argument("--budget-ms", type=float, default=None, help="latency budget: the controller picks thresholds (needs a calibration)")
    lim.add_argument("--deadline-ms", type=float, default=None, help="per-frame deadline: skip later stages that would overrun it")
    ap.add_argument("--thresholds", default=None, help="per-exit confidence thresholds, e.g. 0.9,0.8 (default: calibration, else manifest)")
    ap.add_argument("--device-name", default=None, help="use <bundle>/calibration/NAME.json (python -m dvt_runtime.calibrate)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per stage (default 1)")
    ap.add_argument("--providers", default=None,
                    help="ONNX Runtime execution providers, comma-separated, e.g. CUDAExecutionProvider,CPUExecutionProvider")
    ap.add_argument("--headless", action="store_true", help="no window: process every frame (use with --record/--stats)")
    ap.add_argument("--record", default=None, metavar="OUT.mp4", help="write the annotated video (mp4v)")
    ap.add_argument("--stats", default=None, metavar="OUT.json", help="write per-frame predictions and latency statistics")
    ap.add_argument("--snapshot", default=None, metavar="OUT.png", help="write one annotated frame as PNG (default: the last)")
    ap.add_argument("--snapshot-frame", type=int, default=None, metavar="K", help="0-based index of the frame for --snapshot")
    ap.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    args = ap.parse_args(argv)
    if args.thresholds is not None and args.budget_ms is not None:
        ap.error("--thresholds and --budget-ms exclude each other (the budget controller picks the thresholds)")
    if args.threads is not None and args.threads < 0:
        ap.error("--threads must be >= 0 (0 = the backend's default)")
    if args.threads == 0:
        args.threads = None
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        stats = run(args)
    except AppError as e:
        print(f"webcam: error: {e}", file=sys.stderr)
        return e.code
    lat = stats["latency_ms"]
    line = (f"{stats['frames']} frames from {stats['source']}: exits {stats['exit_counts']}, predict p50 {_ms(lat['predict']['p50'])} ms "
            f"p90 {_ms(lat['predict']['p90'])} ms, frame p50 {_ms(lat['frame']['p50'])} ms, {stats['fps'] or 0:.1f} FPS")
    if stats["budget"]:
        b = stats["budget"]
        line += f"; {b['kind']} {_ms(b['ms'])} ms met on {b['hits']}/{stats['frames']} frames"
    print(line)
    for k in ("record", "stats", "snapshot"):
        v = stats.get(k) if k != "stats" else args.stats
        if v:
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
