"""Inference backends, each loading its library lazily: ``open_session("onnxruntime", "exit1.onnx", input_names,
output_names, threads=1).run({"image": x})`` maps names to arrays. A missing library raises :class:`BackendUnavailable`
naming the pip extra; ExecuTorch's Python runtime imports torch (the C++ runtime on a phone does not), the others do not.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from dvt_runtime.builds import MODULE_DISTRIBUTIONS, gpu_build_hint, installed, rebuild_fix
from dvt_runtime.console import held_output
from dvt_runtime.io import loadable

__all__ = ["BackendUnavailable", "Session", "open_session", "import_backend", "backend_version", "BACKENDS", "available_backends"]

BACKENDS = ("onnxruntime", "executorch", "coreml")
ETDUMP_DEBUG_BUFFER = 0  # bytes for intermediate outputs in the ETDump: none, timings only (a full buffer aborts)
_EXTRA = {"onnxruntime": "onnx", "executorch": "executorch", "coreml": "coreml"}
#: what each extra of runtime/pyproject.toml installs (a test keeps them equal): dvt-runtime is installed from a dvt-edge
#: checkout, not from a package index, so a fix names the packages themselves
EXTRAS = {"onnx": ("onnxruntime>=1.18",), "executorch": ("executorch==1.5.1", "torch==2.13.0"), "coreml": ("coremltools==9.0",),
          "opencv": ("opencv-python-headless>=4.10", "simplejpeg>=1.7.4")}  # the first to import under numpy 2


def install_hint(extra: str, flags: str = "") -> str:
    """The pip command that installs ``extra``'s packages (one extra, or several joined by commas; ``flags``: e.g. ``-U``)."""
    pkgs = [p for e in extra.split(",") for p in EXTRAS[e]]
    return (f"pip install {flags + ' ' if flags else ''}{' '.join(repr(p) if '>' in p else p for p in pkgs)} (dvt-runtime's "
            f"[{extra}] extra{'s' if ',' in extra else ''}; from a dvt-edge checkout: pip install './runtime[{extra}]')")
