"""Putting a finished bundle in place: atomically, never over what the user made.

The bundle is built in a temporary folder beside its destination and swapped in at the end;
an interrupted export leaves either the old bundle or the new one, and the next export to the
same path cleans what a dead process left.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from dvt_edge.export.common import ExportError
from dvt_edge.logs import log_problem
from dvt_runtime.console import move_command, quote_arg
from dvt_runtime.io import claimed, name_too_long, replace, sha256_file, short_name, unwritable
from dvt_runtime.manifest import Manifest, ManifestError

__all__ = ["install", "recover_leftovers", "check_destination", "carry_over", "KEPT"]

KEPT = "calibration"  # the runtime's device calibrations (<bundle>/calibration/<device>.json): carried into a replacing bundle


def install(tmp: Path, dest: Path) -> None:
    """Put the finished bundle at ``dest`` so that the path always holds the old or the new one.

    Linux: one atomic ``renameat2(RENAME_EXCHANGE)`` swaps the two directories. Elsewhere the
    old bundle is renamed aside first; if the process dies between the two renames, the next
    export to the same path puts it back (:func:`recover_leftovers`).
    """
    if not tmp.is_dir():  # removed under it (another export's clean-up): the bundle at dest is not moved aside for nothing
        raise ExportError(f"the export's temporary folder {tmp} was removed while it worked (by another export's clean-up?); "
                          f"{dest} was not changed: export again")
    if not dest.exists():
        replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    old = dest.parent / f".{staging_stem(dest)}.old-{os.getpid()}"
    replace(dest, old)
    replace(tmp, dest)
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
    """Whether process ``pid`` runs (where unsure: yes, and its leftovers are kept). On Windows ``os.kill(pid, 0)`` would
    terminate it: the process is asked for its exit code instead."""
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    """Windows: ``OpenProcess`` fails with ERROR_INVALID_PARAMETER for a PID no process has; an open one still runs while its
    exit code is STILL_ACTIVE. Access denied (another user's process): alive. A reused PID keeps the leftover (safe side)."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = ctypes.c_void_p  # a HANDLE: a pointer, not ctypes' default int (64-bit handles)
    kernel32.OpenProcess.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32]
    kernel32.GetExitCodeProcess.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    query_limited, still_active, invalid_parameter = 0x1000, 259, 87  # PROCESS_QUERY_LIMITED_INFORMATION, ...
    handle = kernel32.OpenProcess(query_limited, False, pid)
    if not handle:
        return ctypes.get_last_error() != invalid_parameter  # type: ignore[attr-defined]
    try:
        code = ctypes.c_uint32()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def staging_stem(dest: Path) -> str:
    """What an export's temporary and moved-aside folders beside ``dest`` are named after (``.STEM.tmp-PID-xxxxxxxx``,
    ``.STEM.old-PID``): ``dest``'s name, shortened where those would pass the file system's 255 bytes."""
    return short_name(dest.name, 24)


