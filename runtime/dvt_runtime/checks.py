"""Checks of what crosses into the runtime: inputs, thresholds, latencies (numpy only)."""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import sys
import warnings
from typing import Any, Iterator, Optional, Sequence

import numpy as np

__all__ = ["InputError", "NonFiniteOutput", "check_thresholds", "parse_thresholds", "positive_ms", "check_finite", "numbered", "class_key", "same_classes",
           "images_per_call"]


class InputError(ValueError):
    """The request's fault: an image of the wrong shape, dtype or with non-finite values, or a bad ``thresholds``,
    ``budget_ms``, ``deadline_ms`` or ``max_batch`` (a service's HTTP 400; any other error of ``predict`` is the service's:
    a closed bundle, a missing calibration, a broken artifact's :class:`NonFiniteOutput`)."""


#: Samples per stage call when ``predict``/``run_exits`` get no ``max_batch`` (artifacts that take any
#: batch), at most: measured on the CIFAR reference (ONNX Runtime, 1 thread), one call of 2,000 images held 2.6 GB
#: (ONNX Runtime's arena keeps it afterwards) and took 6.4 s; calls of 32 held 0.28 GB and took 2.5 s.
DEFAULT_MAX_BATCH = 32
#: ... and at most this many input pixels per call (32 images at 32 px, 1 at 224 px): on a T2T-ViT-12 at 224 px (ONNX Runtime
#: fp32, 1 thread, 32 images) calls of 32 took 96 to 98 ms an image against 71 to 78 ms for calls of 1 to 8, and held 1.3 GB
#: against 0.43 GB for calls of 1
DEFAULT_BATCH_PIXELS = DEFAULT_MAX_BATCH * 32 * 32