_MODULE = {"onnxruntime": "onnxruntime", "executorch": "executorch", "coreml": "coremltools"}  # what each backend imports
MIN_ORT = "1.18"  # the first onnxruntime to load ONNX IR version 10 (the exporter's); runtime/pyproject.toml pins the same


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed or cannot run on this host."""


class BackendRunError(BackendUnavailable):
    """The backend failed running a stage (its own error, e.g. an execution provider's, is the cause)."""


_LIBRARIES = {"onnxruntime": ("onnxruntime",), "executorch": ("torch", "executorch.runtime"), "coreml": ("coremltools",)}
TORCH_PIN = "torch==2.13.0"  # the torch executorch 1.5.1's Python runtime is built against (it declares none)


def installed_but_broken(err: BaseException, module: str) -> bool:
    """Whether ``err``, raised importing ``module``, says it is installed but cannot load (built for another numpy or Python),
    not that it is missing: another ``pip install`` of it changes nothing there, a build that matches does."""
    return not isinstance(err, ModuleNotFoundError) or (getattr(err, "name", None) or "").split(".")[0] != module


#: what a library says when the process's memory limit (``ulimit -v``, a container's) stops it loading or running
_OUT_OF_MEMORY = ("failed to map segment", "cannot allocate memory", "bad_alloc", "failed to allocate memory", "out of memory")
MEMORY_FIX = "raise the process's memory limit (ulimit -v, the container's) or give it smaller batches"


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out (a MemoryError, or a library's own words for it)."""
    return isinstance(err, MemoryError) or any(sign in str(err).lower() for sign in _OUT_OF_MEMORY)


def _missing(backend: str, err: Exception) -> BackendUnavailable:
    if out_of_memory(err):  # installed and whole, but the process may not map it: no reinstall helps
        return BackendUnavailable(f"the {backend} backend's library could not be loaded into memory ({type(err).__name__}: {err}): "
                                  f"{MEMORY_FIX}")
    if backend == "executorch" and (getattr(err, "name", None) or "").split(".")[0] == "torch":
        return BackendUnavailable(
            f"the executorch backend's Python runtime exchanges torch tensors and needs torch, which could not be imported "
            f"({err}); executorch declares no torch requirement. Install it with: {install_hint('executorch')} "
            f"(it pins {TORCH_PIN}; for the CPU-only build add --extra-index-url https://download.pytorch.org/whl/cpu)"
        )
    if installed_but_broken(err, module := _MODULE.get(backend, backend)):
        fix = rebuild_fix(module, err, install_hint(_EXTRA[backend], "--force-reinstall"))  # never PyPI's CPU build over NVIDIA's
        return BackendUnavailable(  # installed, but it (or what it imports) fails: another pip install of the extra changes nothing
            f"the {backend} backend's library is installed but fails to import ({type(err).__name__}: {str(err) or 'no message'}); it may "
            f"be built for another numpy or Python than this environment's. {fix}, and check: python -c 'import {module}'")
    return BackendUnavailable(
        f"the {backend} backend needs its library, which could not be imported ({err}). "
        f"Install it with: {install_hint(_EXTRA[backend])}"
    )


@contextlib.contextmanager
def toolchain_output(backend: str) -> Iterator[None]:
    """Hold what ExecuTorch and the libraries it loads print while importing and loading a program (torchao's
    kernels built for GPUs, torch's pytree notices, CPU probing, thread-pool resets): :func:`~dvt_runtime.console.held_output`.
    Other backends print nothing there: unchanged."""
    with held_output() if backend == "executorch" else contextlib.nullcontext():
        yield


_INTERRUPTED: set[str] = set()  # libraries whose import a KeyboardInterrupt cut short


def import_backend(backend: str, toolchain: Optional[dict] = None, stacklevel: int = 3) -> None:
    """Import the backend's libraries now (a bundle's load times are then its artifacts', not the
    imports'); :class:`BackendUnavailable` naming what to install when one is missing. ``toolchain``
    (the manifest's): an ExecuTorch program exported by another executorch release warns (a 1.4.1
    ``.pte`` fails to load under 1.5.1, with ExecuTorch's own error)."""
    if backend not in _LIBRARIES:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    if backend == "coreml" and platform.system() != "Darwin":
        return  # nothing to import for: opening the session says Core ML runs only on macOS/iOS
    for name in _LIBRARIES[backend]:
        try:
            with toolchain_output(backend):
                importlib.import_module(name)
        except KeyboardInterrupt:  # half imported: Python cannot finish it in this process
            _INTERRUPTED.add(name)
            raise
        except Exception as e:
            if name in _INTERRUPTED:  # a partially initialized module's AttributeError, or an ImportError that asks for a reinstall
                raise BackendUnavailable(f"importing {name} (the {backend} backend's library) was interrupted earlier in this process "
                                         "(Ctrl-C, a notebook's Interrupt), and Python cannot finish it: restart the interpreter "
                                         "(in a notebook, the kernel)") from None
            if isinstance(e, ImportError):
                raise _missing(backend, e) from None
            if not isinstance(e, FileNotFoundError):
                raise
            # torch asks for a temporary folder as it imports: a read-only container has none
            raise BackendUnavailable(f"{name} (the {backend} backend's library) needs a writable temporary folder to import ({e}): set "
                                     "TMPDIR to one (e.g. a tmpfs)") from None
    made, here = (toolchain or {}).get("executorch"), backend_version("executorch") if backend == "executorch" else None
    if made and here and made != here:
        warnings.warn(f"this bundle was exported with executorch {made}, this runtime has {here}: programs do not always "
                      f"load across releases (1.4.1's fail under 1.5.1); if loading fails, re-export it with {here}", stacklevel=stacklevel)


class Session:
    """One loaded artifact (one exit). ``run`` maps input names to arrays and back."""

    backend = "base"

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str]):
        self.input_names, self.output_names = list(input_names), list(output_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, input_names, output_names, threads: Optional[int] = None,
                 providers: Optional[Sequence[Provider]] = None, spinning: bool = False, data: Optional[bytes] = None):
        super().__init__(input_names, output_names)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise _missing("onnxruntime", e) from None
        if os.environ.get("ORT_DISABLE_TELEMETRY") == "1" and hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()  # an app that imported onnxruntime before dvt_runtime had it on (read at its import)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads) if threads else 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # a cascade runs sessions back to back: spinning threads steal the next session's cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = ort_providers(providers, stacklevel=5)
        try:
            src = data if data is not None else loadable(path)
            self.sess = ort.InferenceSession(src, so, providers=wanted)
        except Exception as e:  # noqa: BLE001  onnxruntime's own Fail/InvalidGraph/...: the artifact's hash was checked, so this host's build
            why = str(e).strip()  # ORT's reason comes last, after the path and a C++ signature
            why = why if len(why) <= 300 else "..." + why[-300:]
            old = tuple(int(v) for v in re.findall(r"\d+", ort.__version__)[:2]) < tuple(int(v) for v in MIN_ORT.split("."))
            fix = (MEMORY_FIX if out_of_memory(e) else f"this bundle needs onnxruntime >= {MIN_ORT}: {install_hint('onnx', '-U')}" if old
                   else "re-export the bundle, or run it on execution providers that take its operators (without --providers: the CPU)")
            raise BackendUnavailable(f"onnxruntime {ort.__version__} cannot load {path.name} ({type(e).__name__}: {why}); {fix}") from None
        if data is not None and self.sess.get_providers() == ["CPUExecutionProvider"] and getattr(self.sess, "_model_bytes", None) is data:
            # ONNX Runtime's wrapper keeps the bytes to build the session again when a GPU provider fails at run time (a
            # CPU session never does): a second copy of the model for the session's life (+100 MB for a 100 MB model)
            self.sess._model_bytes = None
        got = [i.name for i in self.sess.get_inputs()]
        if sorted(got) != sorted(self.input_names):
            from dvt_runtime.manifest import ManifestError  # the artifact is wrong, not the host: never "unavailable"

            raise ManifestError(f"{path.name}: graph inputs {got} differ from the manifest's {self.input_names} "
                                "(the artifact or the manifest was changed: re-export the bundle)")
        self.providers = self.sess.get_providers()

    def signature(self) -> dict[str, list]:
        """Every graph input and output -> its shape (ints, or names for dynamic axes)."""
        return {t.name: list(t.shape) for t in list(self.sess.get_inputs()) + list(self.sess.get_outputs())}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.sess.run(self.output_names, inputs)
        except Exception as e:  # noqa: BLE001  ONNX Runtime's own error types are not RuntimeErrors
            if out_of_memory(e):  # its arena could not grow: one line saying so, not ONNX Runtime's traceback
                said = re.search(r"(failed to allocate memory|bad_alloc|cannot allocate memory)[^\n]*", str(e), re.IGNORECASE)
                gpu = "cuda" in str(e).lower()  # a GPU's memory: no process limit to raise
                raise MemoryError(f"ONNX Runtime ran out of {'GPU ' if gpu else ''}memory running a stage ("
                                  f"{said.group(0) if said else str(e)[-200:]}): "
                                  + ("give it smaller batches (the GPU's memory is full)" if gpu else MEMORY_FIX)) from None
            raise
        return dict(zip(self.output_names, outs))