def recover_leftovers(dest: Path) -> list[str]:
    """Clean what interrupted exports to ``dest`` left: temporary folders of dead processes are
    removed; an old bundle moved aside is put back when ``dest`` is missing, removed otherwise."""
    notes: list[str] = []
    if dest.name in ("", ".", "..") or not dest.parent.is_dir():
        return notes
    # by prefix, not glob: a bundle named b[12] would match .b1.* and .b2.*, another bundle's leftovers
    stem = staging_stem(dest)
    for p in sorted(q for q in dest.parent.iterdir() if q.name.startswith(f".{stem}.")):
        kind, _, rest = p.name[len(stem) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        with claimed(p) as free:  # held while it is removed: an export that locks it meanwhile finds it gone, and stops
            if not free:  # a live export whose PID is another PID namespace's (a container on this machine)
                notes.append(f"left {p.name} alone: another export is writing it")
            elif kind == "old" and not dest.exists() and (p / "manifest.json").is_file():
                replace(p, dest)
                notes.append(f"restored the previous bundle {dest} from an interrupted export")
            elif why := _remove(p):
                notes.append(f"could not remove {p} left by an interrupted export ({why}); remove it by hand")
            else:
                notes.append(f"removed {p.name} left by an interrupted export")
    return notes


def _remove(p: Path) -> str:
    """Remove a leftover of ours (a link is unlinked, never followed); why it is still there ('' once gone)."""
    try:
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return "" if not os.path.lexists(p) else "it is still there"


def check_destination(dest: Path, force: bool, inputs: Sequence[str] = (), log: Optional[Path] = None,
                      checkpoint: Optional[str] = None, log_written: bool = True, made: Optional[tuple[str, str]] = None) -> None:
    """Refuse to replace anything but a bundle this package wrote (and never the working directory, a symbolic
    link, a bundle holding files its manifest does not list, or one holding ``inputs``: the checkpoint, the data).
    Without ``force``, a bundle of another file than ``checkpoint`` is said to be another model's, and one of another
    target or precision than ``made`` (target, precision) is said to be that bundle. ``log_written``: False
    under ``--verbose`` (no log is written: a link of its name is not refused)."""
    if too_long := name_too_long(dest):  # else found at the rename, after the work
        raise ExportError(f"--out {dest}: its name {too_long}; choose a shorter name; nothing was changed")
    if log is not None and log_written and (why := log_problem(log)):  # found before any work, not when the toolchains start
        raise ExportError(f"{why}; remove it (the export appends to a plain file of that name beside --out) or choose "
                          "another --out; nothing was changed")
    if dest.is_symlink():  # swapping it would replace the link, not the bundle it points to
        raise ExportError(f"--out {dest} is a symbolic link to {os.readlink(dest)}; pass the real path instead "
                          f"(--out {quote_arg(str(dest.resolve()))}); nothing was changed")
    if dest.exists():
        here = Path.cwd().resolve()
        if dest.resolve() == here or dest.resolve() in here.parents:
            raise ExportError(f"--out {dest} is the current directory (or holds it); name a new folder for the bundle, e.g. --out bundles/my-model")
        if not dest.is_dir():
            raise ExportError(f"{dest} exists and is not a folder; choose another --out")
        for given in inputs:
            if dest.resolve() in Path(given).expanduser().resolve().parents:
                raise ExportError(f"{given} lies inside --out {dest}, which the export replaces: move it out of {dest} "
                                  "or choose another --out; nothing was changed")
        listed = _listed(dest)  # before suggesting --force: it replaces only bundles
        if foreign := _unlisted(dest, listed, log):
            raise ExportError(f"{dest} holds {', '.join(foreign)}, which its manifest does not list: replacing the bundle "
                              f"would delete them. Move them out of {dest} first (only {KEPT}/ is carried into a new bundle); "
                              "nothing was changed")
        if not force:
            raise ExportError(f"{dest} already exists; " + (_other_model(dest, checkpoint, made) or
                              "pass --force (force=True in Python) to replace it (the old bundle is kept until the new one is complete)"))
    if (near := next((q for q in dest.parents if q.exists()), None)) is not None and near.is_dir() and (why := unwritable(near)):
        raise ExportError(f"cannot write the bundle under {near} ({why}); choose another --out; nothing was changed")
    for parent in dest.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"cannot write the bundle under {parent}: it is a file, not a folder; choose another --out")
        if _is_bundle(parent):  # a bundle inside a bundle (and the log beside it) shipped with it, unsaid
            raise ExportError(f"--out {dest} lies inside the bundle {parent}, which holds only its own artifacts: choose a folder "
                              f"outside it (e.g. {parent.parent / dest.name}); nothing was changed")


def _other_model(dest: Path, checkpoint: Optional[str], made: Optional[tuple[str, str]] = None) -> str:
    """How the bundle at ``dest`` is another checkpoint's (every bundle of an architecture is named alike by default,
    so a second model's export had been told to --force over the first's), or this one's for another target or precision
    than ``made`` (an app's ONNX fallback beside its .pte had been told to --force), else ""."""
    try:
        d = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
        src = d.get("source") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    if not checkpoint or not isinstance(src, dict) or not src.get("sha256") or not Path(checkpoint).is_file():
        return ""
    if src["sha256"] == sha256_file(checkpoint):
        if made and (was := (d.get("target"), d.get("precision"))) != tuple(made):
            return (f"it holds this checkpoint's {was[0]} {was[1]} bundle, which --force would replace with the {made[0]} {made[1]} one; "
                    f"to keep both, name another folder, e.g. --out {quote_arg(str(dest.parent / f'{dest.name}-{made[0]}-{made[1]}'))}")
        return ""
    was = src.get("checkpoint")
    if isinstance(was, str) and Path(was).expanduser().is_absolute() and Path(was).expanduser().resolve() == Path(checkpoint).resolve():
        return (f"it is the bundle of an earlier version of {checkpoint} (the file changed since, e.g. trained on): pass --force "
                "(force=True) to replace it (the old bundle is kept until the new one is complete)")
    if isinstance(was, str) and was == str(checkpoint):  # recorded relative: the same name from another folder may be another file
        return (f"it is the bundle of {was} as it was then, which is not the file now (an earlier version of it, or another "
                f"model's file of that name): --force replaces it; to keep both, name another folder, e.g. --out "
                f"{quote_arg(str(dest.parent / ('my-' + dest.name)))}")
    classes = d.get("classes") if isinstance(d.get("classes"), list) else []
    shown = f", classes {classes[:4]}{'...' if len(classes) > 4 else ''}" if classes else ""
    return (f"it is the bundle of another checkpoint ({src.get('checkpoint', '?')}{shown}): --force would replace that model's "
            f"bundle; to keep both, name another folder, e.g. --out {quote_arg(str(dest.parent / ('my-' + dest.name)))}")


