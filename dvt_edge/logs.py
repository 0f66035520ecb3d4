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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, TextIO

from dvt_runtime.io import output_to

__all__ = ["quiet_toolchains"]

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
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        if header:
            os.write(fd, f"\n==== {datetime.datetime.now().isoformat(timespec='seconds')} {header} ====\n".encode())
        with output_to(fd) as terminal:
            if terminal < 0:  # no terminal to keep (a closed stderr): our messages go where Python's stderr goes
                yield sys.stderr
            else:
                with os.fdopen(os.dup(terminal), "w", buffering=1) as console:
                    yield console
    finally:
        os.close(fd)
