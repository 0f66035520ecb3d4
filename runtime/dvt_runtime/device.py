"""Facts about the machine a profile was measured on (stdlib + numpy; unreadable facts are None).

:func:`device_facts` records what explains a latency: CPU, cores, memory, OS, library
versions, thread setting, governor, temperatures and, on a Jetson, its power mode.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from dvt_runtime.backends import backend_version

__all__ = ["BatchMemoryError", "this_host", "check_device_name", "available_memory_mb", "cgroup_memory_mb", "cpu_quota", "usable_cores", "check_batch_memory", "contention_since", "contention_snapshot", "cpu_model", "current_rss_mb", "device_facts", "peak_rss_mb"]


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
    for key in ("model name", "Hardware", "Processor", "cpu model"):  # every Pi says BCM2835 (cpu_cores and board tell them apart)
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or None


#: ARM's CPU parts (``CPU part`` in /proc/cpuinfo) by implementer (``CPU implementer``), for the cores a profile records
_ARM_PARTS = {0x41: ("ARM", {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72",
                             0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77",
                             0xd40: "Neoverse-V1", 0xd41: "Cortex-A78", 0xd42: "Cortex-A78AE", 0xd44: "Cortex-X1", 0xd46: "Cortex-A510",
                             0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd49: "Neoverse-N2", 0xd4b: "Cortex-A78C", 0xd4d: "Cortex-A715",
                             0xd4e: "Cortex-X3", 0xd4f: "Neoverse-V2", 0xd80: "Cortex-A520", 0xd81: "Cortex-A720", 0xd82: "Cortex-X4"}),
              0x4e: ("NVIDIA", {0x004: "Carmel"}), 0x51: ("Qualcomm", {}), 0x61: ("Apple", {}), 0x48: ("HiSilicon", {})}


def _cpu_cores() -> Optional[str]:
    """The cores by kind, from /proc/cpuinfo's per-core ``CPU implementer`` / ``CPU part`` (ARM, where ``model name`` is absent
    or generic and big.LITTLE mixes kinds): ``"ARM Cortex-A55 x4 + ARM Cortex-A76 x4"``; None where the OS does not say."""
    kinds: dict[str, int] = {}
    for block in (_read("/proc/cpuinfo") or "").split("\n\n"):
        impl = re.search(r"^CPU implementer\s*:\s*(0x[0-9a-fA-F]+)\s*$", block, re.MULTILINE)
        part = re.search(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)\s*$", block, re.MULTILINE)
        if impl and part:
            vendor, parts = _ARM_PARTS.get(int(impl.group(1), 16), (f"implementer {impl.group(1)}", {}))
            name = f"{vendor} {parts.get(int(part.group(1), 16), f'part {part.group(1)}')}"
            kinds[name] = kinds.get(name, 0) + 1
    return " + ".join(f"{k} x{n}" for k, n in kinds.items()) or None


def cpu_model() -> Optional[str]:
    """This machine's CPU model as the OS names it (``/proc/cpuinfo``, else ``platform.processor()``); None if unknown."""
    return _safe(_cpu_model)


def _sched_ns() -> Optional[tuple[int, int]]:
    """(on a CPU, runnable but waiting for one) nanoseconds summed over this process's threads (Linux schedstat), or None."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    run = wait = 0
    for t in tasks:
        parts = (_read(f"/proc/self/task/{t}/schedstat") or "").split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            run, wait = run + int(parts[0]), wait + int(parts[1])
    return (run, wait) if run else None


def _steal_jiffies() -> Optional[tuple[int, int]]:
    """(stolen by the hypervisor, all) CPU time of the whole machine so far (Linux /proc/stat), or None."""
    f = ((_read("/proc/stat") or "").splitlines() or [""])[0].split()
    if len(f) < 9 or f[0] != "cpu" or not all(v.isdigit() for v in f[1:9]):
        return None
    return int(f[8]), sum(int(v) for v in f[1:9])


def contention_snapshot() -> dict[str, Any]:
    """What :func:`contention_since` compares a measurement's end with."""
    return {"sched": _safe(_sched_ns), "steal": _safe(_steal_jiffies)}