def _is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a dvt-edge bundle's manifest (a web app's or an extension's manifest.json is no bundle)."""
    try:
        d = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and isinstance(d.get("exits"), list) and "preprocess" in d and "target" in d


def _listed(dest: Path) -> set[str]:
    """The top-level names ``dest``'s manifest lists; ExportError when ``dest`` is not a bundle. A manifest the
    runtime refuses for its content (e.g. another model's preprocessing) is still ours: --force replaces it."""
    try:
        m = Manifest.load(dest, verify=False)
        artifacts, extras = [e.artifact for e in m.exits], m.extras
    except (ManifestError, OSError) as e:
        try:
            d = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
            artifacts, extras = [x["artifact"] for x in d["exits"]], d.get("extras") or {}
            assert isinstance(d["schema_version"], int) and all(isinstance(a, str) and a for a in artifacts)
        except json.JSONDecodeError:  # a bundle cut short looks so too: said how to replace it without deleting anything
            raise ExportError(f"{dest} exists and its manifest.json is not valid JSON: --force replaces only bundles it can read. If "
                              f"it is a damaged bundle, move it aside ({move_command(dest, f'{dest}.damaged')}; its calibration/ can be copied back "
                              "once the new artifacts match) and export again, or choose another --out; nothing was changed") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
            raise ExportError(f"{dest} exists and is not a dvt-edge bundle ({e}); --force replaces only bundles: "
                              "choose another --out, nothing was changed") from None
    ours = {"manifest.json", "required_operators.config", *(Path(a).parts[0] for a in artifacts)}
    records = extras.get("etrecords") if isinstance(extras, dict) else None  # export --etrecord's files
    for extra in [extras.get("required_operators") if isinstance(extras, dict) else None, *(records if isinstance(records, list) else [])]:
        if isinstance(extra, str) and extra:
            ours.add(Path(extra).parts[0])
    return ours


def _unlisted(dest: Path, ours: set[str], log: Optional[Path]) -> list[str]:
    """What ``dest`` holds beyond its manifest's files, the device calibrations and this export's log."""
    ours = set(ours)
    if log is not None and log.parent.resolve() == dest.resolve() and log.is_file() and not log.is_symlink():  # a plain file only
        ours.add(log.name)
    return sorted(p.name + ("/" if p.is_dir() else "") for p in dest.iterdir()
                  if not (p.name in ours or (p.name == KEPT and p.is_dir() and not p.is_symlink())))


def carry_over(dest: Path, tmp: Path, new: Manifest, log: Optional[Path] = None) -> list[str]:
    """Copy what the bundle at ``dest`` keeps across a replacement into ``tmp`` (copied, not moved: until the swap
    ``dest`` stays whole): the runtime's device calibrations, and this export's log if written there. Notes."""
    notes = []
    if log is not None and log.is_file() and not log.is_symlink() and log.parent.resolve() == dest.resolve():  # never followed
        shutil.copy2(log, tmp / log.name)
    src = dest / KEPT
    if not dest.is_dir() or not src.is_dir() or src.is_symlink():
        return notes
    shutil.copytree(src, tmp / KEPT, symlinks=True, ignore=shutil.ignore_patterns(".*.tmp"))  # not a killed write's half file
    files = sorted(src.glob("*.json"))
    stale = [f.stem for f in files if not _made_for(f, new)]  # each file's own record: one already stale stays so
    n = len(files)
    notes.append(f"kept {KEPT}/ ({n} device calibration(s)) from the bundle {dest} replaced: " + (
        "they were made for these artifacts (same SHA-256), so they still apply" if not stale else
        f"{'every one was' if len(stale) == n else f'{len(stale)} of them were'} made for other artifacts "
        f"({', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}): recalibrate those devices (python -m dvt_runtime.calibrate); "
        "the runtime refuses a calibration made for other artifacts"))
    return notes


def _made_for(path: Path, manifest: Manifest) -> bool:
    """Whether the calibration file at ``path`` names ``manifest``'s model, target, precision and artifacts (the export
    had compared the replaced bundle's manifest: a calibration already stale there was said to 'still apply')."""
    import json

    from dvt_runtime.calibration import bundle_identity

    try:
        if path.is_symlink() or path.stat().st_size > (8 << 20):
            return False
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    got, want = d.get("bundle") if isinstance(d, dict) else None, bundle_identity(manifest)
    return isinstance(got, dict) and all(got.get(k) == v for k, v in want.items())  # as the runtime checks it
