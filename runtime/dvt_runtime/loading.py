"""Loading a bundle's exits, verified: the manifest, every artifact's SHA-256, one session per exit, each session's
signature. An export that replaces the bundle's folder meanwhile (its ``install`` swaps folders by name) is read again:
a session of one bundle is never paired with another's (a service reopening a bundle while a new export lands had run
exits of both, unsaid, or had called a good bundle tampered)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Optional

from dvt_runtime.backends import (
    BackendRunError,
    BackendUnavailable,
    Session,
    check_options,
    check_signature,
    import_backend,
    open_session,
    ort_providers,
    provider_fallback,
)
from dvt_runtime.io import sha256_file
from dvt_runtime.manifest import ExitSpec, Manifest, ManifestError
from dvt_runtime.onnxfile import MalformedOnnx, external_tensor

ATTEMPTS = 3  # reads of a folder replaced while it was read, before giving up


def folder_id(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of the folder ``path`` names now: another when an export has swapped a new bundle in; None: gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def load_bundle(path: Path, threads: Optional[int], opts: dict[str, Any], verify: bool) -> tuple[Manifest, list[Session], list[float]]:
    """The manifest, sessions and per-exit load times of the bundle at ``path``, all of one bundle: read again when the
    folder was replaced while it was read (up to :data:`ATTEMPTS` times)."""
    said: list[str] = []  # providers this build lacks, said once however often the folder is read
    for attempt in range(ATTEMPTS):
        before = folder_id(path)
        try:
            m, sessions, load_ms, fell = _load(path, threads, dict(opts), verify, said)
        except (ManifestError, OSError, BackendUnavailable):
            if attempt + 1 < ATTEMPTS and folder_id(path) != before:  # replaced while read: a mixed read, not a bad bundle
                continue
            raise
        if folder_id(path) == before:
            if fell:  # once for the bundle, at Bundle.open's caller: ONNX Runtime itself says it only in its log
                warnings.warn(fell, stacklevel=3)
            return m, sessions, load_ms
        del sessions  # another bundle's sessions among them: released, and the new bundle read whole
    raise ManifestError(f"{path} was replaced {ATTEMPTS} times while it was opened (an export installing bundles there): open "
                        "it again once the export is done")


def _load(path: Path, threads: Optional[int], opts: dict[str, Any], verify: bool,
          said: list[str]) -> tuple[Manifest, list[Session], list[float], Optional[str]]:
    m = Manifest.load(path, verify=verify)
    check_options(m.backend, opts)
    sessions, load_ms = [], []
    import_backend(m.backend, m.toolchain, stacklevel=5)  # outside the timer: exit 1's load time is its artifact's, as on a device
    providers = opts.get("providers")
    if m.backend == "onnxruntime" and providers is not None:  # those missing here are said once, not once per exit
        opts["providers"] = ort_providers(providers, stacklevel=5, warn=not said)  # at Bundle.open's caller
        said.append("providers")
    for i, e in enumerate(m.exits):
        t0 = time.perf_counter()
        data = artifact_bytes(m.artifact_path(path, i), e, verify, m.backend)  # read and checked as a device's loader does: timed
        try:
            sessions.append(open_session(m.backend, m.artifact_path(path, i), [t.name for t in e.inputs],
                                         [t.name for t in e.outputs], threads=threads, data=data, **opts))
        except BackendUnavailable:
            if not verify and m.artifact_path(path, i).is_file() and sha256_file(m.artifact_path(path, i)) != e.sha256:
                raise ManifestError(f"{e.artifact} cannot be loaded and its SHA-256 differs from the manifest's (opened with "
                                    "verify=False): the file was damaged or changed; re-export the bundle") from None
            raise  # the exported file (its SHA-256 checked): this host cannot run it
        load_ms.append((time.perf_counter() - t0) * 1e3)
        check_signature(sessions[-1], list(e.inputs) + list(e.outputs), m.artifact_path(path, i))
    fell = provider_fallback(opts["providers"], sessions) if m.backend == "onnxruntime" and providers is not None else None
    return m, sessions, load_ms, fell


def artifact_bytes(p: Path, e: ExitSpec, verify: bool, backend: str) -> Optional[bytes]:
    """The bytes a backend loads, read once: with ``verify``, checked against the manifest's SHA-256 (the backend loads
    these bytes, not the file again: one overwritten in place after :meth:`Manifest.verify` hashed it is caught), and for
    ONNX Runtime, refused when a tensor lies in another file (any artifact not in ORT format, whatever its name). None
    for a Core ML package (a folder, loaded by path)."""
    if p.is_dir():
        return None
    if not p.is_file():  # verify=False skips the manifest's own check
        raise ManifestError(f"{e.artifact} is missing from the bundle (or not a file): re-export the bundle")
    if verify and p.stat().st_size != e.size_bytes:  # not read into memory: a 1 GB file named like an artifact
        raise ManifestError(f"{e.artifact} is {p.stat().st_size} bytes, not the {e.size_bytes} exported (changed after its SHA-256 was "
                            "checked, or the manifest is another bundle's): open the bundle again once nothing writes to it, or re-export it")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ManifestError(f"{e.artifact} cannot be read ({err.strerror or err}): re-export the bundle, or let this user read it") from None
    if verify and hashlib.sha256(data).hexdigest() != e.sha256:
        raise ManifestError(f"{e.artifact} changed after its SHA-256 was checked (written to while the bundle was opened): open "
                            "the bundle again once nothing writes to it")
    if backend == "onnxruntime" and data[4:8] != b"ORTM":  # ONNX Runtime tells the format by content, whatever the name
        try:
            name = external_tensor(data)
        except MalformedOnnx as err:
            if not verify and hashlib.sha256(data).hexdigest() != e.sha256:
                raise ManifestError(f"{e.artifact} cannot be loaded and its SHA-256 differs from the manifest's (opened with "
                                    "verify=False): the file was damaged or changed; re-export the bundle") from None
            raise ManifestError(f"{e.artifact} is not a well-formed ONNX model ({err}): re-export the bundle") from None
        if name is not None:  # ONNX Runtime reads it by a name the model gives: outside the bundle on some builds, unchecked on all
            raise ManifestError(f"{e.artifact} keeps tensor {name!r} as external data (in another file, which no checksum of the "
                                "bundle covers): dvt-edge exports none, so this artifact was made or changed elsewhere; re-export the bundle")
    return data


class CallsInFlight:
    """The calls running on a bundle, so that ``close()`` releases its sessions after them, and refuses new ones meanwhile."""

    def __init__(self, bundle: Any):
        # weak: a strong reference was a cycle, and a bundle dropped unclosed held its sessions until the garbage collector ran
        # (a service reloading with the collector off grew 9.5 MB a reload)
        self._bundle, self._n, self._closing = weakref.ref(bundle), 0, False
        self._done = threading.Condition()

    def enter(self) -> None:
        with self._done:
            bundle = self._bundle()
            if self._closing or bundle is None or not bundle.sessions:
                raise ValueError(f"{bundle!r} was closed: open the bundle again")
            self._n += 1

    def exit(self) -> None:
        with self._done:
            self._n -= 1
            if not self._n:
                self._done.notify_all()

    def close(self, timeout: float) -> None:
        with self._done:
            self._closing = True
            self._done.wait_for(lambda: not self._n, timeout)


def run_error(err: Exception, what: str, backend: str, providers: Optional[list] = None) -> Exception:
    """What a stage's failure raises: our own errors (out of memory, a refused input) as they are; a backend's own error
    (ONNX Runtime's Fail, an ExecuTorch error code) as one :class:`BackendRunError` naming the stage, with the fix."""
    if isinstance(err, (MemoryError, BackendUnavailable, ValueError)):
        return err
    why = " ".join(str(err).split())
    why = why if len(why) <= 300 else "..." + why[-300:]  # the backend's reason comes last, after a C++ signature
    gpu = [p for p in providers or [] if p != "CPUExecutionProvider"]
    fix = (f"run it without --providers (on the CPU) to tell {', '.join(gpu)} from the bundle" if gpu else
           f"compare this host's {backend} with the version in the manifest's toolchain (the one the export verified it with), "
           "or re-export the bundle (the export runs it through this runtime)")
    return BackendRunError(f"{backend} failed running {what} ({type(err).__name__}: {why or 'no message'}); {fix}")