def contention_since(snap: dict[str, Any]) -> dict[str, Optional[float]]:
    """How much the work since ``snap`` competed for the CPU: ``wait_pct``, the share of this process's runnable time its
    threads waited for a CPU (other processes, or more threads than cores), and ``steal_pct``, the share of the machine's
    CPU time a hypervisor took; None where the OS does not say (not Linux)."""
    out: dict[str, Optional[float]] = {"wait_pct": None, "steal_pct": None}
    a, b = snap.get("sched"), _safe(_sched_ns)
    if a and b and b[0] > a[0] and b[1] >= a[1]:
        run, wait = b[0] - a[0], b[1] - a[1]
        out["wait_pct"] = round(100 * wait / (run + wait), 2)
    a, b = snap.get("steal"), _safe(_steal_jiffies)
    if a and b and b[1] > a[1] and b[0] >= a[0]:
        out["steal_pct"] = round(100 * (b[0] - a[0]) / (b[1] - a[1]), 2)
    return out


def _affinity() -> Optional[int]:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _meminfo_mb(key: str) -> Optional[float]:
    m = re.search(rf"^{key}:\s*(\d+)\s*kB", _read("/proc/meminfo") or "", re.MULTILINE)
    return round(int(m.group(1)) / 1024, 1) if m else None


CGROUP_ROOT, PROC_CGROUP = "/sys/fs/cgroup", "/proc/self/cgroup"  # where a container's limits are (Linux cgroups v1 and v2)
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge number of bytes


def _cgroup_dirs(controller: str) -> list[str]:
    """The cgroup folders whose ``controller`` limits ("cpu", "memory") bind this process: its own and its ancestors',
    innermost first, those that exist (v2's one hierarchy, or v1's for that controller)."""
    out: list[str] = []
    for line in (_read(PROC_CGROUP) or "").splitlines():
        num, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if num == "0" and not ctrls:  # v2 (mounted at the root, or at unified/ beside v1's)
            v2 = os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))
            bases = [CGROUP_ROOT if v2 else os.path.join(CGROUP_ROOT, "unified")]
        elif controller in ctrls.split(","):  # mounted as "cpu,cpuacct", or only as "cpu" (the link beside it)
            bases = list(dict.fromkeys([os.path.join(CGROUP_ROOT, ctrls), os.path.join(CGROUP_ROOT, controller)]))
        else:
            continue
        parts = [q for q in path.split("/") if q not in ("", ".", "..")]  # a cgroup namespace's "/../x": never above the root
        dirs = [os.path.join(base, *parts[:i]) for base in bases for i in range(len(parts), -1, -1)]
        out += [d for d in dirs if os.path.isdir(d) and os.path.realpath(d) not in map(os.path.realpath, out)]
    return out


def cpu_quota() -> Optional[float]:
    """CPUs' worth of time this process's cgroup may use (a container's ``--cpus``, a pod's CPU limit: cgroup v2 ``cpu.max``,
    v1 ``cpu.cfs_quota_us``), the tightest of its cgroup and ancestors; None when unlimited or not told."""
    quotas = []
    for d in _cgroup_dirs("cpu"):
        v2 = (_read(os.path.join(d, "cpu.max")) or "").split()
        if v2 and v2[0] != "max":
            quotas.append(int(v2[0]) / int(v2[1] if len(v2) > 1 else 100000))
        q, per = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        if q and per and int(q) > 0:
            quotas.append(int(q) / int(per))
    return min(quotas) if quotas else None