def _et_load_error(path: Path, e: RuntimeError) -> Exception:
    """Why ExecuTorch could not load ``path``: not an ExecuTorch program at all (its file identifier, bytes 4-5, is not
    "ET": the manifest names the wrong backend or file) is the bundle's fault; a program this build cannot load (another
    ExecuTorch's format, an operator or delegate it lacks) is this host's."""
    try:
        with open(path, "rb") as f:
            ours = f.read(8)[4:6] == b"ET"
    except OSError:
        ours = False
    if not ours:
        from dvt_runtime.manifest import ManifestError

        return ManifestError(f"{path.name}: not an ExecuTorch program ({e}), though the manifest says backend 'executorch' (the "
                             "manifest or the artifact was changed): re-export the bundle")
    return BackendUnavailable(f"executorch {backend_version('executorch')} cannot load {path.name} ({e}): a program written by "
                              "another ExecuTorch version, or one that needs operators or delegates this build lacks; install the "
                              "executorch the bundle was exported with (its manifest's toolchain), or re-export it here")


class ExecuTorchSession(Session):
    backend = "executorch"

    def __init__(self, path: Path, input_names, output_names, threads: Optional[int] = None, etdump: bool = False,
                 data: Optional[bytes] = None):
        super().__init__(input_names, output_names)
        with toolchain_output(self.backend):
            try:
                # lazily: the ExecuTorch Python runtime exchanges torch tensors (a phone's C++ runtime does not)
                self._torch = importlib.import_module("torch")
                from executorch.runtime import Runtime
            except ImportError as e:
                raise _missing("executorch", e) from None
            if threads:
                _executorch_threads(int(threads))
            self.etdump = bool(etdump)
            src = data if data is not None else loadable(path)
            try:
                if self.etdump:  # ExecuTorch's own event tracer: per-run timings, as on a phone
                    self.program = Runtime.get().load_program(src, enable_etdump=True, debug_buffer_size=ETDUMP_DEBUG_BUFFER)
                else:
                    self.program = Runtime.get().load_program(src)
                self.method = self.program.load_method("forward")
            except RuntimeError as e:
                raise _et_load_error(path, e) from None
        meta = self.method.metadata
        if meta.num_inputs() != len(self.input_names) or meta.num_outputs() != len(self.output_names):
            from dvt_runtime.manifest import ManifestError  # a swapped exit had failed at its first run, in set_inputs()

            raise ManifestError(f"{path.name}: the program takes {meta.num_inputs()} input(s) and gives {meta.num_outputs()}, the "
                                f"manifest says {len(self.input_names)} and {len(self.output_names)} (the artifact or the manifest "
                                "was changed: re-export the bundle)")
        self._lock = threading.Lock()  # a method's planned memory serves one call at a time

    def signature(self) -> dict[str, list]:
        """The manifest's input and output names -> the program's shapes, in order (a program has no tensor names)."""
        meta = self.method.metadata
        return {**{n: list(meta.input_tensor_meta(i).sizes()) for i, n in enumerate(self.input_names)},
                **{n: list(meta.output_tensor_meta(i).sizes()) for i, n in enumerate(self.output_names)}}

    def write_etdump(self, path: Path) -> Path:
        """Write the ETDump of the runs since the last write (ExecuTorch then starts a new trace; ``profile import --etdump``
        reads it). The trace is held in memory until written: about 70 KB a run per exit."""
        if not self.etdump:
            raise ValueError("open the bundle with etdump=True to record ETDump")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:  # not while a run writes its events
            self.program.write_etdump_result_to_file(str(path), str(path.with_suffix(".debug.bin")))
        if not path.is_file():
            raise BackendUnavailable("this ExecuTorch build has no event tracer (EXECUTORCH_ENABLE_EVENT_TRACER=OFF): "
                                     "it writes no ETDump; install executorch>=1.5.1 from PyPI")
        return path

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        # contiguous NCHW only: a strided view would be read as if it were contiguous
        args = [torch.from_numpy(_writable(np.ascontiguousarray(inputs[n], dtype=np.float32))) for n in self.input_names]
        with self._lock:
            outs = self.method.execute(args)
            return {n: o.numpy() for n, o in zip(self.output_names, outs)}


