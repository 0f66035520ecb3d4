"""What every module of the webcam demo shares: OpenCV (or None), the user-facing error, the
messages that tell the user the way out, the stderr note and the millisecond format."""

from __future__ import annotations

import math
import sys
from typing import Optional

try:
    import cv2
except ImportError:  # pragma: no cover - reported by webcam.run()
    cv2 = None

__all__ = ["AppError", "CALIBRATE_HINT", "GUI_HINT", "SOURCE_HINT", "cv2", "fmt_ms", "warn"]

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


def fmt_ms(v: Optional[float]) -> str:
    """A latency for the overlay and the messages: 2 decimals below 10 ms, 1 above, "-" when unknown."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def warn(msg: str) -> None:
    print(f"webcam: note: {msg}", file=sys.stderr)
