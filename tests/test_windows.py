"""Windows' differences, emulated here (no Windows machine runs this suite): commands printed for cmd.exe and PowerShell,
Ctrl-Break, a file another program holds open, and whether the owner of an export's leftovers still runs."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import types
from pathlib import Path

import pytest

import dvt_runtime.console as console
import dvt_runtime.io as dio
from dvt_runtime.console import join_args, move_command, quote_arg, run_cli

install = importlib.import_module("dvt_edge.export.install")  # the module (the package exports a function of that name)


@pytest.mark.parametrize("windows", [False, True])
def test_commands_are_quoted_for_the_shell_that_runs_them(monkeypatch, windows):
    """cmd.exe keeps single quotes literally ('C:\\my runs' is two arguments there): on Windows, double quotes, which both
    cmd.exe and PowerShell read; elsewhere POSIX quoting, where $ and quotes stay literal."""
    monkeypatch.setattr(console, "WINDOWS", windows)
    if windows:
        assert quote_arg(r"C:\my runs\a.pt") == r'"C:\my runs\a.pt"' and quote_arg(r"C:\runs\a.pt") == r"C:\runs\a.pt"
        assert quote_arg("") == '""' and join_args(["python", "-m", "x", "a b"]) == 'python -m x "a b"'
        assert quote_arg(r"C:\R&D\b") == r'"C:\R&D\b"' and quote_arg("a|b") == '"a|b"'  # & and | split a command there
        assert quote_arg("C:\\a b\\") == '"C:\\a b\\\\"' and quote_arg('a"b') == '"a\\"b"'  # as programs read their argv
        assert move_command(r"C:\t\x.json", r"C:\my out\x.json") == r'move C:\t\x.json "C:\my out\x.json"'
    else:
        assert quote_arg("/my runs/a.pt") == "'/my runs/a.pt'" and quote_arg("$HOME") == "'$HOME'" and quote_arg("") == "''"
        assert join_args(["python", "-m", "x", "a b"]) == "python -m x 'a b'"
        assert move_command("/t/x.json", "/my out/x.json") == "mv /t/x.json '/my out/x.json'"


def test_a_hint_pastes_into_cmd(monkeypatch, tmp_path):
    """A hint the runtime prints (predict --budget-ms with no calibration) quotes its bundle path for the platform's shell."""
    from dvt_runtime import predict as P

    where = Path(r"C:\my bundles\cifar")
    bundle = types.SimpleNamespace(calibration=None, device_name="lab pc", calibration_path=lambda name: tmp_path / f"{name}.json",
                                   path=where, calibration_dir=where / "calibration")
    args = types.SimpleNamespace(bundle=str(where), budget_ms=2.0, deadline_ms=None, device_name="lab pc")
    monkeypatch.setattr(console, "WINDOWS", True)
    with pytest.raises(ValueError) as e:
        P._check_mode(bundle, args)
    assert r'--bundle "C:\my bundles\cifar"' in str(e.value) and '--device-name "lab pc"' in str(e.value) and "'" not in str(e.value)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="stands in for SIGBREAK with SIGUSR1")
