"""A container's limits (a pod's CPU and memory limits: Linux cgroups) bind the runtime, not the node's cores and memory.
The cgroup files are written here as the kernel shows them (v2 and v1), and the runtime reads them from there."""

from __future__ import annotations

import os

import pytest

from dvt_runtime import device
from dvt_runtime.backends import check_threads

GIB = 2**30


def _tree(root, files: dict) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """Point the runtime at a cgroup tree made here; returns a function that writes it."""
    root, proc = tmp_path / "sys_fs_cgroup", tmp_path / "proc_self_cgroup"
    monkeypatch.setattr(device, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(device, "PROC_CGROUP", str(proc))
    monkeypatch.setattr(device, "_affinity", lambda: 64)  # a 64-core node
    monkeypatch.setattr(device, "_meminfo_mb", lambda key: {"MemAvailable": 60000.0, "MemTotal": 64000.0}.get(key))

    def make(proc_text: str, files: dict) -> None:
        proc.write_text(proc_text)
        _tree(root, files)
    return make


def test_a_v2_pod_limit_is_the_runtimes_limit(cgroup):
    """cgroup v2 (a pod on a current Kubernetes node): cpu.max "200000 100000" is 2 CPUs on a 64-core node, memory.max 2 GiB
    of which 1.5 GiB used (0.25 GiB of it reclaimable page cache). The node's 64 cores and 60 GB had been taken as the
    pod's: no warning at 16 threads, and a batch the OOM killer would end passed the memory check."""
    cgroup("0::/kubepods/pod1/ctr\n", {"cgroup.controllers": "cpu memory\n",
                                       "kubepods/pod1/ctr/cpu.max": "max 100000\n",  # the container: no limit of its own
                                       "kubepods/pod1/cpu.max": "200000 100000\n",  # the pod's, an ancestor: it binds
                                       "kubepods/pod1/ctr/memory.max": f"{2 * GIB}\n",
                                       "kubepods/pod1/ctr/memory.current": f"{int(1.5 * GIB)}\n",
                                       "kubepods/pod1/ctr/memory.stat": f"anon 1\ninactive_file {GIB // 4}\nactive_file 5\n"})
    assert device.cpu_quota() == 2.0 and device.usable_cores() == 2
    assert device.cgroup_memory_mb() == (2048.0, 768.0) and device.available_memory_mb() == 768.0
    facts = device.device_facts()
    assert facts["cpu_quota"] == 2.0 and facts["memory_limit_mb"] == 2048.0
    with pytest.warns(UserWarning, match=r"threads=16 on a machine with 2 core\(s\)"):
        check_threads(16, warn=True)
    with pytest.warns(UserWarning, match=r"the backend's default threads .* may use 2 core\(s\) .* pass --threads 2 \(threads=2 in Python\)"):
        check_threads(0, warn=True)


def test_a_v1_container_limit_and_a_fractional_quota(cgroup):
    """cgroup v1 (docker on an older host): the controllers' own folders; 1.5 CPUs round up to 2 cores; a memory limit
    above the node's available memory leaves the node's figure."""
    cgroup("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
           {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "memory/docker/abc/memory.limit_in_bytes": f"{100 * GIB}\n", "memory/docker/abc/memory.usage_in_bytes": f"{GIB}\n",
            "memory/docker/abc/memory.stat": "total_inactive_file 0\n", "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/memory.usage_in_bytes": "5\n"})
    assert device.cpu_quota() == 1.5 and device.usable_cores() == 2
    assert device.cgroup_memory_mb() == (102400.0, 101376.0) and device.available_memory_mb() == 60000.0
    # mounted as cpu/ only (no cpu,cpuacct/ folder), and a cgroup namespace's path that climbs ("/.."): never above the root
    cgroup("3:cpu,cpuacct:/../docker/def\n", {"cpu/docker/def/cpu.cfs_quota_us": "300000\n", "cpu/docker/def/cpu.cfs_period_us": "100000\n"})
    assert device.cpu_quota() == 3.0


def test_no_limits_leave_the_machines_figures(cgroup):
    """Unlimited (v2 "max", v1's huge number) or no cgroup files at all (macOS, Windows, a phone): the node's figures."""
    cgroup("0::/user.slice\n", {"cgroup.controllers": "", "user.slice/cpu.max": "max 100000\n", "user.slice/memory.max": "max\n",
                                "user.slice/memory.current": "123\n"})
    assert device.cpu_quota() is None and device.usable_cores() == 64
    assert device.cgroup_memory_mb() == (None, None) and device.available_memory_mb() == 60000.0
    os.remove(device.PROC_CGROUP)
    assert device.cpu_quota() is None and device.cgroup_memory_mb() == (None, None) and device.usable_cores() == 64


def test_without_memavailable_the_check_is_not_fooled_by_free_pages(monkeypatch, cgroup):
    """A kernel before 3.14 has no MemAvailable: free pages alone (the fallback before) left out the page cache, and a
    batch that fits was refused; a phone's app that cannot read /proc/meminfo at all gets no figure (the check is skipped)."""
    cgroup("0::/\n", {})
    monkeypatch.setattr(device, "_meminfo_mb", lambda key: {"MemFree": 400.0, "Buffers": 100.0, "Cached": 6000.0}.get(key))
    assert device.available_memory_mb() == 6500.0
    monkeypatch.setattr(device, "_meminfo_mb", lambda key: None)
    assert device.available_memory_mb() is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: RLIMIT_AS")
def test_a_memory_limit_is_one_line_that_says_so(onnx_bundle):
    """Under a memory limit (ulimit -v, a container's), ONNX Runtime's arena failing mid-run was a traceback through
    predict; a library that could not be mapped was blamed on "another numpy or Python" with a reinstall that cannot help."""
    import subprocess
    import sys
    import textwrap

    from dvt_runtime.backends import _missing

    code = textwrap.dedent(f"""
        import resource, sys, numpy as np
        from dvt_runtime.bundle import Bundle
        from dvt_runtime.console import run_cli
        b = Bundle.open({str(onnx_bundle)!r}, device_name="")
        x = np.zeros((20000, *b.input_shape), np.float32)
        vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))  # 64 MiB more than it holds now
        sys.exit(run_cli(lambda: [None for _ in b.chain(x, len(x))] and 0))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "error: ONNX Runtime ran out of memory running a stage (Failed to allocate memory for requested buffer of size" in r.stderr
    assert r.stderr.rstrip().endswith("raise the process's memory limit (ulimit -v, the container's) or give it smaller batches")
    e = _missing("onnxruntime", ImportError("libonnxruntime.so.1.32.0: failed to map segment from shared object"))
    assert "could not be loaded into memory" in str(e) and "reinstall" not in str(e) and "another numpy" not in str(e)


def test_the_toolchains_output_is_held_without_a_temporary_folder(capfd, monkeypatch):
    """ExecuTorch's console output was held in a temporary file: with no writable temporary folder (a read-only container)
    no ExecuTorch bundle opened. It is held in memory where the OS can, and otherwise left where it goes."""
    import tempfile

    from dvt_runtime.backends import toolchain_output

    with monkeypatch.context() as m:  # undone before pytest's own capture needs a temporary file again
        m.setattr(tempfile, "tempdir", "/nonexistent/tmp")  # every temporary file fails
        with pytest.raises(RuntimeError):
            with toolchain_output("executorch"):
                os.write(1, b"kernel probe said this\n")
                raise RuntimeError("load failed")
        m.delattr(os, "memfd_create", raising=False)  # an OS without it, and no temporary folder either
        with toolchain_output("executorch"):
            os.write(1, b"passes through\n")
    out, err = capfd.readouterr()
    assert "kernel probe said this" in err and "passes through" in out  # held, then said with the failure; the other left alone


ORIN = "".join(f"processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
               f"CPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n" for i in range(8))
PHONE = "".join(f"processor\t: {i}\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n" for i, part in enumerate(["0xd05"] * 4 + ["0xd0b"] * 4))


def _board(monkeypatch, cpuinfo: str, model=None) -> None:
    """This host as a board: its /proc/cpuinfo and device-tree model (the other files read as they are)."""
    real = device._read
    monkeypatch.setattr(device, "_read", lambda path: cpuinfo if path == "/proc/cpuinfo" else model if "device-tree" in path else real(path))


def test_arm_boards_are_told_apart_and_know_their_own_profiles(monkeypatch, tmp_path):
    """On ARM the CPU name was 'aarch64' (a Jetson), 'BCM2835' (a Raspberry Pi 3 and 4 alike) or None (a slim container): a
    Pi 3's profile counted as a Pi 4's own, and an Orin in a slim container never knew its own profile."""
    import json
    import types

    from dvt_runtime.calibration import other_hosts_latencies

    _board(monkeypatch, ORIN, "NVIDIA Jetson AGX Orin Developer Kit")
    monkeypatch.setattr(device, "_cpu_model", lambda: None)  # a slim container: no platform.processor() either
    orin = device.device_facts()
    assert orin["cpu_cores"] == "ARM Cortex-A78AE x8" and orin["cpu_model"] is None
    assert device.profiled_here(types.SimpleNamespace(device=dict(orin)))  # its own, though its CPU has no name
    _board(monkeypatch, PHONE, "NVIDIA Jetson AGX Orin Developer Kit")  # the same board name: the cores alone tell them apart
    assert device._cpu_cores() == "ARM Cortex-A55 x4 + ARM Cortex-A76 x4"  # big.LITTLE: each kind counted
    assert not device.profiled_here(types.SimpleNamespace(device=dict(orin)))
    pi = "".join(f"processor\t: {i}\nCPU implementer\t: 0x41\nCPU part\t: {{part}}\n\n" for i in range(4)) + "Hardware\t: BCM2835\n"
    monkeypatch.setattr(device, "_cpu_model", lambda: "BCM2835")
    _board(monkeypatch, pi.format(part="0xd03"), "Raspberry Pi")  # a Pi 3 (Cortex-A53), named as a Pi 4 is below
    pi3 = device.device_facts()
    _board(monkeypatch, pi.format(part="0xd08"), "Raspberry Pi")  # a Pi 4 (Cortex-A72)
    assert not device.profiled_here(types.SimpleNamespace(device=dict(pi3)))
    older = {k: v for k, v in device.device_facts().items() if k != "cpu_cores"}  # this Pi 4's profile from before cpu_cores
    assert device.profiled_here(types.SimpleNamespace(device=older))
    cal = tmp_path / "pi.json"  # a calibration the Pi 3 priced, used on the Pi 4
    cal.write_text(json.dumps({"profile": {"device": pi3}}))
    assert other_hosts_latencies(cal) == "measured on another machine (cpu_cores 'ARM Cortex-A53 x4')"
    cal.write_text(json.dumps({"profile": {"device": older}}))
    assert other_hosts_latencies(cal) is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: RLIMIT_FSIZE")
def test_a_file_size_limit_is_said_with_its_fix(tmp_path):
    """--out under `ulimit -f` said only "File too large"; the previous file stays, no temporary file is left."""
    import subprocess
    import sys

    (tmp_path / "p.json").write_text("old")
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))\n"
            f"from dvt_runtime.io import atomic_write\n"
            f"try:\n    atomic_write({str(tmp_path / 'p.json')!r}, b'x' * 100)\nexcept OSError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"cannot write {tmp_path / 'p.json'}: File too large; the process's file size limit (ulimit -f) " \
                                  "is below it: raise it, then run again" in r.stdout, (r.stdout, r.stderr[-500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"] and (tmp_path / "p.json").read_text() == "old"