PROVIDERS_HELP = ("ONNX Runtime execution providers in priority order, comma-separated, e.g. CUDAExecutionProvider,CPUExecutionProvider "
                  "(ONNX bundles; default: the CPU); a provider's options after a colon, separated by semicolons, e.g. "
                  "'TensorrtExecutionProvider:trt_fp16_enable=1;trt_engine_cache_enable=1;trt_engine_cache_path=/var/cache/trt,"
                  "CUDAExecutionProvider,CPUExecutionProvider' (a TensorRT engine cache spares a rebuild at every start)")

Provider = Union[str, tuple[str, dict[str, Any]]]  # a name, or (name, options) as ONNX Runtime takes them


def provider_name(p: Provider) -> str:
    return p if isinstance(p, str) else p[0]


def _is_provider(p: object) -> bool:  # a name, or (name, options)
    return isinstance(p, str) or (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict))


def parse_providers(text: Optional[str]) -> Optional[list[Provider]]:
    """``--providers`` as a list (``"A, B:k=v;k2=v2"`` -> ``["A", ("B", {"k": "v", "k2": "v2"})]``); None when not given."""
    out: list[Provider] = []
    for item in (p.strip() for p in (text or "").split(",") if p.strip()):
        name, colon, opts = item.partition(":")
        pairs = [kv.partition("=") for kv in opts.split(";") if kv.strip()]
        if (colon and not pairs) or any(not k.strip() or not eq for k, eq, _ in pairs):
            raise ValueError(f"--providers {item!r}: a provider's options are NAME:KEY=VALUE;KEY=VALUE (e.g. "
                             "TensorrtExecutionProvider:trt_fp16_enable=1;trt_engine_cache_enable=1)")
        out.append((name.strip(), {k.strip(): v.strip() for k, _, v in pairs}) if colon else name.strip())
    return out or None