def cgroup_memory_mb() -> tuple[Optional[float], Optional[float]]:
    """(limit, available) MiB in this process's tightest memory cgroup (a container's or pod's limit), available being the
    limit less what it uses, its reclaimable page cache counted as free (as Kubernetes counts a pod's working set);
    (None, None) when unlimited or not told."""
    best: tuple[Optional[float], Optional[float]] = (None, None)
    for d in _cgroup_dirs("memory"):
        v2 = _read(os.path.join(d, "memory.max"))
        limit, use, stat = ((v2, _read(os.path.join(d, "memory.current")), "inactive_file") if v2 is not None else
                            (_read(os.path.join(d, "memory.limit_in_bytes")), _read(os.path.join(d, "memory.usage_in_bytes")), "total_inactive_file"))
        if not limit or limit == "max" or int(limit) >= _UNLIMITED or use is None:
            continue
        m = re.search(rf"^{stat} (\d+)$", _read(os.path.join(d, "memory.stat")) or "", re.MULTILINE)
        avail = (int(limit) - int(use) + (int(m.group(1)) if m else 0)) / 2**20
        if best[1] is None or avail < best[1]:
            best = (round(int(limit) / 2**20, 1), round(max(avail, 0.0), 1))
    return best


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS says it, else the machine's, and no more than its
    cgroup's CPU quota (rounded up): a 2-CPU container on a 64-core node has 2, not 64."""
    cores = _affinity() or os.cpu_count() or 1
    quota = _safe(cpu_quota)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _memory_mb() -> Optional[float]:
    return _meminfo_mb("MemTotal")


def available_memory_mb() -> Optional[float]:
    """Memory this process can be given without swapping or its container's OOM killer: Linux's MemAvailable (a kernel
    before 3.14: free + buffers + page cache), no more than its cgroup's limit leaves; None where unknown (a phone's app
    may not read /proc/meminfo: free pages alone, its fallback before, refused batches that fit)."""
    got = _meminfo_mb("MemAvailable")
    if got is None and (free := _meminfo_mb("MemFree")) is not None:
        got = free + (_meminfo_mb("Buffers") or 0.0) + (_meminfo_mb("Cached") or 0.0)
    in_cgroup = (_safe(cgroup_memory_mb) or (None, None))[1]
    return min(got, in_cgroup) if got is not None and in_cgroup is not None else got if got is not None else in_cgroup


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


#: the fix for a device name given as a throughput calibration's ('x-batch8'), by where it was given ({device}, {n})
BATCH_NAME_FIX = {"cli": "give the batch size as --batch {n}",
                  "api": "open the bundle with device_name={device!r} and call use_calibration({device!r}, batch={n})",
                  "predict": ("predict and the webcam run the device's batch-1 calibration: --device-name {device!r} (calibrate it "
                              "with python -m dvt_runtime.calibrate --device-name {device!r})")}


def check_device_name(name: str, error: type = ValueError, where: str = "cli") -> None:
    """A device name that makes no calibration file name ('', '.', 'x.json', 'x-batch8', a throughput calibration's) is
    refused with ``error``, wherever it came from (--device-name, a profile); ``where``: a key of ``BATCH_NAME_FIX``."""
    if not isinstance(name, str) or not name.strip() or name.startswith("."):  # '', '.', '../../etc' (a hidden file)
        raise error(f"device name {name!r} names no device, or starts with '.' (a hidden file): pass one such as 'pixel8', "
                    f"or drop --device-name for this host ({this_host()!r})")
    if name.lower().endswith(".json"):
        stem = f": --device-name {name[:-5]!r}" if name[:-5].strip(". ") else ""
        raise error(f"device name {name!r}: name the device, not the file (calibration/<device>.json is written for it){stem}")
    if m := re.search(r"-batch(\d+)$", name):  # calibration/<device>-batch<N>.json is the device's calibration at batch N
        raise error(f"device name {name!r} ends like a throughput calibration's file (-batch{m.group(1)}): name the device "
                    f"({name[:m.start()]!r}); " + BATCH_NAME_FIX[where].format(device=name[:m.start()], n=m.group(1)))


def this_host() -> str:
    """The device name of this host: what a calibration made here is saved under by default, and what predict and the
    webcam load by default. On macOS the Bonjour name (``scutil --get LocalHostName``): its host name follows the network
    (``dhcp-10-1-2-3.corp``, ``localhost``), so a calibration made at home went unused at work. ``DVT_DEVICE_NAME``, when
    set, names it instead: a container's host name is its pod's (``infer-7c9f8b-p9zz1``), new at every restart."""
    if name := os.environ.get("DVT_DEVICE_NAME", "").strip():
        if name.startswith(".") or name.lower().endswith(".json") or re.search(r"-batch\d+$", name):  # as --device-name is refused
            raise ValueError(f"DVT_DEVICE_NAME={name!r} names no device's calibration file (a hidden file, a file name, or a "
                             "throughput calibration's -batchN): set it to a name such as 'kiosk-3', or unset it")
        return name
    if sys.platform == "darwin" and (name := _bonjour_name()):
        return name
    return _safe(socket.gethostname) or _safe(platform.node) or "localhost"


