"""Quiet by default: what the toolchains print goes to a log file, not the user's terminal.

ExecuTorch, XNNPACK, coremltools, torchao and ONNX Runtime write from C++ and Python, to
file descriptors 1 and 2 and through ``logging`` and ``warnings``. :func:`quiet_toolchains`
points both descriptors at a log file for the duration of a step and hands back a stream to
the real terminal for our own progress bars and messages. ``verbose=True`` changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, TextIO

from dvt_runtime.console import on_descriptor, output_to

__all__ = ["quiet_toolchains", "open_log", "log_problem", "log_footer"]

_ANNOUNCED: set[str] = set()


@contextlib.contextmanager
def quiet_toolchains(log_path: Optional[Path], verbose: bool = False, header: Optional[str] = None) -> Iterator[TextIO]:
    """Send fd 1 and 2 (and so every library's output) to ``log_path`` (appended); yield the terminal.

    The log's path is printed once per process. Nested uses are harmless (the inner one
    appends to the same kind of file). ``header``: a line written first, with the time, saying whose lines follow
    (several exports append to one log).
    """
    if verbose or log_path is None:
        yield sys.stderr
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if str(log_path) not in _ANNOUNCED:
        _ANNOUNCED.add(str(log_path))
        print(f"toolchain logs: {log_path}", file=sys.stderr, flush=True)
    fd = open_log(log_path)
    try:
        if header:
            os.write(fd, f"\n==== {datetime.datetime.now().isoformat(timespec='seconds')} {header} ====\n".encode("utf-8", "surrogateescape"))  # a path given in non-UTF-8 bytes: as given
        user = sys.stderr  # where the user reads: a notebook's cell is not descriptor 2 (that is the server's terminal)
        with output_to(fd) as terminal:
            if terminal < 0 or not on_descriptor(user, 2):  # no terminal (a closed stderr), or a notebook: Python's stderr
                yield user
            else:
                with os.fdopen(os.dup(terminal), "w", buffering=1) as console:
                    yield console
    finally:
        os.close(fd)


def log_footer(log_path: Optional[Path], text: str) -> None:
    """``text`` appended to the log after a timed ``====`` line, as ``quiet_toolchains``' header opens one: how the work
    that header names ended, for whoever reads the log later (its notes had reached the terminal only). Best effort: a
    log that cannot be written now loses only this."""
    first, _, rest = text.partition("\n")
    line = f"==== {datetime.datetime.now().isoformat(timespec='seconds')} {first} ====\n" + (rest + "\n" if rest else "")
    try:  # never in the way of what the export ends with (its error, or its bundle already in place)
        if log_path is None or log_problem(Path(log_path)) or not Path(log_path).exists():
            return
        fd = open_log(Path(log_path))
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass


def log_problem(log_path: Path) -> Optional[str]:
    """Why ``log_path`` cannot take a toolchain log (a link: the lines would land where it points; a pipe would block;
    a folder), else None."""
    if log_path.is_symlink():
        return f"the toolchain log {log_path} is a link (to {os.readlink(log_path)}): its lines would be appended there"
    if log_path.exists() and not log_path.is_file():
        return f"the toolchain log {log_path} exists and is not a plain file"
    return None


def open_log(log_path: Path) -> int:
    """A descriptor appending to ``log_path`` (created if missing); ValueError for a link or anything but a plain file,
    checked on the file opened (no link followed, no pipe waited on)."""
    if why := log_problem(log_path):
        raise ValueError(f"{why}; remove it (a plain file of that name is appended to) or write elsewhere")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(log_path, flags, 0o666)
    except OSError as e:
        raise ValueError(f"cannot open the toolchain log {log_path} ({e.strerror}); remove it or write elsewhere") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # made a link or a pipe since the check above
        os.close(fd)
        raise ValueError(f"the toolchain log {log_path} is not a plain file; remove it or write elsewhere")
    return fd


def pyplot():
    """matplotlib's pyplot on the Agg backend (files, no display), with a configuration folder it can write: under a
    read-only or missing home (CI, containers) matplotlib printed several lines asking for MPLCONFIGDIR on every run."""
    import tempfile

    if not os.environ.get("MPLCONFIGDIR"):
        try:  # where matplotlib keeps its configuration and its font cache on Linux (macOS: ~/.matplotlib for both)
            home = Path.home()
            where = [Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
                     Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"] if sys.platform != "darwin" else [home / ".matplotlib"]
            for w in where if os.name != "nt" else []:  # Windows: matplotlib's own folders under the user's profile
                w.mkdir(parents=True, exist_ok=True)
            usable = all(os.access(w, os.W_OK) for w in where) if os.name != "nt" else True
        except (OSError, RuntimeError):  # RuntimeError: no home folder at all
            usable = False
        if not usable:
            os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="dvt-edge-matplotlib-")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