def test_ctrl_break_ends_a_command_as_ctrl_c_does(monkeypatch, capsys):
    """Windows' Ctrl-Break (SIGBREAK) ended the process at once: no clean-up, no stats. Now it is an interrupt: the clean-up
    runs (a finally block here), one line, exit 130, and the handler before is back afterwards."""
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)  # the signal Windows sends, played by SIGUSR1
    previous = signal.signal(signal.SIGUSR1, before := lambda *a: None)  # the handler before (unhandled, it would end pytest)
    cleaned = []

    def main() -> int:
        try:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs before the next line
            return 0
        finally:
            cleaned.append(True)

    try:
        assert run_cli(main) == 130 and cleaned == [True]
        assert "interrupted (Ctrl-Break): stopped" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGUSR1) is before
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_file_held_open_on_windows_is_retried_then_explained(monkeypatch, tmp_path):
    """On Windows a file another program holds open (a virus scan, a viewer, a running predict) cannot be replaced: a write
    waits and tries again; still held, it says so and what to do. The previous file is kept, no temporary file is left."""
    real, calls, sleeps = os.replace, [], []

    def held(times):
        def fake(src, dst):
            calls.append(dst)
            if len(calls) <= times:
                raise PermissionError(13, "Access is denied")  # what a sharing violation gives on Windows
            real(src, dst)
        return fake

    target = tmp_path / "profile.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(dio.time, "sleep", sleeps.append)
    monkeypatch.setattr(console, "WINDOWS", True)
    monkeypatch.setattr(dio.os, "replace", held(2))
    dio.atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and len(calls) == 3 and sleeps == [0.05, 0.1]
    calls.clear(), sleeps.clear()
    monkeypatch.setattr(dio.os, "replace", held(99))
    with pytest.raises(PermissionError, match="another program has one of them open .* or it is read-only") as e:
        dio.atomic_write(target, b"newer")
    assert str(target) in str(e.value) and len(calls) == 6 and sum(sleeps) == pytest.approx(1.9)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["profile.json"]
    calls.clear(), sleeps.clear()
    monkeypatch.setattr(console, "WINDOWS", False)  # elsewhere a refusal is the folder's permissions: said at once
    with pytest.raises(PermissionError) as e:
        dio.atomic_write(target, b"newer")
    assert len(calls) == 1 and sleeps == [] and "another program" not in str(e.value)


class _Call:
    """One Windows call as ctypes exposes it (``restype`` and ``argtypes`` can be set on it)."""

    def __init__(self, fn):
        self.fn, self.restype, self.argtypes = fn, None, None

    def __call__(self, *a):
        return self.fn(*a)


class _Kernel32:
    """What ``_windows_pid_alive`` asks of Windows, for one process state."""

    def __init__(self, opened: bool, code: int = 259):
        self.opened, self.code, self.closed = opened, code, 0
        self.OpenProcess = _Call(lambda access, inherit, pid: 42 if self.opened else None)  # noqa: N815 (Windows' names)
        self.GetExitCodeProcess = _Call(self._exit_code)  # noqa: N815
        self.CloseHandle = _Call(self._close)  # noqa: N815

    def _exit_code(self, handle, ref):
        ref._obj.value = self.code
        return 1

    def _close(self, handle):
        self.closed += 1


@pytest.mark.parametrize("opened,error,code,alive", [(False, 87, 0, False),  # ERROR_INVALID_PARAMETER: no such process
                                                     (False, 5, 0, True),  # access denied: another user's, running
                                                     (True, 0, 259, True),  # STILL_ACTIVE
                                                     (True, 0, 0, False)])  # ended, its handle still open somewhere
def test_leftovers_of_a_dead_export_are_found_on_windows(monkeypatch, opened, error, code, alive):
    """Every owner counted as alive on Windows (os.kill would terminate it), so a killed export's hidden folders stayed for
    ever. The process is asked for its exit code instead (Windows' own calls, played here), and never signalled."""
    import ctypes

    k = _Kernel32(opened, code)
    never = lambda *a: pytest.fail("signalled a process on Windows")  # noqa: E731
    monkeypatch.setattr(install, "os", types.SimpleNamespace(**{**vars(os), "name": "nt", "kill": never}))  # this module only
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: k, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: error, raising=False)
    assert install._pid_alive(1234) is alive and k.closed == int(opened)
    assert k.OpenProcess.restype is ctypes.c_void_p  # a HANDLE is a pointer: ctypes' default int truncates a 64-bit one


def test_the_runtime_names_windows_once():
    """One flag says Windows for every command (predict's wildcards, quoting, retries)."""
    from dvt_runtime import predict as P

    assert P.WINDOWS is console.WINDOWS is (os.name == "nt") and sys.modules["dvt_runtime.io"]._console is console