@functools.lru_cache(maxsize=1)
def _bonjour_name() -> Optional[str]:
    """macOS's LocalHostName, asked once per process (a subprocess), or None."""
    try:
        r = subprocess.run(["scutil", "--get", "LocalHostName"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def open_here(path, device_name: Optional[str] = None, **kw):
    """``Bundle.open`` with ``device_name``'s calibration or, by default, this host's when it has one. A defaulted name
    never stops the bundle from opening: this host's file made for other artifacts (kept by ``export --force``) is a
    warning, and another device's files are not suggested (the host is not that device)."""
    from dvt_runtime.bundle import Bundle
    from dvt_runtime.calibration import calibration_exists

    if device_name is not None:  # '' had meant no calibration, unsaid
        check_device_name(device_name, where="predict")
        return Bundle.open(path, device_name=device_name, **kw)
    bundle = Bundle.open(path, **kw, device_name="")
    host = this_host()
    try:
        if calibration_exists(bundle.calibration_path(host)):  # a CalibrationError where this user may not search calibration/
            bundle.use_calibration(host)
            bundle.device_name = host
    except (ValueError, OSError) as e:  # CalibrationError: stale, another batch, malformed, unreadable
        warnings.warn(f"this host's calibration is not used ({e}); running without it", stacklevel=2)
    return bundle


def host_calibration(bundle) -> Optional[Path]:
    """This host's calibration file in ``bundle``, or None (none there, or a host name no file can be named after)."""
    try:
        return p if (p := bundle.calibration_path(this_host())).is_file() else None
    except (ValueError, OSError):
        return None


def say_host_calibration(bundle) -> None:
    """Warn (at ``Bundle.open``'s caller) when this host's calibration lies in ``bundle`` unused: the CLI's predict runs it
    by default, so a service on the API had run other thresholds without a word."""
    if (p := host_calibration(bundle)) is not None:
        warnings.warn(f"{p} is this host's calibration, but the bundle was opened without device_name: "
                      f"it runs the manifest's thresholds. Bundle.open(..., device_name={this_host()!r}) uses it (as dvt-runtime predict "
                      "and the webcam do); device_name='' keeps the manifest's without this warning", stacklevel=3)


def power_facts() -> dict[str, Optional[str]]:
    """The settings that change a machine's speed from one run to the next: cpu0's frequency governor, a Jetson's power mode."""
    return {"cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"), "jetson_power_mode": _safe(_nvpmodel)}


def device_facts(threads: Optional[int] = None, backend: Optional[str] = None) -> dict[str, Any]:
    """Facts about this machine that explain its latencies; unreadable facts are None."""
    from dvt_runtime import __version__

    tegra = _read("/etc/nv_tegra_release")
    return {
        "device_name": this_host(),
        "cpu_model": _safe(_cpu_model),
        "cpu_cores": _safe(_cpu_cores),  # ARM: the cores by kind (a Jetson's cpu_model is only "aarch64", a Pi 3's and 4's alike)
        "board": _read("/proc/device-tree/model"),
        "logical_cores": _safe(os.cpu_count),
        "affinity_cores": _safe(_affinity),
        "cpu_quota": _safe(cpu_quota),  # a container's CPU limit (CPUs' worth of time); None: unlimited
        "memory_total_mb": _safe(_memory_mb),
        "memory_limit_mb": (_safe(cgroup_memory_mb) or (None, None))[0],  # a container's memory limit; None: unlimited
        "os": _safe(platform.platform),
        "machine": _safe(platform.machine) or None,
        "python": _safe(platform.python_version),
        "numpy": np.__version__,
        "dvt_runtime": __version__,
        "backend": backend,
        "backend_version": _safe(backend_version, backend) if backend else None,
        "threads": threads,
        "image_resize": _resize_impl(),
        **power_facts(),
        "temperatures": _safe(_temperatures),
        "nv_tegra_release": tegra.splitlines()[0] if tegra else None,
    }


HOST_FACTS = ("device_name", "logical_cores", "machine", "os")  # a profile telling all of these as this host's was taken here,
SAME_IF_TOLD = ("cpu_model", "cpu_cores", "board")  # and these as this host's where it tells them (unknown on both sides: the same)


def profiled_here(profile) -> bool:
    """True when a given ``LatencyProfile`` was taken on this very host (its device name and hardware facts are this
    host's), so thresholds priced by it can be measured here; False for another device's (a phone's, a Jetson's)."""
    theirs, ours = profile.device if isinstance(profile.device, dict) else {}, device_facts()
    if sys.platform == "darwin" and theirs.get("device_name") == _safe(socket.gethostname):  # a Mac's profile from before 0.2.0
        ours = dict(ours, device_name=theirs["device_name"])  # named it by its host name (then its default device name)
    return (all(theirs.get(k) is not None and theirs.get(k) == ours.get(k) for k in HOST_FACTS)
            and all(theirs[k] == ours.get(k) for k in SAME_IF_TOLD if k in theirs))  # cpu_cores: not in a profile before it


def _resize_impl() -> str:
    """Which code resizes camera frames: OpenCV, or the numpy fallback (several times slower on large frames)."""
    from dvt_runtime.preprocess import _cv2

    cv2 = _cv2()
    return f"opencv {cv2.__version__}" if cv2 is not None else "numpy (no OpenCV: pip install './runtime[opencv]')"


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource  # POSIX only: on Windows the runtime imports all the same, and no peak is recorded

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError, ValueError):
        return None
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def current_rss_mb() -> Optional[float]:
    """Resident set size of this process now (Linux ``/proc/self/statm``), or None where unknown."""
    fields = (_read("/proc/self/statm") or "").split()
    try:
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (IndexError, ValueError, OSError, AttributeError):
        return None


