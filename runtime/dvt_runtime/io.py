"""Small I/O helpers shared by the runtime and the training side (numpy/stdlib only)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from dvt_runtime import console as _console
from dvt_runtime.console import move_command

__all__ = ["atomic_write", "replace", "atomic_write_json", "sha256_file", "current_umask", "read_npz", "check_labels", "save_png", "unwritable", "hold_lock", "claimed", "lock_held", "written_together",
           "os_error_text", "short_name", "name_max", "name_too_long", "NAME_MAX"]


NAME_MAX = 255  # bytes in one file name on Linux and macOS (where the file system does not say its own: name_max)


def short_name(name: str, reserved: int) -> str:
    """``name``, shortened where need be so that a temporary name made of it and ``reserved`` more bytes stays a legal file
    name: a legal 250-byte output failed with "File name too long" at its temporary file, after the work. A shortened name
    keeps its start and a digest of the whole (one name, one temporary name)."""
    raw = os.fsencode(name)  # the bytes on disk (a name that is not UTF-8 arrives with surrogates: encode() refused it)
    if len(raw) + reserved <= NAME_MAX:
        return name
    head = raw[: NAME_MAX - reserved - 9]
    utf8 = not any(0xDC80 <= ord(c) <= 0xDCFF for c in name)  # no byte that os.fsdecode could not read as UTF-8
    # a UTF-8 name is cut between characters (a half one would print as a lone surrogate); another keeps its bytes
    return (head.decode("utf-8", "ignore") if utf8 else os.fsdecode(head)) + "~" + hashlib.sha256(raw).hexdigest()[:8]


def name_too_long(path: Union[str, Path]) -> str:
    """``"is N bytes, more than F's file system takes (M)"`` for a name its folder's file system (F: the nearest folder that
    exists) refuses, else "": said before the work, not by the write at its end."""
    p = Path(path)
    near = next((q for q in [p.parent, *p.parent.parents] if q.exists()), Path("."))
    size = len(os.fsencode(p.name))
    most = name_max(near)
    return f"is {size} bytes, more than {near}'s file system takes ({most})" if most is not None and size > most else ""


def name_max(folder: Union[str, Path]) -> Optional[int]:
    """The longest file name (bytes) ``folder``'s file system takes, or None where that is not told in bytes (Windows: NTFS
    counts 255 UTF-16 units, which a long UTF-8 name may fit)."""
    if os.name == "nt":
        return None
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def atomic_write(path: Union[str, Path], data: Union[bytes, Iterable[Union[str, bytes]]]) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same directory, are fsynced, then renamed
    over ``path``; an interrupted write leaves the previous file untouched. ``data`` may come in pieces (text pieces as
    UTF-8), written as they come: a file larger than memory.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path.name, 14)}.", suffix=".tmp", dir=path.parent)  # . . 8 random .tmp
    except OSError as e:
        raise _cannot_write(e, path) from e
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview, str)) else data:
                f.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno is not None:
            raise _cannot_write(e, path) from e
        raise
    return path


def replace(src: Union[str, Path], dst: Union[str, Path], waits: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0)) -> None:
    """``os.replace(src, dst)``. On Windows a file or folder another program holds open (an antivirus scan, an indexer, a
    viewer, a running ``predict``) cannot be moved or replaced: retried after each of ``waits`` (s), then refused with what to
    do (a read-only file is refused the same way, so it is named too)."""
    for wait in (*waits, None):
        try:
            os.replace(src, dst)
            return
        except PermissionError as e:
            if not _console.WINDOWS:  # here a refusal is the folder's permissions: waiting changes nothing
                raise
            if wait is None:  # either end may be the one held (install() moves the old bundle aside: src is in use there)
                raise PermissionError(e.errno, f"cannot move {src} to {dst}: another program has one of them open (close it, or "
                                               f"wait for a virus scan to finish), or it is read-only; then run again ({e.strerror or e})") from e
            time.sleep(wait)


def _cannot_write(e: OSError, path: Path) -> OSError:
    """``e`` named by the user's path, not the temporary file's (its type kept, so callers still catch it); a full disk,
    quota or file size limit says the fix."""
    fix = ("; free some space there, or write elsewhere, then run again" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
           "; the process's file size limit (ulimit -f) is below it: raise it, then run again" if e.errno == errno.EFBIG else "")
    return type(e)(e.errno, f"cannot write {path}: {e.strerror or e}{fix}")


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_held_in_child() -> None:
    """In a forked child (a DataLoader worker): drop its copies of the parent's lock descriptors, so that a killed parent's
    locks end with it, not with the last of its children."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _try_flock(fd: int, wait: bool) -> bool:
    """Take an exclusive flock on ``fd``: False when another open file (any process) holds it; True where the file
    system has no locks (NFS and SMB shares refuse them on a folder: nothing is held then)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: nothing to hold, nothing to find held
        return True
    return True


@contextlib.contextmanager
def hold_lock(path: Union[str, Path], create: bool = False, wait: bool = False) -> Iterator[bool]:
    """An advisory lock on ``path`` (a file, made when ``create``, or a folder) for the block; yields whether it is held
    (False: another process holds it; ``wait``: wait for it instead). The kernel drops it when the holder ends, however it
    ends, so a held lock means a live holder, whatever its PID namespace, on a local file system. Where there are no
    such locks (Windows; a network share, for a folder) it yields True and holds nothing."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        yield True
        return
    fd = os.open(path, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o666)
    try:
        held = _try_flock(fd, wait)
        if held:
            _HELD.add(fd)
        yield held
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases it


