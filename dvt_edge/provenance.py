"""Where a result came from: the code revision and the environment that made it.

Recorded by ``train`` (per epoch, shown in the model card), ``export`` (the manifest's ``toolchain`` and ``source``),
``evaluate`` and ``bench`` (their JSON), so that a file can say which code and machine produced it: version numbers
alone cannot (every checkout of one version carries the same number)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import stat
import subprocess
from pathlib import Path
from typing import Any, Optional

__all__ = ["code_changes", "code_revision", "created_at", "environment", "environment_line", "result_provenance", "set_torch_threads", "THREADS_HELP"]

_ROOT = Path(__file__).resolve().parent.parent  # the checkout holding dvt_edge/ when run from a git clone


ADDED_CODE = ("*.py", "*.pth")  # files added to a checkout that change what runs (a sitecustomize.py, a .pth on the path)


def _git(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """git's answer as bytes (a file name git cannot print in this locale's encoding fails no decode)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not take the index lock a user's own git command may need
    return subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, timeout=timeout, env=env)


@functools.lru_cache(maxsize=1)
def code_revision() -> Optional[str]:
    """The git commit of the checkout this package runs from, with ``+modified`` when its code differs from that commit
    (tracked files changed, or Python files git does not ignore added: a ``sitecustomize.py`` on the path changes a run
    too; a user's photos or results in the checkout do not); None for an installed wheel, where git is missing, or where
    git refuses the folder."""
    if not (_ROOT / ".git").exists() or not (_ROOT / "dvt_edge").is_dir():
        return None
    try:
        head = _git("rev-parse", "HEAD")
        sha = head.stdout.decode("ascii", "replace").strip()
        if head.returncode or len(sha) < 40:
            return None
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        added = _git("ls-files", "--others", "--exclude-standard", "--", *ADDED_CODE)
    except (OSError, subprocess.SubprocessError):
        return None
    changed = dirty.returncode or dirty.stdout.strip() or added.returncode or added.stdout.strip()
    return sha + ("+modified" if changed else "")


#: a diff that is the same for every user: no external or text-converting diff driver, colour, rename detection or prefix
#: setting of theirs changes it
_PLAIN_DIFF = ("diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--no-color", "--no-renames", "--src-prefix=a/",
               "--dst-prefix=b/")


def _added_file(path: Path) -> bytes:
    """What an added file contributes to the digest: a link's target (as git records a link), a regular file's contents
    (a large one by its size), nothing else's (a FIFO or device is never read)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return b"link " + os.fsencode(os.readlink(path))
        if not stat.S_ISREG(st.st_mode):
            return b"not a file"
        return path.read_bytes() if st.st_size <= 1 << 20 else b"size " + str(st.st_size).encode()
    except OSError as e:  # gone or unreadable meanwhile: said in the digest, not dropping it
        return f"unreadable {e.errno}".encode()


@functools.lru_cache(maxsize=1)
def code_changes() -> Optional[str]:
    """For a ``+modified`` checkout, a digest (16 hex digits) of how its code differs from its commit: the tracked changes
    and the added Python files' names and contents. Two results marked ``+modified`` ran the same code when these agree
    (``+modified`` alone said only that something differed). None when nothing differs, without a checkout, or when git
    cannot give the diff."""
    if not (code_revision() or "").endswith("+modified"):
        return None
    h = hashlib.sha256()
    try:
        diff = _git(*_PLAIN_DIFF, timeout=60)
        added = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *ADDED_CODE)
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode or added.returncode:
        return None
    h.update(diff.stdout)
    for name in sorted(n for n in added.stdout.split(b"\0") if n):
        h.update(name + b"\0" + _added_file(_ROOT / os.fsdecode(name)) + b"\0")
    return h.hexdigest()[:16]


THREADS_HELP = ("torch intra-op threads (default, or 0: torch's, one per core, as 0 is the backend's default in the runtime's "
                "commands): 1 leaves the other cores to other work")


def set_torch_threads(threads: Optional[int], flag: str = "--threads") -> None:
    """torch's intra-op threads for this process (None or 0: torch's own choice, one per core, as the runtime's commands
    take 0: a script passes one value to every command); below 0 is a ValueError naming ``flag``."""
    if threads is None or (threads == 0 and not isinstance(threads, bool)):
        return
    if isinstance(threads, bool) or threads < 0:
        raise ValueError(f"{flag} must be >= 1, or 0 for torch's own choice (torch's intra-op threads), got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def environment(threads: Optional[int] = None, device: Any = None) -> dict[str, Any]:
    """What a float result depends on beyond its inputs: dvt-edge's version and revision, torch, Python, the CPU, the
    intra-op threads (``threads``; omitted when None) and, for a ``device`` (torch.device) that is a GPU, its name with
    the CUDA and cuDNN versions."""
    import torch

    from dvt_edge import __version__
    from dvt_runtime.device import cpu_model

    env = {"dvt_edge": __version__, "revision": code_revision(), "torch": torch.__version__,
           "python": platform.python_version(), "cpu": cpu_model(), "machine": platform.machine() or None}
    if changes := code_changes():  # which modifications: "+modified" alone is the same for any two
        env["changes"] = changes
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        env["accelerator"] = (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN "
                              f"{torch.backends.cudnn.version()})")
    return env if threads is None else {**env, "threads": threads}


def environment_line(env: dict[str, Any]) -> str:
    """``env`` (from :func:`environment`) in one line, e.g. ``dvt-edge 0.2.0 (git 1a2b3c4d5e6f), torch 2.13.0, Python
    3.11.9, AMD EPYC 9B14 (x86_64)``."""
    rev = env.get("revision")
    mod = f"+modified {env['changes'][:8]}" if env.get("changes") else "+modified"
    rev = f" (git {rev[:12]}{mod if rev.endswith('+modified') else ''})" if rev else " (revision not recorded)"
    cpu = env.get("cpu") or "CPU unknown"
    return (f"dvt-edge {env.get('dvt_edge', '?')}{rev}, torch {env.get('torch', '?')}, Python {env.get('python', '?')}, "
            f"{cpu}" + (f" ({env['machine']})" if env.get("machine") else "") + (f", {env['accelerator']}" if env.get("accelerator") else ""))


def result_provenance(checkpoint: str) -> dict[str, Any]:
    """What a rerun of a result needs beyond its command: the checkpoint's SHA-256 (a path names no content) and the code
    and torch that exported and scored it."""
    from dvt_runtime.io import sha256_file

    return {"checkpoint_sha256": sha256_file(checkpoint), "environment": environment()}


def created_at() -> str:
    """When a file is made, UTC to the second (ISO 8601); ``SOURCE_DATE_EPOCH`` (seconds since 1970, the reproducible-
    builds convention) fixes it, so that the same export gives the same manifest byte for byte (a cache key, a diff)."""
    import datetime

    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if fixed:
        try:
            when = datetime.datetime.fromtimestamp(int(fixed), datetime.timezone.utc) if fixed.isdigit() else None
        except (OverflowError, OSError, ValueError):  # beyond year 9999
            when = None
        if when is None:
            raise ValueError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970-01-01 UTC (e.g. $(git log -1 --format=%ct)), got {fixed!r}")
    else:
        when = datetime.datetime.now(datetime.timezone.utc)
    return when.isoformat(timespec="seconds")