# Memory of batched stage calls
# --------------------------------------------------------------------------------------

MEMORY_PROBE = (4, 16)  # batch sizes the chain is run at to measure its memory per image
# A profile's peak over the probe's growth per image times the batch: the CIFAR reference's ONNX fp32 bundle grows
# 1.3 MiB per image between the probes, and its profile at batch 1000 peaked at 2,517 MB (ru_maxrss; ~70 of them the
# opened bundle) where this margin estimates 2,598 MiB.
MEMORY_MARGIN = 2.0
MEMORY_WARN = 0.5  # warn when the estimate exceeds this share of the available memory


class BatchMemoryError(ValueError):
    """Stage calls of the requested batch would not fit in this machine's memory (found before running them)."""


_PROBE = """
import json, sys
import numpy as np
from dvt_runtime.bundle import Bundle
from dvt_runtime.device import current_rss_mb
path, threads, opts, sizes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
b = Bundle.open(path, threads=threads, verify=False, **opts, device_name="")
x = np.random.default_rng(0).standard_normal((1, *b.input_shape)).astype(np.float32)
rss = []
for n in sizes:
    for _ in b.chain(np.repeat(x, n, axis=0), n):
        pass
    rss.append(current_rss_mb())
print(json.dumps(rss))
"""
_PER_IMAGE: dict[tuple, Optional[float]] = {}  # bundle identity -> MiB per image, measured once per process
_CHECKED: dict[tuple, int] = {}  # bundle identity -> the largest images per call that passed (this process's arena holds it)


def _identity(bundle) -> tuple:
    """The bundle's folder, artifacts, threads and providers: what its memory per image depends on."""
    providers = getattr(bundle.live_sessions()[0], "providers", None)
    return (str(Path(bundle.path).resolve()), tuple(e.sha256 for e in bundle.manifest.exits), bundle.threads, tuple(providers or ()))


