"""What a command shows and how it ends (numpy-free, stdlib only): progress bars, plain warnings, library output pointed
elsewhere, SIGTERM as Ctrl-C, output a console cannot encode, a reader that went away, and ``run_cli`` around them all."""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional

from dvt_runtime.schema import printable

__all__ = ["progress", "progress_silenced", "silenced_progress", "output_to", "plain_warnings", "sigterm_as_interrupt", "run_cli",
           "WINDOWS", "quote_arg", "join_args", "move_command"]

WINDOWS = os.name == "nt"  # cmd.exe and PowerShell: their own quoting, Ctrl-Break, wildcards left to the command


_PLAIN = re.compile(r"[A-Za-z0-9_\-.:\\/=+]+")  # what cmd.exe and PowerShell both read as it is


def quote_arg(arg: object) -> str:
    """``arg`` as one argument of a command printed for the user to paste: POSIX quoting (``'my runs'``); on Windows double
    quotes around anything but plain characters (``"C:\\R&D\\b"``: cmd.exe keeps single quotes literally, and ``&``, ``|``,
    ``;`` or a space would split the command there), embedded quotes and the backslashes before them escaped as programs
    read their arguments (``subprocess.list2cmdline``'s rules). ``%VAR%`` (cmd.exe) and ``$x`` (PowerShell) still expand
    inside double quotes."""
    text = str(arg)
    if not printable(text):  # a control character printed would run in the terminal
        return _ansi_c_quoted(text)
    if not WINDOWS:
        return shlex.quote(text)
    if _PLAIN.fullmatch(text):
        return text
    quoted = subprocess.list2cmdline([text])  # its escaping of quotes and backslashes; quoted only where it saw a space
    return quoted if quoted.startswith('"') else '"' + re.sub(r'(\\+)$', r'\1\1', quoted) + '"'



def _ansi_c_quoted(text: str) -> str:
    """``text`` with control characters as ``\\xHH`` escapes: ``$'...'`` quoting (bash, zsh, POSIX sh since 2024),
    which pastes back as the same argument; on Windows no shell takes it back, but nothing runs in the terminal."""
    body = "".join("".join(f"\\x{b:02x}" for b in c.encode("utf-8")) if not printable(c)
                   else "\\" + c if c in "\\'" else c for c in text)  # C1 as its UTF-8 bytes: \\u85 is literal text under LC_ALL=C
    return f"$'{body}'"


def shown(text: object) -> str:
    """``text`` for a terminal: control characters (an escape sequence or a newline in a file or class name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def join_args(args: Iterable[object]) -> str:
    """A command line of ``args``, each quoted by :func:`quote_arg` (a recorded, rerunnable command)."""
    return " ".join(quote_arg(a) for a in args)


def move_command(src: object, dst: object) -> str:
    """The shell's command that moves ``src`` to ``dst`` (``mv`` here, ``move`` on Windows), quoted."""
    return f"{'move' if WINDOWS else 'mv'} {quote_arg(src)} {quote_arg(dst)}"

_SILENCED: contextvars.ContextVar[bool] = contextvars.ContextVar("dvt_progress_silenced", default=False)


@contextlib.contextmanager
def silenced_progress(silenced: bool = True) -> Iterator[None]:
    """Within the block, every ``progress`` bar (and download bar) of this thread is off when
    ``silenced`` (a ``--quiet`` flag). Per context: a thread started elsewhere is not affected."""
    token = _SILENCED.set(_SILENCED.get() or bool(silenced))
    try:
        yield
    finally:
        _SILENCED.reset(token)


def progress_silenced() -> bool:
    """True inside ``silenced_progress()`` (for bars that ``progress`` cannot express, as a download's byte counter)."""
    return _SILENCED.get()


def progress(it, total: Optional[int] = None, desc: str = "", unit: str = "it", enabled: bool = True, file=None, leave: bool = False):
    """``it`` wrapped in a tqdm bar when ``enabled`` (and not silenced) and tqdm is installed, else ``it``
    itself. The bar refreshes at most every second on a terminal or in a notebook; in a log, see :func:`bar_options`."""
    if not enabled or _SILENCED.get():
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime does not require tqdm
        return it
    stream = sys.stderr if file is None else file
    if stream is None:  # no stderr at all (pythonw, a service, `2>&-`): tqdm would fail on its first write
        return it
    return tqdm(it, total=total, desc=desc, unit=unit, **bar_options(stream, leave, file))


def bar_options(stream: Any, leave: bool = False, file: Any = None) -> dict[str, Any]:
    """tqdm's options for a bar on ``stream``: on a terminal or in a notebook, redrawn at most every second; in a log (a
    file, a pipe, CI), a plain ASCII line of its own every 30 s once a step has taken that long, and the last at the end
    (carriage-return redraws had filled logs with one long line, padding and block characters)."""
    if bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules:  # a notebook is watched live too
        return {"file": file, "leave": leave, "mininterval": 1.0}
    return {"file": _LogLines(stream), "leave": True, "mininterval": LOG_BAR_SECONDS, "delay": LOG_BAR_SECONDS, "ascii": True}