@contextlib.contextmanager
def claimed(path: Union[str, Path]) -> Iterator[bool]:
    """For the clean-up of a leftover: True while this process holds ``path``'s lock (no live process does; it is kept
    while the block removes or restores the leftover), False while a live process holds it. A path that cannot be opened
    (a link, which is never followed) or locked counts as unheld."""
    try:
        import fcntl  # noqa: F401

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (ImportError, OSError):
        yield True
        return
    try:
        yield _try_flock(fd, wait=False)
    finally:
        os.close(fd)


def lock_held(path: Union[str, Path]) -> bool:
    """Whether a live process holds :func:`hold_lock` on ``path`` (False where it cannot be told)."""
    with claimed(path) as free:
        return not free


@contextlib.contextmanager
def written_together(out: Union[str, Path], name: str) -> Iterator[Path]:
    """A staging folder inside ``out`` for files that belong together: when the block ends, each is renamed into ``out``
    (a ``.json`` last), so that a failure while they are written (a full disk, Ctrl-C) leaves ``out``'s earlier set as it
    was. Staging folders that a killed process left (no live holder) are removed first."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f".{name}-staging-*"):
        with claimed(old) as free:
            if free and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}-staging-", dir=out))
    try:
        with hold_lock(stage, wait=True):
            yield stage
            for f in sorted(stage.iterdir(), key=lambda p: p.suffix == ".json"):
                replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def os_error_text(e: BaseException) -> str:
    """An error in words for ``error: ...``: an OSError with its path when it names one (``[Errno 2] No such file or
    directory: 'x'``), else its message without ``[Errno N]`` (this package's "cannot write PATH: ..." errors carry the
    path in it); any other exception as it says itself."""
    if not isinstance(e, OSError):
        return str(e)
    return str(e) if e.filename else (e.strerror or str(e))


def check_out_path(path: Union[str, Path], flag: str = "--out", replaces: Union[str, Callable[[Path], bool], None] = None,
                   fix: str = "choose another path",
                   example: Optional[str] = "out.json") -> Path:
    """A file to be written after long work, checked first: not a folder, its folder creatable and writable
    (a bad path found only at the end loses the work), and, given ``replaces`` (a JSON schema name or its
    start, or a test of the file), an existing file there only an earlier output of that kind (a photo given as --out was
    replaced).
    ``example``: a file name to suggest inside a folder given instead of a file (None: the path is not the user's
    to choose, so the folder is in the way)."""
    if str(path) == "-":  # a file named "-" had been written where a pipe's reader waited (only predict --out - is stdout)
        raise ValueError(f"{flag} -: standard output is not a file this command writes (only predict's --out - is); name a file")
    p = Path(path).expanduser()
    if too_long := name_too_long(p):
        raise ValueError(f"{flag} {p}: its file name {too_long}; {fix}")
    if p.is_dir():
        raise ValueError(f"{flag} {p} is a folder; " + (f"name the file to write (e.g. {p / example})" if example else
                                                         f"it is in the way: move it away, or {fix}"))
    parent = next((q for q in [p.parent, *p.parent.parents] if q.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{flag} {p}: {parent} is a file, not a folder; move that file away, or {fix}")
    if why := unwritable(parent):
        raise ValueError(f"{flag} {p}: cannot write in {parent} ({why}); {fix}")
    ours = (lambda q: _has_schema(q, replaces)) if isinstance(replaces, str) else replaces
    if ours is not None and (p.exists() or p.is_symlink()) and not ours(p):
        what = f"{replaces.rstrip('/')} file" if isinstance(replaces, str) else "result"
        raise ValueError(f"{flag} {p} exists and is not an earlier {what} (it would be replaced): name a new file, or move that one "
                         "away first")
    return p


def check_result_files(first: Union[str, Path], ours: Union[str, Callable[[Path], bool]], others: Sequence[Union[str, Path]] = (),
                       flag: str = "--out", fix: str = "choose another --out") -> None:
    """Files a command writes together (its JSON ``first``, then Markdown and plots), checked before the work: ``first``
    replaced only as an earlier result (``ours``: its JSON schema's start, or a test of the file), the ``others`` only
    beside such a result (a user's own metrics.png or evaluate.json in --out had been replaced)."""
    first = check_out_path(first, flag, replaces=ours, fix=fix, example=None)
    mine = [Path(o).name for o in others if Path(o).exists() or Path(o).is_symlink()]
    if mine and not first.exists():
        is_, it = ("is", "it") if len(mine) == 1 else ("are", "them")
        raise ValueError(f"{flag} {first.parent}: {', '.join(mine)} there {is_} not an earlier result's (no {first.name} beside "
                         f"{it}) and would be replaced: {fix}, or move {it} away first")


def unwritable(folder: Union[str, Path]) -> str:
    """Why nothing can be written in an existing ``folder`` ("read-only file system", "permission denied"), or ""."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:  # root may write anywhere but there
            return "read-only file system"
    except (OSError, AttributeError):  # no statvfs (Windows): access() alone
        pass
    return "" if os.access(folder, os.W_OK | os.X_OK) else "permission denied"


def _has_schema(p: Path, schema: str) -> bool:
    """Whether ``p`` is a JSON object whose "schema" starts with ``schema``."""
    try:
        with open(p, "rb") as f:
            head = f.read(1)
            d = json.loads(head + f.read()) if head == b"{" else None
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and isinstance(d.get("schema"), str) and d["schema"].startswith(schema)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Union[str, Path], obj, allow_nan: bool = True, keep: str = "") -> Path:
    """``obj`` as indented JSON, atomically; ``allow_nan=False``: a NaN or infinity is a ValueError (strict JSON).
    ``keep`` (what the file holds, e.g. "measurements"): where ``path`` cannot be written (a full disk, a lost mount), the
    bytes are kept in the system's temporary folder if it takes them, and the error says where and how to move them into
    place: minutes of measuring are not lost to a full disk."""
    data = (json.dumps(obj, indent=2, sort_keys=False, allow_nan=allow_nan) + "\n").encode()
    try:
        return atomic_write(path, data)
    except OSError as e:
        if not keep or e.errno is None or (kept := _kept_aside(Path(path), data)) is None:
            raise
        raise type(e)(e.errno, f"cannot write {path}: {os.strerror(e.errno)}; the {keep} are kept in {kept}: once there is room, "
                               f"move them into place with: {move_command(kept, path)}") from e


def _kept_aside(path: Path, data: bytes) -> Optional[Path]:
    """``data`` in a new file of the system's temporary folder (often another disk), or None where it cannot be written."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{short_name(path.stem, 14 + len(path.suffix.encode()))}.kept-", suffix=path.suffix)
        os.chmod(tmp, 0o666 & ~current_umask())  # as atomic_write's: moved into place, a service's user must read it (mkstemp: 0600)
        with os.fdopen(fd, "wb") as f:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview, str)) else data:
                f.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)
    except OSError:
        with contextlib.suppress(OSError):
            if tmp is not None:
                os.unlink(tmp)
        return None


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_npz(path: Union[str, Path], need: Sequence[str], error: Callable[[str], Exception], hint: str) -> "NpzArrays":
    """The arrays of a .npz file (never unpickled), with those in ``need`` present and read now; the others are read when
    first used (a member nobody needs, inflating to gigabytes, is never read).

    Missing, unreadable files and missing arrays raise ``error(message)``; ``hint`` says how to
    write a good file. The one npz reader of the project (data sets, calibration, profiling).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise error(f"{p} is a folder, not a .npz file ({hint})")
    if not p.is_file():
        raise error(f"{p} not found ({hint})")
    z = NpzArrays(p, error, hint)
    missing = [k for k in need if k not in z]
    if missing:
        raise error(f"{p} has no {' / '.join(repr(k) for k in missing)} array (found {sorted(z)}); {hint}")
    for k in need:
        z[k]  # noqa: B018  read now: a damaged or pickled array the caller needs is said before any work
    return z


class NpzArrays(Mapping):
    """A .npz file's arrays by name, each read from the file when first used."""

    def __init__(self, path: Path, error: Callable[[str], Exception], hint: str):
        import zipfile

        self.path, self._error, self._hint, self._arrays = path, error, hint, {}
        try:
            with zipfile.ZipFile(path) as zf:
                self._keys = [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise self._unreadable(e) from None

    def _unreadable(self, e: BaseException) -> Exception:
        return self._error(f"{self.path} is not a readable .npz archive ({type(e).__name__}: damaged, or cut short by an interrupted "
                           f"copy or write?); {self._hint}")

    def __getitem__(self, k: str):
        if k not in self._arrays:
            if k not in self._keys:
                raise KeyError(k)
            import zipfile

            import numpy as np

            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self._arrays[k] = z[k]
            except ValueError as e:
                if "Object arrays cannot be loaded" in str(e):  # it would need unpickling
                    raise self._error(f"{self.path}: its {k!r} array holds Python objects (not unpickled, for safety): "
                                      "save images as one numeric array, e.g. np.stack of same-sized images, and names as "
                                      f"np.array(names, dtype=str); {self._hint}") from None
                raise self._unreadable(e) from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise self._unreadable(e) from None
        return self._arrays[k]

    def __contains__(self, k: object) -> bool:  # by name: Mapping's own reads the member
        return k in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def check_labels(labels, where: str, error: Callable[[str], Exception]):
    """Class indices: a non-empty 1-D integer array (not bool), as int64."""
    import numpy as np

    if labels.ndim != 1 or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise error(f"{where}: 'labels' must be a 1-D integer array (class indices); got {labels.dtype} {labels.shape}")
    if len(labels) == 0:
        raise error(f"{where} holds no samples (no images)")
    return labels.astype(np.int64)


def save_png(fig, path: Union[str, Path], dpi: int = 120) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


_MOVED = ("progress", "progress_silenced", "silenced_progress", "output_to", "plain_warnings", "sigterm_as_interrupt", "run_cli")


def __getattr__(name: str):
    """The names that moved to :mod:`dvt_runtime.console` (0.2.0) still import from here, with a DeprecationWarning."""
    if name in _MOVED:
        import warnings

        from dvt_runtime import console

        warnings.warn(f"dvt_runtime.io.{name} moved to dvt_runtime.console.{name}", DeprecationWarning, stacklevel=2)
        return getattr(console, name)
    raise AttributeError(f"module 'dvt_runtime.io' has no attribute {name!r}")


def loadable(path: Path) -> Union[str, bytes]:
    """``path`` as ONNX Runtime's and ExecuTorch's loaders take it: its bytes where the name is not UTF-8 (a surrogate in
    Python's str, which they refuse; the artifacts hold no external data)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return path.read_bytes()
    return text
