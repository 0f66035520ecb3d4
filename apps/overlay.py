"""The webcam demo's overlay: what is drawn on each frame (answer, exit, latency, FPS, budget or
deadline, the crop the model sees and its input, the exit legend and a rolling exit histogram),
and the rolling state it is drawn from. Drawing only: no window, no keys, no runtime calls."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .common import cv2, fmt_ms
from .modes import Mode

__all__ = ["EXIT_COLORS", "FPS_WINDOW", "HISTORY", "MIN_SIDE", "Overlay", "annotate", "color_of", "drawn_scale", "model_input_image"]

HISTORY = 100  # frames in the rolling exit histogram
FPS_WINDOW = 30  # frames in the rolling FPS / frame-latency average
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (a literal so the module imports without cv2)
MIN_SIDE = 240  # a frame with a shorter side is drawn enlarged by a whole factor (a 160x120 camera's text overlapped, cut off)

# one BGR color per exit: green (cheapest) -> yellow -> red, then orange, violet, ...
EXIT_COLORS: list[tuple[int, int, int]] = [
    (90, 220, 60), (0, 220, 255), (70, 90, 255), (0, 150, 255), (240, 90, 200), (255, 160, 40), (200, 200, 200), (120, 255, 200),
]


def color_of(exit_index: int) -> tuple[int, int, int]:
    return EXIT_COLORS[exit_index % len(EXIT_COLORS)]


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


def drawn_scale(h: int, w: int) -> int:
    """The whole factor a ``h`` x ``w`` frame is enlarged by before the overlay is drawn (1 from MIN_SIDE up): the annotated
    frame, and so a ``--record`` video and a snapshot, is that many times the source's size."""
    return max(1, math.ceil(MIN_SIDE / max(1, min(h, w))))


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
        self.uniform = False  # the frame shown is blank (a lens cap, a wall): its answer is no object's
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
        if (k := drawn_scale(*img.shape[:2])) > 1:  # pixels kept sharp: the model sees the source's, not these
            img = cv2.resize(img, (img.shape[1] * k, img.shape[0] * k), interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
        u = max(0.6, min(h, w) / 480.0)  # 1.0 for a 640x480 frame
        fs, fb = 0.6 * u, 0.95 * u  # font scales: normal, big
        th, tb = max(1, round(1.2 * u)), max(2, round(2 * u))
        lh = int(26 * u)  # line height
        pad = int(8 * u)
        ecolor = color_of(pred.exit)

        # the region the model sees, and the model input itself
        if self.preprocess is not None:
            x0, y0, x1, y1 = self.preprocess.crop_box(h, w)
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), ecolor, max(1, round(2 * u)), cv2.LINE_AA)
        if model_input is not None and self.preprocess is not None:
            self._draw_inset(img, model_input, u, fs, th, pad, ecolor)

        # top-left: answer, exit, latency, fps, budget
        name = str(pred.class_name)
        lines = [
            (f"{name}  {100 * pred.confidence:.0f}%" + ("  (blank frame)" if self.uniform else ""), fb, (255, 255, 255), tb),
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
        stages = [fmt_ms(v) for v in pred.stage_ms] + ["-"] * max(0, self.num_exits - len(pred.stage_ms))
        total = model_ms if model_ms is not None else pred.total_ms
        return f"model {fmt_ms(total)} ms  (stages " + " | ".join(stages) + ")"

    def _fps_text(self) -> str:
        fps = self.fps
        fm = float(np.mean(self.frame_ms)) if self.frame_ms else None
        return f"frame {fmt_ms(fm)} ms   FPS {fps:.1f}" if fps else f"frame {fmt_ms(fm)} ms   FPS -"

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