LOG_BAR_SECONDS = 30.0  # a log's bar: its first line after this long, then at most one a period


class _LogLines:
    """A log's bar: each redraw (a carriage return, the bar, padding) written as a line of its own; clearing writes dropped."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip(" ")
        if line.strip():
            self.stream.write(line if line.endswith("\n") else line + "\n")

    def flush(self) -> None:
        self.stream.flush()


_REDIRECT = threading.RLock()  # descriptors 1 and 2 are the process's: one redirect at a time (nested in one thread is fine)
_ACTIVE: list[tuple[list[int], tuple, int]] = []  # redirects in progress: saved descriptors, Python streams, thread (outermost first)


def _after_fork_in_child() -> None:
    """A child forked while another thread redirected output (a bundle opening in a server's reload thread, a pre-forking
    server): the lock that thread held is free here, and the child prints where the parent did, not into its buffer. A
    fork by the redirecting thread itself (a worker forked inside the block) keeps the redirect, which its block undoes."""
    global _REDIRECT
    if not _ACTIVE or _ACTIVE[0][2] == threading.get_ident():
        if not _ACTIVE:
            _REDIRECT = threading.RLock()  # no holder here (one between taking it and redirecting: gone with its thread)
        return
    _REDIRECT = threading.RLock()
    (saved, streams, _), _ACTIVE[:] = _ACTIVE[0], []
    with contextlib.suppress(OSError):
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)
    sys.stdout, sys.stderr = streams


if hasattr(os, "register_at_fork"):  # not on Windows (no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def output_to(fd: int) -> Iterator[int]:
    """Point file descriptors 1 and 2 (what C++ libraries print too, not only Python) at ``fd`` for the block;
    yields a descriptor of the real stderr, valid inside the block (-1, and nothing redirected, where descriptor 1
    or 2 is closed). Python's streams are flushed on both sides. Threads take turns: two bundles opened at once had
    each restored the other's redirect, leaving the process printing into a deleted file."""
    with _REDIRECT:
        yield from _output_to(fd)


def on_descriptor(stream: object, fd: int) -> bool:
    """Whether ``stream`` writes to file descriptor ``fd`` (a notebook's ``sys.stderr`` writes to the cell, none)."""
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except Exception:  # io.UnsupportedOperation (ipykernel's streams, StringIO), a closed or absent stream
        return False


