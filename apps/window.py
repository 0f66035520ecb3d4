"""The webcam demo's window: opening it (or saying why it cannot be opened), showing frames,
the keys (q / Esc quit, + / - budget or deadline +-10 %, space pause) and the pause loop."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numpy as np

from .common import GUI_HINT, AppError, cv2, fmt_ms
from .modes import Mode
from .overlay import Overlay

__all__ = ["WINDOW", "check_gui", "close_windows", "handle_key", "poll_key", "present", "show", "window_closed"]

WINDOW = "dvt-edge webcam"
NO_KEY = 255  # cv2.waitKey(...) & 0xFF when no key was pressed


def check_gui() -> None:
    """Fail early, with the fix, when no window can be opened."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise AppError("no display to open a window on (DISPLAY is not set, e.g. over ssh): run with --headless "
                       "(--record OUT.mp4 to keep the annotated video), or export DISPLAY=:0 on the device's own screen")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
    except cv2.error:
        raise AppError(GUI_HINT) from None


def show(img) -> None:
    try:
        cv2.imshow(WINDOW, img)
    except cv2.error:
        raise AppError(GUI_HINT) from None


def close_windows() -> None:
    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass


def window_closed() -> bool:
    """True once the user closed the window. Qt, Win32 and Cocoa report 0 then; GTK does not implement
    the property and always answers -1 (opencv/opencv#25346), so there only q / Esc quit."""
    try:
        return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) == 0
    except cv2.error:
        return False


def handle_key(key: int, mode: Mode, overlay: Overlay) -> bool:
    """Apply a key press; returns False to quit."""
    if key in (ord("q"), ord("Q"), 27):
        return False
    if key == ord(" "):
        overlay.paused = not overlay.paused
    elif key in (ord("+"), ord("="), ord("-"), ord("_")):
        factor = 1.1 if key in (ord("+"), ord("=")) else 0.9
        if mode.scale(factor):
            overlay.flash(f"{mode.kind} {fmt_ms(mode.ms)} ms")
        else:
            overlay.flash("no budget to change: start with --budget-ms or --deadline-ms")
    return True


def poll_key(wait_ms: int, mode: Mode, overlay: Overlay) -> bool:
    """Wait up to ``wait_ms`` for a key and apply it; returns False to quit."""
    key = cv2.waitKey(wait_ms) & 0xFF
    return key == NO_KEY or handle_key(key, mode, overlay)


def present(img: np.ndarray, mode: Mode, overlay: Overlay, wait_ms: int, redraw: Callable[[], np.ndarray]) -> tuple[bool, float]:
    """Show a frame and apply the keys; while paused, keep the window alive with ``redraw()`` and read
    no frames. Returns (go on?, seconds spent paused)."""
    show(img)
    if not poll_key(wait_ms, mode, overlay):
        return False, 0.0
    t0 = time.perf_counter()
    while overlay.paused:
        show(redraw())
        if not poll_key(30, mode, overlay) or window_closed():
            return False, time.perf_counter() - t0
    return not window_closed(), time.perf_counter() - t0