def ort_providers(providers: Optional[Sequence[Provider]], stacklevel: int = 3, warn: bool = True) -> list[Provider]:
    """The execution providers of ``providers`` (a priority list, as ONNX Runtime reads it: names, or (name, options)) this
    build has, with a warning naming those it lacks (default: the CPU); none available is :class:`BackendUnavailable`."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    unknown = [provider_name(p) for p in wanted if provider_name(p) not in available]
    if len(unknown) == len(wanted):
        raise BackendUnavailable(f"ONNX Runtime execution provider(s) {unknown} not available here; available: {available}"
                                 + gpu_build_hint(unknown))
    if unknown:  # the first available ones run, and the user is told (unless ``warn`` is off: said already)
        wanted = [p for p in wanted if provider_name(p) in available]
    if unknown and warn:
        warnings.warn(f"ONNX Runtime execution provider(s) {unknown} not available here; using {[provider_name(p) for p in wanted]}"
                      + gpu_build_hint(unknown), stacklevel=stacklevel)
    return wanted


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy of it when it is read-only (torch warns on, and may write through, a read-only buffer)."""
    return a if a.flags.writeable else a.copy()


def _executorch_threads(n: int) -> None:
    try:
        from executorch.extension.pybindings import portable_lib

        reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
        if reset is not None:
            reset(n)
    except ImportError:
        pass


class CoreMLSession(Session):
    backend = "coreml"

    def __init__(self, path: Path, input_names, output_names, compute_units: str = "CPU_AND_NE"):
        super().__init__(input_names, output_names)
        if platform.system() != "Darwin":
            raise BackendUnavailable(f"Core ML models run only on macOS (MLModel.predict; dvt-runtime does not run on iOS): on "
                                     f"{platform.system()} a Core ML bundle is exported and inspected, not run, profiled or calibrated. "
                                     "Run this on a Mac with: pip install './runtime[coreml]' (a phone's timings import anywhere: "
                                     "python -m dvt_runtime.profile import)")
        try:
            import coremltools as ct
        except ImportError as e:
            raise _missing("coreml", e) from None
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        self._lock = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:  # one prediction at a time per model (Core ML's thread safety is not promised for every compute unit)
            out = self.model.predict({n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self.input_names})
        return {n: np.asarray(out[n]) for n in self.output_names}


#: The options ``Bundle.open(**opts)`` passes to each backend (anything else is a typo, refused).
BACKEND_OPTIONS = {"onnxruntime": ("providers", "spinning"), "executorch": ("etdump",), "coreml": ("compute_units",)}
COMPUTE_UNITS = ("CPU_AND_NE", "ALL", "CPU_AND_GPU", "CPU_ONLY")  # coremltools' ComputeUnit names; the first is the default


MAX_THREADS = 256  # threads per session refused above max(this, 4 x the machine's cores)


def check_threads(threads, warn: bool = False) -> Optional[int]:
    """``threads`` as the sessions take it: None or 0 (the backend's default) or an integer >= 1; more than
    ``max(MAX_THREADS, 4 x cores)`` is refused, and with ``warn`` more than this machine's cores is warned."""
    if not (threads is None or (isinstance(threads, (int, np.integer)) and not isinstance(threads, bool) and threads >= 0)):
        raise ValueError(f"threads must be an integer >= 1 (or None / 0 for the backend's default), got {threads!r}")
    from dvt_runtime.device import _affinity, usable_cores  # device imports this module

    cores, machine = usable_cores(), _affinity() or os.cpu_count() or 1
    if warn and not threads and cores < machine:  # the backends count the cores, not a container's CPU limit
        from dvt_runtime.checks import user_stacklevel

        warnings.warn(f"the backend's default threads (one per core of the machine's {machine}) where this process may "
                      f"use {cores} core(s) (a container's CPU limit): the threads contend and every call slows; "
                      f"pass --threads {cores} (threads={cores} in Python)", stacklevel=user_stacklevel())
    if threads is None:
        return None
    if threads > max(MAX_THREADS, 4 * cores):  # a million threads: the kernel's OOM killer, at 23 GB
        raise ValueError(f"threads={threads} is far more than this machine's {cores} core(s): pass at most {cores} (or 0 for the "
                         "backend's default)")
    if warn and threads > cores:
        from dvt_runtime.checks import user_stacklevel

        warnings.warn(f"threads={threads} on a machine with {cores} core(s): the threads contend for the cores and every call slows "
                      f"(64 on 2 cores: 254 ms a call instead of 1 ms); pass at most {cores}", stacklevel=user_stacklevel())
    return int(threads)