class _Forward(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` inside :func:`output_to` where they are not descriptors 1 and 2 (a notebook's
    streams, which C++ never reaches): written to the redirected descriptor in the block, to the stream it stood for after
    (a logging handler made inside, such as torch's on its first import, keeps a stream that works)."""

    def __init__(self, fd: int, after: Any):
        self.fd, self.after = fd, after

    def write(self, text: str) -> int:
        if self.fd < 0:
            return self.after.write(text)
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self.fd, data):]
        return len(text)

    def flush(self) -> None:
        if self.fd < 0:
            self.after.flush()


def _output_to(fd: int) -> Iterator[int]:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    try:
        os.fstat(1), os.fstat(2)  # dup() of an open one would take a closed one's number, and the restore would go wrong
    except OSError:  # a closed stdout or stderr (a daemon, pythonw): nothing to point elsewhere, nor a terminal
        yield -1
        return
    saved = [os.dup(1), os.dup(2)]
    streams = (sys.stdout, sys.stderr)  # a notebook's: what Python libraries print is held as the descriptors' is
    swapped = [None if s is None or on_descriptor(s, i + 1) else _Forward(i + 1, s) for i, s in enumerate(streams)]
    _ACTIVE.append((saved, streams, threading.get_ident()))  # before the descriptors move: a fork meanwhile finds it
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout, sys.stderr = (w or s for w, s in zip(swapped, streams))
        yield saved[1]
    finally:
        try:
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):  # the held file full (a _StdoutLost too): the console comes back first
                    s.flush()
        finally:
            if _ACTIVE and _ACTIVE[-1][0] is saved:
                _ACTIVE.pop()
            sys.stdout, sys.stderr = streams
            for w in swapped:
                if w is not None:
                    w.fd = -1  # from now on, to the stream it stood for
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for f in saved:
                os.close(f)


@contextlib.contextmanager
def held_output() -> Iterator[None]:
    """Hold what the process prints in the block (file descriptors 1 and 2, and Python's streams where they are not
    those: a notebook's) in memory or a temporary file (:func:`_holder`), written to stderr if the block fails, or when
    stderr is a file (a toolchain log such as the benchmark's, or the user's ``2> file``): a terminal, a pipe or a
    notebook sees it only on failure. The descriptors are the process's: another thread's output in that window is held too."""
    held = _holder()
    if held is None:  # nowhere to hold it: the output goes where it would have gone
        yield
        return
    with held:
        try:
            with output_to(held.fileno()):
                yield
        except BaseException:  # the toolchain's own words explain its failure
            held.seek(0)
            text = held.read().decode(errors="replace").strip()
            if text:
                print(text[-4000:], file=sys.stderr)
            raise
        if _stderr_is_file():  # a log keeps the record; a terminal is spared it
            held.seek(0)
            with contextlib.suppress(OSError):  # a full disk must not fail a load that succeeded
                sys.stderr.flush()
                data = held.read()
                while data:
                    data = data[os.write(2, data):]


def _holder():
    """A file to hold output in: in memory where the OS can (no temporary folder needed: a read-only container has none), else
    a temporary file, else None."""
    in_memory = [lambda: open(os.memfd_create("dvt-toolchain-output"), "w+b")] if hasattr(os, "memfd_create") else []
    makers = in_memory + [tempfile.TemporaryFile]
    for make in makers:
        try:
            return make()
        except OSError:  # memfd refused (an old kernel, a sandbox), no temporary folder
            continue
    return None


def _stderr_is_file() -> bool:
    try:
        return stat.S_ISREG(os.fstat(2).st_mode)
    except OSError:  # closed
        return False


def _plain(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Within the block, warnings print as ``warning: message``: a command's user needs the message, not the source file,
    line and code that raised it (library callers keep Python's format)."""
    old = warnings.formatwarning
    warnings.formatwarning = _plain
    try:
        yield
    finally:
        warnings.formatwarning = old


def _terminated(signum, frame) -> None:
    import signal

    raise KeyboardInterrupt("SIGBREAK" if signum == getattr(signal, "SIGBREAK", None) else "SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM (``timeout``, a CI cancel, systemd, ``docker stop``) raises ``KeyboardInterrupt("SIGTERM")`` as
    Ctrl-C would, so clean-up runs, and so does Windows' Ctrl-Break (``KeyboardInterrupt("SIGBREAK")``: it had ended the
    process with nothing cleaned up or saved); main thread only (elsewhere signals cannot be handled); the old handlers after."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])  # type: ignore[attr-defined]
    old = {n: signal.signal(n, _terminated) for n in signums}
    try:
        yield
    finally:
        for n, handler in old.items():
            signal.signal(n, handler)


class _StdoutLost(BaseException):
    """Standard output failed (its reader went away, a full disk): past the work's own ``except Exception`` and ``except
    OSError`` (an export had reported its written bundle as failed, and gone on to the next job) to :func:`run_cli`."""


class _GuardedStdout:
    """``sys.stdout`` as :func:`run_cli` runs a command: a failed write or flush is :class:`_StdoutLost`."""

    def __init__(self, stream: Any):
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise e if _ACTIVE else _StdoutLost(e) from None  # redirected: the log or holder failed, not stdout

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise e if _ACTIVE else _StdoutLost(e) from None


def run_cli(main: Callable[[], Optional[int]]) -> int:
    """A command's ``main()`` with :func:`plain_warnings`; its exit code. SIGTERM ends it as Ctrl-C does, so its clean-up
    runs (an export's temporary folder was left behind): one line, exit 143 (Ctrl-C and Windows' Ctrl-Break: 130). Text the console cannot encode (a file
    name on an ascii or cp1252 stdout) is escaped: it had failed a finished export at its "wrote" line."""
    for stream in (sys.stdout, sys.stderr):  # a console that cannot encode a name (ascii, cp1252) shows \xe9, never fails the command
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    stdout = sys.stdout
    try:
        with sigterm_as_interrupt(), plain_warnings():
            if stdout is not None:
                sys.stdout = _GuardedStdout(stdout)
            code = int(main() or 0)
            if sys.stdout is not None:  # here, where a reader that went away is caught, not at exit ("Exception ignored ...")
                sys.stdout.flush()
            return code
    except _StdoutLost as lost:
        with contextlib.suppress(OSError, ValueError):  # its unflushed bytes go nowhere at exit, as a BrokenPipeError's below
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        if isinstance(err := lost.args[0], BrokenPipeError):
            return 141
        print(f"error: standard output cannot be written ({err.strerror or err}): the command stopped there (files it had "
              "written are whole); send its output elsewhere", file=sys.stderr)  # a full disk under `> file`
        return 1
    except KeyboardInterrupt as e:
        by_term, by_break = str(e) == "SIGTERM", str(e) == "SIGBREAK"
        print(f"interrupted ({'SIGTERM' if by_term else 'Ctrl-Break' if by_break else 'Ctrl-C'}): stopped", file=sys.stderr)
        return 143 if by_term else 130  # Ctrl-Break: a console interrupt, as Ctrl-C
    except MemoryError as e:  # any command: one line saying what to change, not a traceback (a MemoryError has few words)
        text = str(e) or "MemoryError"  # a library's own MemoryError says nothing; ours says the fix
        print(f"error: {text}" if "memory limit" in text else f"error: out of memory ({text}); raise the process's memory limit "
              "(ulimit -v, the container's) or give it less at once", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (``| head``): the rest of the output is not wanted, nor a traceback
        with contextlib.suppress(OSError, ValueError):  # stdout's unflushed bytes go nowhere at exit (Python's own advice)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe ended
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = stdout
