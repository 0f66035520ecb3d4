"""Getting public data sets onto this machine: the cache folder, checksummed downloads, and
the message that says where a missing data set was looked for."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from pathlib import Path

from dvt_edge.imageset import DataError
from dvt_runtime.io import atomic_write

__all__ = ["cache_dir", "cache_candidates", "download", "md5_file", "offline", "not_found"]


def cache_dir() -> Path:
    """dvt-edge's cache folder ($XDG_CACHE_HOME/dvt-edge or ~/.cache/dvt-edge); a DataError naming the fix where neither
    is known (``env -i``, a container's user with no home folder)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # HOME unset and no passwd entry
            raise DataError("no cache folder: HOME is not set and this user has no home folder; set XDG_CACHE_HOME to a "
                            "folder you can write (and DVT_DATA to where your data sets are)") from None
    return Path(base) / "dvt-edge"


def cache_candidates(name: str) -> list[Path]:
    """``[cache_dir() / name]`` where to look for a data set, or none where there is no cache folder (the other places are
    looked in all the same: Debian's copy needs no home folder)."""
    try:
        return [cache_dir() / name]
    except DataError:
        return []


def offline() -> bool:
    """True when downloads are switched off (``DVT_OFFLINE`` set to 1, true, yes or on)."""
    return os.environ.get("DVT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def md5_file(path: Path) -> str:
    """The md5 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, target: Path, md5: str) -> Path:
    """Fetch ``url`` to ``target`` (atomically), refusing content whose md5 is not ``md5``."""
    # a byte-counting bar (unit_scale, manual updates): more than dvt_runtime.console.progress expresses
    from tqdm import tqdm

    from dvt_runtime.console import bar_options, progress_silenced
    from dvt_runtime.io import os_error_text, unwritable

    try:  # before the fetch (170 MB for CIFAR-10): a folder that cannot take it is said as such, not as a failed download
        target.parent.mkdir(parents=True, exist_ok=True)
        why = unwritable(target.parent)
    except OSError as e:
        why = os_error_text(e)
    if why:
        raise DataError(f"{target.parent} cannot be written ({why}), so {url} was not downloaded: set XDG_CACHE_HOME to a "
                        "folder you can write, or put the data set in $DVT_DATA yourself")
    print(f"downloading {url} -> {target}", file=sys.stderr)
    h, chunks = hashlib.md5(), []
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, **bar_options(sys.stderr),
                      disable=progress_silenced() or total is None or total < 1 << 20 or sys.stderr is None) as bar:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except http.client.HTTPException as e:  # e.g. IncompleteRead of a cut chunked response: not an OSError
        raise OSError(f"download of {url} was cut off ({type(e).__name__}: {str(e)[:200]}); retry") from None
    got_bytes = sum(map(len, chunks))
    if total is not None and got_bytes != total:  # a connection closed early (read() returns short, not an error)
        raise OSError(f"download of {url} was cut off: {got_bytes} of {total} bytes; retry")
    got = h.hexdigest()
    if got != md5:
        raise OSError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, b"".join(chunks))
    return target


def not_found(name: str, looked: list[Path], reason: str, how: str) -> DataError:
    """A data set that is not on this machine: where we looked, why nothing was fetched, how to get it."""
    return DataError(f"{name} not found. Looked in:\n" + "".join(f"  - {d}\n" for d in looked) + f"({reason}).\n{how}")