def check_options(backend: str, opts: dict) -> None:
    """Refuse options the backend does not take (a misspelled ``provider=`` silently ran on the CPU)."""
    valid = BACKEND_OPTIONS.get(backend, ())
    bad = sorted(k for k in opts if k not in valid)
    if bad == ["providers"]:  # a command's --providers: one clear error, not a TypeError's traceback
        raise ValueError(f"execution providers (--providers) are ONNX Runtime's; this bundle runs on {backend}: drop them")
    if bad:
        raise TypeError(f"{backend} bundles take no option(s) {bad}; valid: {list(valid) + ['threads', 'verify', 'device_name']}")
    if opts.get("compute_units", "CPU_AND_NE") not in COMPUTE_UNITS:
        raise ValueError(f"unknown compute_units {opts['compute_units']!r}; valid: {list(COMPUTE_UNITS)}")
    prov = opts.get("providers")
    if prov is not None and (isinstance(prov, (str, bytes)) or not all(map(_is_provider, prov)) or not len(prov)):
        raise ValueError(f"providers must be a list of execution provider names or (name, options) pairs, e.g. "
                         f"[('CUDAExecutionProvider', {{'device_id': '0'}}), 'CPUExecutionProvider'], got {prov!r}")


def check_signature(session: Session, tensors: Sequence, path: Path) -> None:
    """The artifact's inputs and outputs against the manifest's (names; every non-batch dimension where the
    backend reports it): a swapped or edited exit fails here, at open, not at the first predict."""
    sig = getattr(session, "signature", None)
    if sig is None:
        return
    got = sig()
    from dvt_runtime.manifest import ManifestError

    for t in tensors:
        if t.name not in got:
            raise ManifestError(f"{path.name}: the manifest's tensor {t.name!r} is not in the graph (it has {sorted(got)}): "
                                "the artifact or the manifest was changed; re-export the bundle")
        shape = got[t.name]
        fixed = [(a, b) for a, b in zip(shape[1:], t.shape[1:]) if isinstance(a, int)]
        if len(shape) != len(t.shape) or any(a != b for a, b in fixed):
            raise ManifestError(f"{path.name}: tensor {t.name!r} has shape {shape} in the graph, {t.shape} in the manifest "
                                "(batch axis aside): the artifact or the manifest was changed; re-export the bundle")


def open_session(backend: str, path, input_names, output_names, threads: Optional[int] = None, data: Optional[bytes] = None,
                 **opts) -> Session:
    """Load one artifact with the named backend (``data``: the file's bytes as read and checked, loaded instead of the
    file; ONNX Runtime and ExecuTorch)."""
    path = Path(path)
    check_options(backend, opts)
    threads = check_threads(threads)
    if backend == "onnxruntime":
        return OrtSession(path, input_names, output_names, threads, opts.get("providers"), opts.get("spinning", False), data)
    if backend == "executorch":
        return ExecuTorchSession(path, input_names, output_names, threads, opts.get("etdump", False), data)
    if backend == "coreml":
        return CoreMLSession(path, input_names, output_names, opts.get("compute_units", "CPU_AND_NE"))
    raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")


#: the distributions each backend's module comes in (onnxruntime-gpu had counted as no onnxruntime: bench skipped ONNX rows)
DISTRIBUTIONS = {"onnxruntime": MODULE_DISTRIBUTIONS["onnxruntime"], "executorch": ("executorch",), "coreml": ("coremltools",)}


def backend_version(backend: str) -> Optional[str]:
    """Version of the backend's library (whichever of its distributions is installed), or None when none is."""
    found = installed(DISTRIBUTIONS[backend])
    return found[1] if found else None


def provider_fallback(wanted: Sequence[Provider], sessions: Sequence["Session"]) -> Optional[str]:
    """What to say when ONNX Runtime started without a provider it was given and has (its CUDA, cuDNN or TensorRT libraries
    did not load: it falls back to the next one, saying so only in its own log), or None."""
    got = [list(getattr(s, "providers", None) or []) for s in sessions]
    names = [provider_name(p) for p in wanted]
    lost = [p for p in names if p != "CPUExecutionProvider" and any(p not in g for g in got)]
    if not lost or not got:
        return None
    return (f"ONNX Runtime could not start {lost} (this build has it, but its libraries did not load: CUDA, cuDNN or TensorRT "
            f"missing or of another version; ONNX Runtime's log says which): the exits run on {got[0]}, and latencies measured "
            "now are theirs")


def available_backends() -> list[str]:
    """Backends that can run artifacts on this host."""
    out = []
    for b in BACKENDS:
        if backend_version(b) is None:
            continue
        if b == "coreml" and platform.system() != "Darwin":
            continue
        out.append(b)
    return out