def _mb_per_image(bundle, key: tuple) -> Optional[float]:
    """Memory per image of the bundle's chain, measured in a fresh process (freed memory this process keeps would
    hide the growth): its resident memory after chains at each ``MEMORY_PROBE`` batch (a peak would hold the
    sessions' creation). None where it cannot be measured
    (the probe failed, or showed no growth), with a note saying so. ``key``: the bundle's :func:`_identity`."""
    if key not in _PER_IMAGE:
        providers = key[3]
        opts = {"providers": list(providers)} if providers else {}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this process's dvt_runtime
        try:
            done = subprocess.run([sys.executable, "-c", _PROBE, key[0], json.dumps(bundle.threads), json.dumps(opts),
                                   json.dumps(list(MEMORY_PROBE))], capture_output=True, text=True, timeout=300, env=env)
            rss = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr.strip()[-300:]
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
            rss = str(e)
        ok = isinstance(rss, list) and len(rss) == 2 and all(isinstance(r, (int, float)) for r in rss) and rss[1] > rss[0]
        _PER_IMAGE[key] = (rss[1] - rss[0]) / (MEMORY_PROBE[1] - MEMORY_PROBE[0]) if ok else None
        if not ok:
            warnings.warn(f"the memory of a large batch could not be measured, so it is not checked ({rss or 'no output'})",
                          stacklevel=4)
    return _PER_IMAGE[key]


def check_batch_memory(bundle, batch: int, what: str = "batch", held_mb: Optional[Callable[[int], float]] = None) -> Optional[dict[str, Any]]:
    """Refuse, before running it, a batch whose stage calls would not fit in memory.

    ONNX Runtime's arena grows with the largest call and keeps it (a profile of the CIFAR reference at batch 4000
    grew to 10 GB). The growth per image is measured once per bundle in a fresh process (:func:`_mb_per_image`);
    times the images per call and ``MEMORY_MARGIN``, plus ``held_mb(batch)`` (MiB of inputs the caller will hold at that
    batch, so that the batch said to fit counts its own), it is compared
    with the available memory, less what this process already holds for the largest batch that passed (its arena
    is reused): over it is an error, over ``MEMORY_WARN`` of it a warning. Returns the estimate, or None for calls
    of at most ``MEMORY_PROBE[-1]`` images (nothing runs) or where memory cannot be read (Linux's MemAvailable).
    """
    calls = min(int(batch), bundle.batch_limit())
    if calls <= MEMORY_PROBE[-1]:
        return None
    avail, key = available_memory_mb(), _identity(bundle)
    per_image = _mb_per_image(bundle, key) if avail is not None else None  # no probe where the verdict cannot be given
    if per_image is None:
        return None
    done = _CHECKED.get(key, 0)  # what earlier calls at that size already hold in this process is not needed again
    held = held_mb or (lambda b: 0.0)
    inputs = held(int(batch))
    need = MEMORY_MARGIN * per_image * calls + inputs
    est = {"images_per_call": calls, "mb_per_image": round(per_image, 3), "estimated_mb": round(need, 1), "available_mb": avail}
    if calls <= done:
        return est
    said = (f"{what} {batch}: stage calls of {calls} images need about {need:.0f} MiB here ({per_image:.2f} MiB per image "
            f"measured in a fresh process at batch {MEMORY_PROBE[0]} and {MEMORY_PROBE[1]}, x{MEMORY_MARGIN:g} for the peak"
            + (f", + {inputs:.0f} MiB of inputs" if inputs else "") + f"), and {avail:.0f} MiB is available")
    if need - MEMORY_MARGIN * per_image * done > avail:
        lo, hi = 1, int(batch)  # the largest batch whose calls and inputs fit (inputs scale with it: held per batch)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if MEMORY_MARGIN * per_image * (min(mid, bundle.batch_limit()) - done) + held(mid) <= avail else (lo, mid - 1)
        fits = lo
        raise BatchMemoryError(f"{said}: use a {what} of at most {max(fits, 1)}")
    if need > MEMORY_WARN * avail:  # once per bundle and batch: a batch that passed returns above when checked again
        warnings.warn(f"{said}: other programs may be pushed out of memory", stacklevel=2)
    _CHECKED[key] = calls
    return est
