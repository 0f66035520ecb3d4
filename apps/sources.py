"""Where the webcam demo's frames and model come from: a camera or a video file, and a bundle
(the one named by ``--bundle``, else the natural-image reference exported once to the cache)."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Optional

from .common import SOURCE_HINT, VIDEO_HINT, AppError, cv2, warn

__all__ = ["StillImage", "open_bundle", "open_source", "read_first_frame", "reference_bundle"]


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
            what = "a folder, not a video file" if p.is_dir() else f"no such file ({p.resolve()}): check the path"
            raise AppError(f"cannot read video {video!r}: {what}")
        if _still_image(p):  # OpenCV's video reader would ignore a photo's EXIF orientation
            return StillImage(p), f"image {video}"
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            cap.release()
            raise AppError(f"cannot read video {video!r}: OpenCV cannot decode it: {VIDEO_HINT}")
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
        raise AppError(f"camera {redacted(cam)} is not available (not connected, busy, or no permission). {SOURCE_HINT}")
    return cap, f"camera {redacted(cam)}"


def _still_image(p: Path) -> bool:
    """Whether ``p`` is named as a photo (a suffix image folders hold; a GIF plays as a video)."""
    try:
        from dvt_runtime.images import IMAGE_EXTS
    except ImportError:  # said when the bundle is opened
        return False
    return p.suffix.lower() in IMAGE_EXTS


class StillImage:
    """A photo given as ``--video``: its one frame as ``predict`` reads the file (EXIF orientation applied, which
    OpenCV's video reader ignores: a phone photo came out sideways), gray made BGR; the methods of a capture the
    app calls."""

    def __init__(self, path: Path):
        from dvt_runtime.images import ImageError, read_image

        try:
            img = read_image(path)
        except ImageError as e:
            raise AppError(f"cannot read image {str(path)!r}: {e}") from None
        self.frame = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img  # (H, W, 3) BGR
        self.pos = 0

    def isOpened(self) -> bool:
        return True

    def read(self):
        self.pos += 1
        return (True, self.frame.copy()) if self.pos == 1 else (False, None)

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_COUNT: 1.0, cv2.CAP_PROP_POS_FRAMES: float(min(self.pos, 1))}.get(prop, 0.0)

    def release(self) -> None:
        self.pos = 1


def redacted(source: object) -> str:
    """A camera as it may be printed and written (stats files get shared): the password of a URL
    (``rtsp://user:pass@host``) and of GStreamer's ``user-pw=`` replaced by ``***``."""
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s:]*):[^/@\s]*@", r"\1\2:***@", str(source))
    return re.sub(r"(user-pw=)(\"[^\"]*\"|\S+)", r"\1***", text)


def read_first_frame(cap, source: str, is_video: bool, retries: int = 0):
    """The source's first frame (a camera read again up to ``retries`` times: many drop the first grab after opening);
    AppError with the way out when it delivers none."""
    for attempt in range(retries + 1):
        try:
            ok, frame = cap.read()
        except cv2.error as e:  # a driver failure: one line, not a traceback
            raise AppError(f"{source} failed on its first read ({str(e).strip().splitlines()[-1]}): "
                           f"{VIDEO_HINT if is_video else SOURCE_HINT}") from None
        if ok and frame is not None:
            return frame
        if attempt < retries:
            time.sleep(0.02)
    what = "holds no decodable frame" if is_video else f"delivered no frame in {retries + 1} reads"
    raise AppError(f"{source} {what}: {VIDEO_HINT if is_video else SOURCE_HINT}")


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
    from dvt_edge.imageset import DataError

    ref = DEFAULT_REFERENCE
    try:
        d = cache_dir() / "bundles" / f"{ref.model}-onnx-fp32"
    except DataError as e:  # no home folder to keep the export in
        raise AppError(f"no --bundle given, and {e}; or pass --bundle DIR (python -m dvt_edge.export ...)") from None
    if not (d / "manifest.json").is_file():
        warn(f"no --bundle given: exporting the reference {ref.checkpoint.name} to {d} (once)")
        export_bundle(str(ref.checkpoint), "onnx", "fp32", out=str(d), force=d.exists(), progress=False)
    return d


def open_bundle(args):
    """Open the bundle named by ``args`` (the runtime is imported here, so ``--help`` works without it)."""
    if args.bundle is None:
        args.bundle = str(reference_bundle())
    try:
        from dvt_runtime.backends import BackendUnavailable, parse_providers
        from dvt_runtime.device import open_here
        from dvt_runtime.manifest import ManifestError
    except ImportError as e:
        raise AppError(f"dvt-runtime is not importable ({e}); install it: pip install './runtime[onnx]'") from None
    try:
        providers = parse_providers(getattr(args, "providers", None))
        with warnings.catch_warnings(record=True) as said:  # the runtime's warnings (e.g. no calibration for a device name)
            warnings.simplefilter("always")
            bundle = open_here(args.bundle, args.device_name, threads=args.threads, providers=providers,
                               calibration_dir=getattr(args, "calibration_dir", None))
    except (ManifestError, BackendUnavailable, FileNotFoundError, OSError, ValueError, TypeError) as e:  # ValueError: CalibrationError; TypeError: an option the backend does not take (--providers off ONNX Runtime)
        raise AppError(f"cannot open bundle {args.bundle}: {e}") from None
    for w in said:  # the runtime's own as the app's notes, not "file:line: UserWarning" with a source line
        if w.category is UserWarning:
            warn(str(w.message))
        else:  # a library's deprecation and the like: through the user's warning filters, as before
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return bundle
