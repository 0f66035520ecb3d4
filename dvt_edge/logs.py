"""Quiet by default: what the toolchains print goes to a log file, not the user's terminal.

ExecuTorch, XNNPACK, coremltools, torchao and ONNX Runtime write from C++ and Python, to
file descriptors 1 and 2 and through ``logging`` and ``warnings``. :func:`quiet_toolchains`
points both descriptors at a log file for the duration of a step and hands back a stream to
the real terminal for our own progress bars and messages. ``verbose=True`` changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, TextIO

__all__ = ["quiet_toolchains"]

_ANNOUNCED: set[str] = set()


@contextlib.contextmanager
def quiet_toolchains(log_path: Optional[Path], verbose: bool = False) -> Iterator[TextIO]:
    """Send fd 1 and 2 (and so every library's output) to ``log_path`` (appended); yield the terminal.

    The log's path is printed once per process. Nested uses are harmless (the inner one
    appends to the same kind of file).
    """
    if verbose or log_path is None:
        yield sys.stderr
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if str(log_path) not in _ANNOUNCED:
        _ANNOUNCED.add(str(log_path))
        print(f"toolchain logs: {log_path}", file=sys.stderr, flush=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield console
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        console.close()
