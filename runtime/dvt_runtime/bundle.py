"""Open a bundle and run its early-exit cascade on the device (numpy + one backend).

    bundle = Bundle.open("bundles/dvt_small_cifar-onnx-fp32")
    pred = bundle.predict(bgr_image)     # one uint8 image, preprocessed inside: stops at the first confident exit
    pred.label, pred.confidence, pred.exit, pred.stage_ms

Stages run one after another; each later stage gets the previous stage's features and relations. A batch is regrouped
at each stage: the samples still undecided are gathered (images, features and relations together) and the stage runs
once on them, in chunks of at most ``max_batch`` (default ``DEFAULT_MAX_BATCH``, 32, fewer above 32 px). Bundles whose
artifacts take batch 1 only (ExecuTorch, Core ML, dynamic-range int8) run the same regrouping one sample per call.

One bundle may serve several threads: ONNX Runtime sessions run concurrently, ExecuTorch methods and Core ML
models one call at a time (a lock each), and the budget controller's state is guarded by a lock.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union, overload

import numpy as np

from dvt_runtime.backends import (
    Provider,
    Session,
    backend_version,
    check_threads,
)
from dvt_runtime.calibration import Calibration, bundle_args, calibration_file, check_calibration_dir
from dvt_runtime.checks import (  # noqa: F401  (DEFAULT_*: re-exported)
    DEFAULT_BATCH_PIXELS,
    DEFAULT_MAX_BATCH,
    InputError,
    NonFiniteOutput,
    check_finite,
    check_thresholds,
    images_per_call,
    positive_ms,
    setting_differences,
)
from dvt_runtime.console import quote_arg
from dvt_runtime.controller import BudgetController, controller_for
from dvt_runtime.device import check_device_name, say_host_calibration
from dvt_runtime.etdump_record import write_run_record
from dvt_runtime.inputs import BundleInputs, Encoded, ImageInput, PILImage
from dvt_runtime.latency import LatencyProfile
from dvt_runtime.loading import CallsInFlight, load_bundle, run_error
from dvt_runtime.manifest import Manifest, ManifestError  # noqa: F401  (ManifestError: raised by open)
from dvt_runtime.prediction import Prediction, softmax

Thresholds = Union[Sequence[Optional[float]], np.ndarray]  # per exit (None: never stop there), or an array of them

__all__ = ["Bundle", "Prediction", "InputError", "ManifestError", "NonFiniteOutput", "DEFAULT_BATCH_PIXELS", "DEFAULT_MAX_BATCH",
           "Encoded", "ImageInput", "PILImage", "check_thresholds", "positive_ms", "softmax"]


class Bundle(BundleInputs):
    """A verified bundle with one loaded session per exit. ``close()`` (or ``with Bundle.open(...) as b:``) releases the
    sessions (and an ExecuTorch bundle's program bytes) now, not when the last reference goes."""

    def __init__(self, path: Path, manifest: Manifest, sessions: list[Session], load_ms: list[float], device_name: Optional[str] = None,
                 threads: Optional[int] = None, calibration_dir: Union[str, Path, None] = None):
        self.path, self.manifest, self.sessions, self.load_ms, self.device_name = path, manifest, sessions, load_ms, device_name
        self.calibration_dir = path / "calibration" if calibration_dir is None else Path(calibration_dir)  # where calibrations are
        self.threads = threads  # as opened (None: the backend's default); a calibration made at another count warns
        self.calibration: Optional[Calibration] = None
        self.stage_p90_ms: Optional[list[float]] = None  # for deadline mode (from a profile/calibration)
        self._p90_from: Optional[str] = None  # the device whose calibration set stage_p90_ms (None: use_profile, or none)
        self.controller: Optional[BudgetController] = None  # one BudgetController for every budget (its speed estimate is the device's)
        self._budget_lock = threading.Lock()  # predict(budget_ms=...) from several threads
        self._calls = CallsInFlight(self)
        self._warned_budgets: set[float] = set()
        self._thr_cache: dict[tuple, np.ndarray] = {}  # thresholds as given (typed) -> checked array (see _thresholds)
        self.input_shape: tuple[int, ...] = tuple(manifest.exits[0].inputs[0].shape[1:])  # (C, H, W) of one image
        self._value_range = manifest.preprocess.value_range  # what preprocessed input can hold (raw 0-255 floats are refused)
        if device_name:
            self.use_calibration(device_name, missing_ok=True, _stacklevel=4)  # warnings point at Bundle.open's caller

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: Union[str, Path], threads: Optional[int] = 1, providers: Optional[Sequence[Provider]] = None,
             verify: bool = True, device_name: Optional[str] = None, calibration_dir: Union[str, Path, None] = None,
             **backend_opts: Any) -> "Bundle":
        """Validate the manifest (schema, paths, SHA-256 of every artifact) and load each exit. ``threads``: intra-op threads per
        session (1 is usually fastest for a cascade of small graphs; None = the backend's default). ``providers``: ONNX Runtime
        execution providers in priority order, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``, each a name or
        ``(name, options)`` as ONNX Runtime takes them (``("TensorrtExecutionProvider", {"trt_engine_cache_enable": "1"})``).
        ``device_name``: use that device's calibration (thresholds, budget table, p90s). None: the manifest's thresholds,
        warning when the bundle holds this host's (which ``dvt-runtime predict`` uses by default); ``""``: no warning.
        ``calibration_dir``: read (and let calibrate write) device calibrations there, not in ``<path>/calibration/``."""
        path = Path(path)
        calibration_dir = check_calibration_dir(calibration_dir)
        threads = check_threads(threads, warn=True)
        opts = dict(backend_opts, **({"providers": providers} if providers is not None else {}))
        m, sessions, load_ms = load_bundle(path, threads, opts, verify)
        bundle = cls(path, m, sessions, load_ms, device_name or None, threads, calibration_dir)
        if device_name is None:  # this host's calibration left unused: said
            say_host_calibration(bundle)
        return bundle

    def write_etdump(self, directory: Union[str, Path], record: bool = True) -> list[Path]:
        """ExecuTorch bundles opened with ``etdump=True``: one ETDump per exit (``exit<k>.etdp``) of the runs since the last write
        (a new trace starts: write to a new folder to keep earlier ones) and (``record``) ``etdump_runs.json`` naming this bundle
        and its threads, for ``profile import --etdump``. Held in memory until written: 145 MB after 2,000 runs of three exits."""
        if self.manifest.backend != "executorch":
            raise ValueError(f"ETDump is ExecuTorch's trace; this bundle runs on {self.manifest.backend}")
        out = [s.write_etdump(Path(directory) / f"exit{e + 1}.etdp") for e, s in enumerate(self.live_sessions())]
        if record:  # which runs were warm-up is the caller's to say (--skip-first)
            write_run_record(Path(directory), None, self.manifest, self.threads)
        return out

    # ------------------------------------------------------------------ facts
    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def default_thresholds(self) -> list[Optional[float]]:
        if self.calibration is not None:
            return self.calibration.chosen.thresholds
        if self.manifest.thresholds is not None:
            return self.manifest.thresholds
        return [None] * self.num_exits  # no thresholds: always the last exit

    # ------------------------------------------------------------------ calibration
    def calibration_path(self, device_name: str, batch: int = 1) -> Path:
        """``calibration/<device>.json`` (batch 1, the latency path), ``<device>-batch<N>.json`` for a throughput
        calibration at N images per call: one never replaces the other."""
        return calibration_file(self.calibration_dir, device_name, batch)

    @overload
    def use_calibration(self, device_name: str, missing_ok: Literal[False] = False, batch: int = 1,
                        _stacklevel: int = 2) -> Calibration: ...

    @overload
    def use_calibration(self, device_name: str, missing_ok: bool = False, batch: int = 1,
                        _stacklevel: int = 2) -> Optional[Calibration]: ...

    def use_calibration(self, device_name: str, missing_ok: bool = False, batch: int = 1, _stacklevel: int = 2) -> Optional[Calibration]:
        """Use ``calibration/<device>.json`` (in :attr:`calibration_dir`; or the one made at ``batch`` images per call): its thresholds,
        per-stage p90 and budget table.

        The file is validated (schema, types, ranges) and must have been made for this bundle
        (model, target, precision, artifact hashes) at this batch size; otherwise a CalibrationError names the file. No file:
        FileNotFoundError, or (``missing_ok``) a warning and None, the manifest's thresholds in use. A device name no file
        can be named after is a CalibrationError (a ValueError, as every other refusal here).
        """
        from dvt_runtime.calibration import CalibrationError, calibration_exists, missing_calibration, read_calibration

        p = self.calibration_path(device_name, batch)
        check_device_name(device_name, CalibrationError, where="api")  # 'x-batch8' would be told to open itself again
        if not calibration_exists(p):
            if missing_ok:  # a misspelled name, or only other batch sizes: said, as the manifest's thresholds run instead
                self._drop_calibration()  # what the warning says runs: not an earlier device's thresholds, table or p90s
                using = "the manifest's default thresholds" if self.manifest.thresholds is not None else "no thresholds (the last exit)"
                if said := missing_calibration(p, device_name, batch, using):
                    warnings.warn(said, stacklevel=_stacklevel)
                return None
            raise FileNotFoundError(f"no calibration for device {device_name!r} at batch {batch} in {p.parent} (run python -m "
                                    f"dvt_runtime.calibrate {bundle_args(self.path, self.calibration_dir)}" + (f" --batch {batch})" if batch > 1 else ")"))
        cal = read_calibration(p, self.manifest, self.path)
        if cal.device != device_name:  # a copied or renamed file: another device's latencies chose these thresholds
            raise CalibrationError(f"{p} holds the calibration of device {cal.device!r}, not {device_name!r}: calibrate this "
                                   f"device (python -m dvt_runtime.calibrate --device-name {quote_arg(device_name)}), or open the bundle "
                                   f"with device_name={cal.device!r}")
        if cal.batch != batch:  # its thresholds fit calls of cal.batch images, not these
            raise CalibrationError(f"{p} was calibrated at batch {cal.batch}, not {batch}: recalibrate with python -m "
                                   f"dvt_runtime.calibrate --batch {batch}" + (f", or use_calibration(..., batch={cal.batch})"))
        p90, src = (None, None) if self._p90_from not in (None, device_name) else (self.stage_p90_ms, self._p90_from)  # not another's
        if cal.batch == 1:  # deadline mode runs one image per call: a batch calibration's per-image p90s are too low for it
            p90, src = cal.stage_p90_ms(), device_name
        prof = cal.profile if isinstance(cal.profile, dict) else {}
        self._warn_other_setting(f"{p} was calibrated", prof.get("threads"), prof.get("device"),
                                 "its latencies (and the thresholds they chose) are another setting's: open the bundle as it was "
                                 "calibrated, or recalibrate", stacklevel=_stacklevel)
        with self._budget_lock:  # with a fresh controller in one step (a budget call between two had kept the old table's)
            self.calibration, self.controller = cal, None
            self.stage_p90_ms, self._p90_from = p90, src  # one step: a deadline call in flight saw None between two, and failed
            self._warned_budgets.clear()  # every budget may warn again
        return cal

    def _drop_calibration(self) -> None:
        """Back to the manifest's thresholds: no calibration, budget table or controller, nor a calibration's p90s
        (those given to :meth:`use_profile` stay)."""
        if self._p90_from is not None:
            self.stage_p90_ms = self._p90_from = None
        with self._budget_lock:
            self.calibration, self.controller = None, None
            self._warned_budgets.clear()

    @property
    def providers(self) -> Optional[list[str]]:
        """The ONNX Runtime execution providers exit 1's session runs on (what it started, not what was asked); None elsewhere."""
        got = getattr(self.sessions[0], "providers", None) if self.sessions else None
        return list(got) if got is not None else None

    def _warn_other_setting(self, what: str, threads: Any, device: Any, fix: str, stacklevel: int) -> None:
        """Warn when latencies (a calibration's, a profile's) were measured at other threads or execution providers."""
        if said := setting_differences(threads, device, self.threads, self.providers, backend_version(self.manifest.backend)):
            warnings.warn(f"{what} at another setting ({'; '.join(said)}): {fix}", stacklevel=stacklevel + 1)

    def use_profile(self, stage_p90_ms: Union[Sequence[float], np.ndarray, LatencyProfile]) -> None:
        """Per-stage p90 latencies (ms) for deadline mode: one per stage, or a ``LatencyProfile`` of this bundle."""
        p90 = stage_p90_ms.deadline_p90(self.manifest) if hasattr(stage_p90_ms, "deadline_p90") else stage_p90_ms
        if hasattr(stage_p90_ms, "deadline_p90"):  # as use_calibration says it
            self._warn_other_setting("the profile was taken", stage_p90_ms.threads, stage_p90_ms.device,
                                     "its p90s are another setting's: open the bundle as it was profiled, or profile it as it runs",
                                     stacklevel=2)
        if isinstance(p90, (str, bytes)) or not hasattr(p90, "__len__") or len(p90) != self.num_exits:
            raise ValueError(f"need one p90 per stage ({self.num_exits}) or a LatencyProfile, got {type(p90).__name__} {str(p90)[:80]}")
        # a measured stage never takes 0 ms: a p90 of 0 would make deadline mode run every stage whatever the deadline
        self.stage_p90_ms, self._p90_from = [positive_ms(f"p90 of stage {i + 1}", v) for i, v in enumerate(p90)], None

    def _chunk(self, max_batch: Optional[int]) -> int:
        """Samples per stage call of ``predict``/``run_exits``: ``max_batch`` when given, else
        ``DEFAULT_MAX_BATCH`` within ``DEFAULT_BATCH_PIXELS``, or the batch this device's calibration was measured at if
        larger (its prices are those of calls that size); within what the artifacts accept."""
        if max_batch is None:
            cal, pixels = self.calibration, int(np.prod(self.input_shape[-2:]))
            max_batch = max(images_per_call(pixels, DEFAULT_BATCH_PIXELS, DEFAULT_MAX_BATCH), cal.batch if cal is not None else 1)
        return self.batch_limit(max_batch)

    def batch_limit(self, max_batch: Optional[int] = None) -> int:
        """Samples per stage call: what the artifacts accept (``manifest.max_batch``), capped by ``max_batch``."""
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1):
            raise InputError(f"max_batch must be a whole number >= 1 (samples per stage call), got {max_batch!r}")
        limits = [int(v) for v in (self.manifest.max_batch, max_batch) if v is not None]
        return min(limits) if limits else sys.maxsize

    # ------------------------------------------------------------------ running
    def run_exit(self, e: int, image: np.ndarray, carry: Optional[dict] = None, check_finite: bool = True) -> dict[str, np.ndarray]:
        """Run exit ``e`` (0-based) on preprocessed (n, C, H, W) float32 images (n within ``batch_limit()``); ``carry`` =
        exit ``e - 1``'s outputs for the same images. Non-finite logits raise :class:`NonFiniteOutput` unless ``check_finite``
        is False."""
        sessions = self.live_sessions()  # once: a close() from another thread meanwhile leaves this call its sessions
        self._check_exit_call(e, image, carry)  # microseconds: an exit that exists, float32 of the input's shape, the carry
        inputs = {"image": image}
        if e > 0:
            inputs["features"], inputs["relations"] = carry["features_out"], carry["relations_out"]  # type: ignore[index]
        try:
            out = sessions[e].run(inputs)
        except Exception as err:  # noqa: BLE001  a backend's own error types: one line naming the exit, the cause chained
            if (said := run_error(err, f"exit {e + 1} of {self.manifest.model}", self.manifest.backend, self.providers)) is err:
                raise
            raise said from err
        # one reduction: a float64 sum of float32 values is finite iff every value is
        if check_finite and not math.isfinite(out["logits"].sum(dtype=np.float64)):
            m = self.manifest
            raise NonFiniteOutput(f"exit {e + 1} of {m.model} ({m.target}/{m.precision}) returned NaN or infinite logits: the input "
                                  "is out of range for this model, or the artifact is broken (re-export and verify it)")
        return out

    def run_stage(self, e: int, x: np.ndarray, carry: Optional[dict], chunk: int,
                  check_finite: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Exit ``e`` on all of ``x`` in calls of at most ``chunk`` samples: the outputs (concatenated over the calls) and,
        per sample, the wall time in ms of the call it was part of."""
        if len(x) <= chunk:  # one call (the common case): no slicing
            t0 = time.perf_counter()
            out = self.run_exit(e, x, carry, check_finite)
            return out, np.full(len(x), (time.perf_counter() - t0) * 1e3)
        outs, ms = [], np.empty(len(x))
        for s in range(0, len(x), chunk):
            sl = slice(s, s + chunk)
            c = None if carry is None else {k: carry[k][sl] for k in ("features_out", "relations_out")}
            t0 = time.perf_counter()
            outs.append(self.run_exit(e, x[sl], c, check_finite))
            ms[sl] = (time.perf_counter() - t0) * 1e3
        if len(outs) == 1:
            return outs[0], ms
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, ms

    def run_exits(self, x: Union[ImageInput, Sequence[ImageInput]], max_batch: Optional[int] = None,
                  check_finite: bool = True) -> list[np.ndarray]:
        """Logits of every exit for every sample: list of (N, classes) arrays (no early exit). Takes
        what ``predict`` takes (uint8 images are preprocessed)."""
        x = self._batch(x)[0]
        if len(x) == 0:
            raise InputError("run_exits got an empty batch (0 images); pass at least one image")
        self._calls.enter()  # close() lets this call finish
        try:
            return [out["logits"] for out, _ in self.chain(x, self._chunk(max_batch), check_finite)]
        finally:
            self._calls.exit()

    def chain(self, x: np.ndarray, chunk: int, check_finite: bool = True) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Every sample of ``x`` through exit 1, 2, ..., E, each exit fed the previous one's features
        and relations (no early exit); yields each stage's outputs and per-sample call times (ms)."""
        carry = None
        for e in range(self.num_exits):
            carry, ms = self.run_stage(e, x, carry, chunk, check_finite)
            yield carry, ms

    @overload
    def predict(self, x: Union[PILImage, Encoded], thresholds: Optional[Thresholds] = None,
                budget_ms: Optional[float] = None, deadline_ms: Optional[float] = None, max_batch: Optional[int] = None,
                spent_ms: float = 0.0) -> Prediction: ...

    @overload
    def predict(self, x: Sequence[ImageInput], thresholds: Optional[Thresholds] = None,
                budget_ms: Optional[float] = None, deadline_ms: Optional[float] = None, max_batch: Optional[int] = None,
                spent_ms: float = 0.0) -> list[Prediction]: ...

    @overload
    def predict(self, x: np.ndarray, thresholds: Optional[Thresholds] = None, budget_ms: Optional[float] = None,
                deadline_ms: Optional[float] = None, max_batch: Optional[int] = None, spent_ms: float = 0.0) -> Any: ...

    def predict(self, x: Union[ImageInput, Sequence[ImageInput]], thresholds: Optional[Thresholds] = None,
                budget_ms: Optional[float] = None, deadline_ms: Optional[float] = None,
                max_batch: Optional[int] = None, spent_ms: float = 0.0) -> Union[Prediction, list[Prediction]]:
        """Early-exit prediction. One image -> Prediction; a batch (N, C, H, W), a uint8 batch
        (N, H, W, C) or a list of images (uint8 of any size, or preprocessed float32) -> list. (Typed: a list or tuple gives
        a list; an array gives ``Any``, as its shape decides: ``pred: Prediction = bundle.predict(frame)``.)

        ``thresholds``: per-exit confidence thresholds (default: the calibration the bundle was opened with
        (``device_name=``, :meth:`use_calibration`), else the manifest's). ``budget_ms``: let the budget controller pick thresholds from
        the calibration's Pareto table. ``deadline_ms``: before each later stage, skip it when
        its profiled p90 would overrun the deadline, counted from the image's preprocessing (images
        then run one per call, as the p90s are per image); ``spent_ms``: time each image already took before this call (its
        decoding and preprocessing done by the caller), counted against the deadline too. ``max_batch``: at most this many samples per stage call (default
        ``DEFAULT_MAX_BATCH``, 32, fewer for large inputs, or the calibration's batch if larger: memory); a larger batch is
        split into calls of ``max_batch``, with the same answers. With fixed thresholds a batch gets
        the answers of one image at a time; ``budget_ms`` picks the thresholds once per call, and calls
        of the calibration's batch size update its speed estimate.
        """
        self._calls.enter()  # close() lets this call finish
        try:
            if (type(x) is np.ndarray and x.dtype == np.float32 and x.shape == self.input_shape and budget_ms is None and deadline_ms is None
                    and max_batch is None and type(spent_ms) in (int, float) and spent_ms == 0):  # one preprocessed image: kept lean
                check_finite(x, self._value_range, warn_unnormalized=True)
                return self._cascade_one(np.ascontiguousarray(x)[None], self._thresholds(thresholds))
            t0 = time.perf_counter()
            xb, single = self._batch(x)
            pre_ms = positive_ms("spent_ms", spent_ms, allow_zero=True) + (time.perf_counter() - t0) * 1e3 / max(len(xb), 1)  # each image's
            if len(xb) == 0:
                raise InputError("predict got an empty batch (0 images); pass at least one image")
            chunk = self._chunk(max_batch)
            ctl = None  # this call's controller: another thread may reset the bundle's meanwhile
            if budget_ms is not None:
                budget_ms = positive_ms("budget_ms", budget_ms)  # thresholds picked once per call
                if thresholds is not None:
                    raise InputError("pass either thresholds or budget_ms, not both")
                ctl = controller_for(self, budget_ms)
                with self._budget_lock:
                    thresholds = ctl.thresholds(budget_ms)
            thr, deadline = self._thresholds(thresholds), None
            if deadline_ms is not None:
                deadline_ms = positive_ms("deadline_ms", deadline_ms)
                if (p90 := self.stage_p90_ms) is None:  # one snapshot per call: use_calibration() from another thread replaces it
                    raise ValueError("deadline mode needs per-stage p90 latencies: open with device_name= of a calibrated device, "
                                     "or call bundle.use_profile(p90s)")
                if deadline_ms < p90[0]:  # said once (Python's filter: one text), though deadlines vary per call: exit 1 always runs
                    warnings.warn(f"a deadline_ms below exit 1's p90 ({p90[0]:.4g} ms), which always runs: most images overrun it (a "
                                  "deadline only skips later exits)", stacklevel=2)
                deadline, chunk = (deadline_ms, p90), 1  # per image, against per-image p90s: one image per call
            preds = self._cascade(xb, thr, deadline, chunk, pre_ms)
            # the controller compares per-image stage costs with the profile's, taken in calls of the calibration's batch: a call
            # of 32 images priced at batch 1 would read as a device twice as fast, and the next single images overrun
            if ctl is not None and min(len(xb), chunk) == ctl.batch:
                with self._budget_lock:
                    for p in preds:
                        ctl.observe(p.stage_ms_per_image, None if p.deadline_skipped else thresholds)  # a skip is no early exit
            return preds[0] if single else preds
        finally:
            self._calls.exit()

    def _thresholds(self, thresholds) -> np.ndarray:
        """Per-exit thresholds as a read-only float64 array (never-stop = inf, the last exit -inf);
        the same list (or the default) checked once, then taken from a small cache."""
        t = self.default_thresholds() if thresholds is None else thresholds
        try:
            key = tuple((v.__class__, v) for v in t) if isinstance(t, (list, tuple)) else None  # typed: True is not 1.0
            hit = self._thr_cache.get(key) if key is not None else None
        except TypeError:  # an unhashable entry: check_thresholds names it
            key = hit = None
        if hit is not None:
            return hit
        t = check_thresholds(t, self.num_exits)
        if len(t) == self.num_exits - 1:
            t = t + [None]
        out = np.array([np.inf if v is None else float(v) for v in t], dtype=np.float64)
        out[-1] = -np.inf  # the last exit always answers
        out.setflags(write=False)
        if key is not None:
            if len(self._thr_cache) >= 64:  # budget mode may try many: keep the cache small
                self._thr_cache.clear()
            self._thr_cache[key] = out
        return out

    def _cascade(self, xb: np.ndarray, thr: np.ndarray, deadline: Optional[tuple], chunk: int, pre_ms: float = 0.0) -> list[Prediction]:
        """Regrouped early exit: each stage runs once (in calls of ``chunk``) on the undecided samples; a deadline
        ``(ms, per-stage p90s)`` counts a sample's preprocessing (``pre_ms``) and its own stage calls.

        Kept cheap for one image (the latency path): no masks or copies when every sample stays
        or every sample stops, and per-sample bookkeeping only in Python lists.
        """
        n, E = len(xb), self.num_exits
        if n == 1 and deadline is None:
            return [self._cascade_one(xb, thr)]
        stage_ms: list[list[float]] = [[] for _ in range(n)]
        per_image: list[list[float]] = [[] for _ in range(n)]
        result: list[Optional[Prediction]] = [None] * n
        active = list(range(n))  # indexes into xb of the undecided samples
        carry: Optional[dict] = None  # previous stage's outputs, rows aligned with `active`
        for e in range(E):
            if deadline is not None and e > 0:
                late = np.array([pre_ms + sum(stage_ms[i]) + deadline[1][e] > deadline[0] for i in active])
                self._answers(result, carry["logits"], None, late, active, e - 1, stage_ms, per_image, True)
                active, carry = self._keep(active, carry, ~late)
                if not active:
                    break
            x = xb if len(active) == n else xb[active]  # gathered: (n_active, C, H, W)
            out, ms = self.run_stage(e, x, carry, chunk)
            for pos, (i, v) in enumerate(zip(active, ms.tolist())):
                stage_ms[i].append(v)
                per_image[i].append(v / min(chunk, len(active) - (pos // chunk) * chunk))  # / images in its call
            probs = softmax(out["logits"].astype(np.float64))  # (n_active, classes)
            done = np.ones(len(active), bool) if e == E - 1 else probs.max(-1) >= thr[e]
            self._answers(result, out["logits"], probs, done, active, e, stage_ms, per_image, False)
            # decided samples release their features and relations here
            active, carry = self._keep(active, None if e == E - 1 else out, ~done)
            del out, x
            if not active:
                break
        assert all(r is not None for r in result)
        return result  # type: ignore[return-value]

    def _cascade_one(self, x: np.ndarray, thr: np.ndarray) -> Prediction:
        """The cascade for one (1, C, H, W) image without a deadline: the same answer as ``_cascade``
        with none of its per-sample bookkeeping (the latency path of a camera app)."""
        E = self.num_exits
        carry: Optional[dict] = None
        stage_ms: list[float] = []
        for e in range(E):
            t0 = time.perf_counter()
            out = self.run_exit(e, x, carry)
            stage_ms.append((time.perf_counter() - t0) * 1e3)
            p = softmax(out["logits"].astype(np.float64))[0]  # (classes,)
            k = int(p.argmax())
            if e == E - 1 or p[k] >= thr[e]:
                name = self.classes[k] if k < len(self.classes) else str(k)
                return Prediction(k, name, float(p[k]), e, p, float(sum(stage_ms)), stage_ms, False, list(stage_ms))
            carry = out
        raise AssertionError("the last exit always answers")

    @staticmethod
    def _keep(active: list[int], out: Optional[dict], keep: np.ndarray) -> tuple[list[int], Optional[dict]]:
        """The samples still undecided and their rows of ``out`` (no copy when all of them stay)."""
        rows = np.flatnonzero(keep)
        if len(rows) == len(active):
            return active, out
        return [active[r] for r in rows.tolist()], None if out is None or not len(rows) else {k: v[rows] for k, v in out.items()}

    def _answers(self, result: list, logits: np.ndarray, probs: Optional[np.ndarray], mask: np.ndarray, active: list[int], e: int,
                 stage_ms: list[list[float]], per_image: list[list[float]], skipped: bool) -> None:
        """Answer the samples ``active[mask]`` from exit ``e`` (``probs``: softmax of ``logits``, if computed)."""
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        probs = softmax(logits[rows].astype(np.float64)) if probs is None else probs[rows]  # (k, classes)
        labels = probs.argmax(-1)
        for p, k, r in zip(probs, labels.tolist(), rows.tolist()):
            i = active[r]
            name = self.classes[k] if k < len(self.classes) else str(k)
            result[i] = Prediction(k, name, float(p[k]), e, p, float(sum(stage_ms[i])), stage_ms[i], skipped, per_image[i])

    def live_sessions(self) -> list[Session]:
        """The sessions, one per exit; a ValueError once the bundle was closed."""
        if not (sessions := self.sessions):
            raise ValueError(f"{self!r} was closed: open the bundle again")
        return sessions

    def close(self, timeout: float = 60.0) -> None:
        """Release every exit's session (an ExecuTorch bundle's .pte programs too) once the ``predict`` and ``run_exits``
        calls in flight have finished (up to ``timeout`` seconds: a service swapping bundles had failed its requests in
        flight); calls after it raise. Idempotent."""
        self._calls.close(timeout)
        self.sessions = []

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_budget(self) -> None:
        """Forget what the budget controller has observed: the next ``budget_ms`` call starts fresh."""
        with self._budget_lock:
            self.controller = None

    def __repr__(self) -> str:
        m = self.manifest
        closed = ", closed" if not self.sessions else ""
        return f"Bundle({self.path}, {m.model}, {m.target}/{m.precision}, {self.num_exits} exits, backend={m.backend}{closed})"
