"""What every module of the webcam demo shares: OpenCV (or None), the user-facing error, the
messages that tell the user the way out, the stderr note and the millisecond format."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

from dvt_runtime.io import unwritable

try:
    import cv2
except ImportError:  # pragma: no cover - reported by webcam.run()
    cv2 = None

__all__ = ["AppError", "CALIBRATE_HINT", "GUI_HINT", "SOURCE_HINT", "VIDEO_HINT", "cv2", "fmt_ms", "output_problem", "warn"]

CALIBRATE_HINT = "calibrate this device first: python -m dvt_runtime.calibrate {bundle_args} --data val.npz --budget-ms {ms}{name}"
GUI_HINT = ("this OpenCV has no GUI (the opencv-python-headless build): run with --headless (add --record OUT.mp4 / --stats OUT.json), "
            "or install the GUI build in its own environment: pip uninstall opencv-python-headless && pip install opencv-python "
            "(the two builds must not be installed into one environment)")
SOURCE_HINT = "pick another camera with --camera 1 (2, ...), or pass a video file with --video FILE"
VIDEO_HINT = ("re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4), or check that this OpenCV build reads it "
              "(python -c \"import cv2; print(cv2.getBuildInformation())\", Video I/O: FFMPEG)")


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


#: what each output flag writes, and the file names OpenCV's writers here take for it (the mp4v video writer by suffix)
OUTPUTS = {"--record": ("out.mp4", (".mp4", ".avi", ".mov", ".mkv", ".m4v")), "--snapshot": ("frame.png", None),
           "--stats": ("stats.json", None)}


def output_problem(flag: str, path: Path) -> Optional[str]:
    """Why ``path`` cannot take ``flag``'s output (None: it can), found before the run and creating nothing: the
    frames are not processed only for the file to fail at the end."""
    example, suffixes = OUTPUTS[flag]
    if path.is_dir():
        return f"{flag} {path} is a folder: give a file path, e.g. {path / example}"
    if suffixes and path.suffix.lower() not in suffixes:
        return f"{flag} {path}: the video writer takes {', '.join(suffixes)} files, e.g. {path.with_suffix('.mp4').name}"
    if flag == "--snapshot" and cv2 is not None and not cv2.haveImageWriter(str(path)):
        return f"{flag} {path}: OpenCV writes no image of that kind; end the name with .png, e.g. {path.with_suffix('.png').name}"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the folder that exists; the rest is created at the end
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {path}: {parent} is a file, not a folder"
    if why := unwritable(parent):
        return f"{flag} {path}: cannot write in {parent} ({why})"
    return None