def images_per_call(image_pixels: int, pixel_budget: int, most: int, least: int = 1) -> int:
    """Images of ``image_pixels`` (H x W) per call within ``pixel_budget``, from ``least`` to ``most``: the one rule for
    default batch sizes (the runtime's stage calls, the export's batched check, PyTorch evaluation)."""
    return max(least, min(most, pixel_budget // max(1, int(image_pixels))))


FEW_IMAGES = 200  # below this many images to search on or to check on, thresholds and accuracies are said to be rough


def rough_thresholds(source: Optional[str]) -> Optional[int]:
    """How many images chose a manifest's default thresholds when fewer than ``FEW_IMAGES`` (from its
    ``thresholds_source``), else None."""
    n = re.search(r"on (\d+) verification images", source or "")
    return int(n.group(1)) if n and int(n.group(1)) < FEW_IMAGES else None


class NonFiniteOutput(ValueError):
    """An exit produced NaN or infinite logits: the answer would be meaningless."""


def positive_ms(name: str, v, allow_zero: bool = False) -> float:
    """A finite, positive (or with ``allow_zero`` non-negative) number of milliseconds, not a bool
    or a string; otherwise an InputError (a ValueError) naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number of milliseconds, got {type(v).__name__} {v!r}")
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number of milliseconds, got {v!r}")
    return float(v)


def check_thresholds(t, num_exits: int, where: str = "thresholds") -> list[Optional[float]]:
    """``num_exits - 1`` (or ``num_exits``) confidences in [0, 1] or None (never stop there)."""
    if isinstance(t, (str, bytes, dict)) or not hasattr(t, "__len__"):
        raise InputError(f"{where} must be a list of {num_exits - 1} confidences in [0, 1] (or None), got {t!r}")
    t = list(t)
    if len(t) not in (num_exits - 1, num_exits):
        raise InputError(f"{where}: need {num_exits - 1} (or {num_exits}) thresholds for {num_exits} exits, got {len(t)}")
    out: list[Optional[float]] = []
    for k, v in enumerate(t):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise InputError(f"{where}: threshold of exit {k + 1} must be a confidence in [0, 1] or None, got {v!r}")
        out.append(float(v))
    return out


def parse_thresholds(text: str, where: str = "--thresholds") -> list[Optional[float]]:
    """Command-line thresholds such as ``0.9,0.8`` (``-``, ``none`` or nothing: never stop at that exit) -> a list for
    :func:`check_thresholds`; a ValueError naming ``where`` for anything else."""
    out: list[Optional[float]] = []
    for part in str(text).split(","):
        part = part.strip()
        if part.lower() in ("", "none", "-"):
            out.append(None)
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"{where}: {part!r} is not a number (expected e.g. 0.9,0.8; 'none' never stops at that exit)") from None
        if not 0.0 <= v <= 1.0:  # NaN fails this too
            raise ValueError(f"{where}: {v:g} is outside [0, 1] (thresholds are softmax confidences)")
        out.append(v)
    return out


#: how far outside the preprocessing's value range a float input may reach: N(0, 1) inputs, which timing scripts
#: use, stay within 8 (a value beyond 8 standard deviations: about 1 in 1e15); raw 0-255 pixels do not
VALUE_MARGIN = 8.0
_FIX = "pass uint8 images (H, W, C) as they are (the bundle preprocesses them), or the output of bundle.preprocess"


UNNORMALIZED_SPREAD = 0.5  # 0-1 floats spanning at least this much, none negative, are warned as pixels never normalized
_PREPROCESSED_HERE = contextvars.ContextVar("preprocessed_here", default=False)


@contextlib.contextmanager
def preprocessed_here() -> Iterator[None]:
    """Within the block (this thread or task), float inputs are the runtime's own preprocessing of uint8 images (predict
    of files): one whose pixels normalize into [0, 1] is not warned as never normalized. No warning filter is touched."""
    token = _PREPROCESSED_HERE.set(True)
    try:
        yield
    finally:
        _PREPROCESSED_HERE.reset(token)


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the function calling this: the first frame outside this package (a
    warning then names the user's line, however deep in the runtime it is raised)."""
    here, f, level = os.path.dirname(__file__), sys._getframe(1), 1
    while f is not None and os.path.dirname(f.f_code.co_filename) == here:
        f, level = f.f_back, level + 1
    return level


def check_finite(x: np.ndarray, value_range: Optional[tuple[float, float]] = None, where: str = "input", fix: str = _FIX,
                 warn_unnormalized: bool = False) -> None:
    """float32 input: finite (NaN and infinity carry through min and max), and with ``value_range`` (the
    preprocessing's, :attr:`Preprocess.value_range`) not far outside what the preprocessing produces: raw pixels
    given as floats (0-255) would otherwise get confident nonsense. The margin (half the range on each side, at
    least ``VALUE_MARGIN``) leaves room for resampling overshoot, augmentation and standard-normal timing inputs.
    ``warn_unnormalized``: warn of 0-1 floats that the preprocessing would have made partly negative."""
    if not x.size:  # nothing to check (an empty batch is the caller's to refuse)
        return
    lo_v, hi_v = float(x.min()), float(x.max())
    if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
        raise InputError(f"{where} contains NaN or infinite values")
    if value_range is None:
        return
    lo, hi = value_range
    margin = max(0.5 * (hi - lo), VALUE_MARGIN)
    if lo_v < lo - margin or hi_v > hi + margin:
        raw = "these look like raw 0-255 pixels: " if hi_v > 20 and lo_v >= -1e-6 else ""
        raise InputError(f"{where} holds values from {lo_v:.4g} to {hi_v:.4g}, but this bundle's preprocessing (pixels / 255, minus "
                         f"mean, over std) gives {lo:.3g} to {hi:.3g}: {raw}{fix}")
    # normalized, a pixel darker than the mean is negative; 0-1 pixels of an image span much of [0, 1], and a flat frame
    # (a grey wall, a covered lens, zeros to warm up) preprocessed into [0, 1] does not. The text carries no figures:
    # Python says a warning once per line and text, not once per frame
    if warn_unnormalized and not _PREPROCESSED_HERE.get() and lo <= -0.5 and 0 <= lo_v and hi_v <= 1 and hi_v - lo_v >= UNNORMALIZED_SPREAD:
        warnings.warn(f"{where} holds values in [0, 1], none negative, though this bundle's preprocessing maps pixels darker "
                      f"than its mean below 0 (down to {lo:.3g}): 0-1 pixels never normalized get wrong answers; {fix}",
                      stacklevel=user_stacklevel())


def class_key(name: str) -> str:
    """A class name as compared across data sets, folders and bundles: case and every character but letters and digits
    aside (a folder cannot be named ``T-shirt/top``: ``t-shirt_top`` is that class; ``Airplane``, ``auto_mobile``)."""
    return "".join(ch for ch in str(name).casefold() if ch.isalnum())


def same_classes(a: Sequence[str], b: Sequence[str]) -> bool:
    """Two class lists naming the same classes in the same order, spelled alike (:func:`class_key`)."""
    return len(a) == len(b) and all(class_key(x) == class_key(y) and class_key(x) for x, y in zip(a, b))


def numbered(names) -> bool:
    """Class names that are only the indices "0".."N-1" (a file or checkpoint that names no classes)."""
    return [str(c) for c in names] == [str(i) for i in range(len(names))]


def _power_value(v: Any) -> str:
    """A recorded governor or ``nvpmodel -q`` output as compared: its "NV Power Mode: X" (the output may open with other
    lines, e.g. "NVPM WARN: fan mode is not set!"), else its first line; "" when blank or not text."""
    text = v.strip() if isinstance(v, str) else ""
    m = re.search(r"NV Power Mode:\s*(\S.*)", text)
    return m.group(1).strip() if m else (text.splitlines() or [""])[0]


def setting_differences(threads, device, my_threads: Optional[int], my_providers, my_version: Optional[str] = None) -> list[str]:
    """How a measurement's threads per session, execution providers (``device["providers"]``) and backend library version
    (``device["backend_version"]``) differ from a bundle's (a None or 0 thread count of the bundle is the backend's default:
    every core)."""
    said = []
    if isinstance(threads, int) and not isinstance(threads, bool) and threads != my_threads:
        said.append(f"{threads} thread(s) per session, this bundle runs {my_threads or 'the backend default (every core)'}")
    elif threads is None and my_threads:  # measured at the backend default, or at a count nobody recorded (an import)
        said.append(f"the backend default (every core) or an unrecorded thread count, this bundle runs {my_threads} thread(s)")
    theirs = device.get("providers") if isinstance(device, dict) else None
    if isinstance(theirs, list) and my_providers and list(theirs) != list(my_providers):
        said.append(f"execution providers {theirs}, this bundle runs {list(my_providers)}")
    version = device.get("backend_version") if isinstance(device, dict) else None
    # int8 kernels differ between onnxruntime (and ExecuTorch) releases; Core ML's speed is the OS's, not coremltools'
    if isinstance(version, str) and my_version and version != my_version and device.get("backend") != "coreml":
        said.append(f"{device.get('backend') or 'the backend'} {version}, this host runs {my_version}: another version's "
                    "latencies, and an int8 bundle's answers may differ")
    if isinstance(device, dict) and any(isinstance(device.get(k), str) for k in ("jetson_power_mode", "cpu_governor")):
        from dvt_runtime.device import power_facts  # a calibration made at MAXN and run at 15 W overran every budget, unsaid

        here = power_facts()
        for key, what in (("jetson_power_mode", "Jetson power mode"), ("cpu_governor", "CPU governor")):
            theirs_v, ours = (_power_value(v) for v in (device.get(key), here[key]))  # "": unknown
            if theirs_v and ours and theirs_v != ours:
                said.append(f"{what} {theirs_v!r}, this host runs {ours!r}")
    return said
