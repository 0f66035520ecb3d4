"""Facts about the machine a profile was measured on (stdlib + numpy; unreadable facts are None).

:func:`device_facts` records what explains a latency: CPU, cores, memory, OS, library
versions, thread setting, governor, temperatures and, on a Jetson, its power mode.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
from typing import Any, Optional

import numpy as np

from dvt_runtime.backends import backend_version

__all__ = ["available_memory_mb", "device_facts", "peak_rss_mb"]


# Device facts
# --------------------------------------------------------------------------------------


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # a fact that cannot be read is None, never an error
        return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\x00", "").strip() or None
    except OSError:
        return None


def _cpu_model() -> Optional[str]:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or None


def _affinity() -> Optional[int]:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _meminfo_mb(key: str) -> Optional[float]:
    m = re.search(rf"^{key}:\s*(\d+)\s*kB", _read("/proc/meminfo") or "", re.MULTILINE)
    return round(int(m.group(1)) / 1024, 1) if m else None


def _memory_mb() -> Optional[float]:
    return _meminfo_mb("MemTotal")


def available_memory_mb() -> Optional[float]:
    """Memory the system can give without swapping (Linux MemAvailable, else free pages), or None where unknown."""
    got = _meminfo_mb("MemAvailable")
    if got is not None:
        return got
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def _temperatures() -> Optional[list[dict[str, Any]]]:
    out = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        raw = _read(os.path.join(zone, "temp"))
        try:
            celsius = int(raw) / 1000.0 if raw is not None else None
        except ValueError:
            celsius = None
        if celsius is not None:
            out.append({"zone": os.path.basename(zone), "type": _read(os.path.join(zone, "type")), "celsius": celsius})
    return out or None


def _nvpmodel() -> Optional[str]:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    r = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=3)
    return r.stdout.strip() or None


def device_facts(threads: Optional[int] = None, backend: Optional[str] = None) -> dict[str, Any]:
    """Facts about this machine that explain its latencies; unreadable facts are None."""
    from dvt_runtime import __version__

    tegra = _read("/etc/nv_tegra_release")
    return {
        "device_name": _safe(socket.gethostname) or _safe(platform.node),
        "cpu_model": _safe(_cpu_model),
        "board": _read("/proc/device-tree/model"),
        "logical_cores": _safe(os.cpu_count),
        "affinity_cores": _safe(_affinity),
        "memory_total_mb": _safe(_memory_mb),
        "os": _safe(platform.platform),
        "machine": _safe(platform.machine) or None,
        "python": _safe(platform.python_version),
        "numpy": np.__version__,
        "dvt_runtime": __version__,
        "backend": backend,
        "backend_version": _safe(backend_version, backend) if backend else None,
        "threads": threads,
        "image_resize": _resize_impl(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperatures": _safe(_temperatures),
        "jetson_power_mode": _safe(_nvpmodel),
        "nv_tegra_release": tegra.splitlines()[0] if tegra else None,
    }


def _resize_impl() -> str:
    """Which code resizes camera frames: OpenCV, or the numpy fallback (several times slower on large frames)."""
    from dvt_runtime.preprocess import _cv2

    cv2 = _cv2()
    return f"opencv {cv2.__version__}" if cv2 is not None else "numpy (no OpenCV: pip install 'dvt-runtime[opencv]')"


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


