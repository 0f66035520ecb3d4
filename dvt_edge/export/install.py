"""Putting a finished bundle in place: atomically, never over what the user made.

The bundle is built in a temporary folder beside its destination and swapped in at the end;
an interrupted export leaves either the old bundle or the new one, and the next export to the
same path cleans what a dead process left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dvt_edge.export.common import ExportError
from dvt_runtime.manifest import Manifest, ManifestError

__all__ = ["install", "recover_leftovers", "check_destination"]


def install(tmp: Path, dest: Path) -> None:
    """Put the finished bundle at ``dest`` so that the path always holds the old or the new one.

    Linux: one atomic ``renameat2(RENAME_EXCHANGE)`` swaps the two directories. Elsewhere the
    old bundle is renamed aside first; if the process dies between the two renames, the next
    export to the same path puts it back (:func:`recover_leftovers`).
    """
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs. On Windows ``os.kill(pid, 0)`` would signal (or terminate) it, so
    there every owner counts as alive: leftovers are kept rather than risk another export."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_leftovers(dest: Path) -> list[str]:
    """Clean what interrupted exports to ``dest`` left: temporary folders of dead processes are
    removed; an old bundle moved aside is put back when ``dest`` is missing, removed otherwise."""
    notes: list[str] = []
    if dest.name in ("", ".", "..") or not dest.parent.is_dir():
        return notes
    for p in sorted(dest.parent.glob(f".{dest.name}.*")):
        kind, _, rest = p.name[len(dest.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not dest.exists() and (p / "manifest.json").is_file():
            os.replace(p, dest)
            notes.append(f"restored the previous bundle {dest} from an interrupted export")
        else:
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p.name} left by an interrupted export")
    return notes


def check_destination(dest: Path, force: bool) -> None:
    """Refuse to replace anything but a bundle this package wrote (and never the working directory)."""
    if dest.exists() or dest.is_symlink():
        here = Path.cwd().resolve()
        if dest.resolve() == here or dest.resolve() in here.parents:
            raise ExportError(f"--out {dest} is the current directory (or holds it); name a new folder for the bundle, e.g. --out bundles/my-model")
        if not dest.is_dir():
            raise ExportError(f"{dest} exists and is not a folder; choose another --out")
        try:  # before suggesting --force: it replaces only bundles
            Manifest.load(dest, verify=False)
        except (ManifestError, OSError) as e:
            raise ExportError(f"{dest} exists and is not a dvt-edge bundle ({e}); --force replaces only bundles: "
                              "choose another --out, nothing was changed") from None
        if not force:
            raise ExportError(f"{dest} already exists; pass --force to replace it (the old bundle is kept until the new one is complete)")
    for parent in dest.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"cannot write the bundle under {parent}: it is a file, not a folder; choose another --out")
