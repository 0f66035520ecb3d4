"""The bundle manifest: one dataclass, schema-versioned, that round-trips to JSON.

A bundle is a directory holding ``manifest.json`` and one artifact per exit. The
manifest says everything a device needs: the model and its classes, preprocessing, per
exit the token grid, FLOPs, artifact file and SHA-256, named input/output tensors, the
target and precision with quantization details, toolchain versions, the parity report
measured at export, and default thresholds.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

from dvt_runtime.io import atomic_write_json, sha256_file
from dvt_runtime.preprocess import Preprocess
from dvt_runtime.schema import checked_fields, parse_json, printable

__all__ = ["SCHEMA_VERSION", "TensorSpec", "ExitSpec", "ExitParity", "ParityReport", "Manifest", "ManifestError"]

# 2: ``content_sha256`` (the manifest's own digest); 3: the ``pil-bicubic`` resize, which a version-2 runtime refused as a
# malformed manifest. A manifest is written as the lowest version that holds it (3 only with pil-bicubic); older ones load.
SCHEMA_VERSION = 3
MANIFEST_NAME = "manifest.json"
FOLDER_ARTIFACTS = (".mlpackage", ".mlmodelc")  # artifacts that are folders (Core ML); the rest are files
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB (an ImageNet model's class names: about 30 KB)
MAX_EXITS = 16  # DVT cascades have 2 to 4; 400 exits of one shared artifact held 1.2 GB


class ManifestError(ValueError):
    """An invalid, tampered or incompatible bundle; the message names the problem."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass
class ExitSpec:
    index: int  # 0-based exit index
    grid: int  # token grid side
    tokens: int  # 1 + grid*grid
    gflops: float  # cumulative GFLOPs (multiply-accumulates) to reach this exit
    stage_gflops: float
    artifact: str  # path relative to the bundle directory
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: dict = field(default_factory=dict)  # scheme, excluded ops, ...
    undelegated_ops: Optional[dict] = None  # ExecuTorch: op -> count left outside the delegate

    @classmethod
    def from_dict(cls, d: dict) -> "ExitSpec":
        if not isinstance(d, dict):
            raise TypeError(f"an exit must be an object, got {type(d).__name__}")
        where = f"malformed manifest: exit {d['index'] + 1}" if isinstance(d.get("index"), int) else "malformed manifest: an exit"
        d = checked_fields(cls, d, where, ManifestError)
        for key in ("inputs", "outputs"):
            d[key] = [TensorSpec(**checked_fields(TensorSpec, t, f"{where} {key[:-1]} {j + 1}", ManifestError)) for j, t in enumerate(d[key])]
        return cls(**d)


@dataclass
class ExitParity:
    """One exit's artifact against PyTorch fp32 (None: not measured, e.g. no real images)."""

    exit: int  # 1-based
    finite: Optional[bool] = None  # the artifact's logits were all finite
    max_abs_diff_fixed: Optional[float] = None  # on the fixed example inputs
    max_abs_diff_real: Optional[float] = None  # on real images, chained through the runtime's cascade
    max_abs_diff_batched: Optional[float] = None  # batched vs one image per call
    top1_agreement: Optional[float] = None  # % of real images where artifact and PyTorch agree
    top1_artifact: Optional[float] = None  # % top-1 accuracy of the artifact
    top1_pytorch: Optional[float] = None  # % top-1 accuracy of PyTorch

    @classmethod
    def from_dict(cls, d: Any, where: str = "malformed manifest: parity exit row") -> "ExitParity":
        return cls(**checked_fields(cls, d, where, ManifestError))


@dataclass
class ParityReport:
    """What export verified: each exit's artifact, run by the device's runtime, against PyTorch."""

    runtime: str  # the backend that ran the artifacts
    checked: str  # numerical | structural | skipped (--no-verify)
    exits: list[ExitParity]
    n_real: int = 0  # real images compared
    batch_checked: Optional[int] = None  # images per call in the batched check
    exit_decision_agreement: Optional[float] = None  # % at the default thresholds
    cascade_answer_agreement: Optional[float] = None
    data: str = ""
    note: str = ""
    scheme_selection: list[str] = field(default_factory=list)  # int8: each exit's candidates, measured
    structure_problems: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every failed check
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ParityReport":
        d = checked_fields(cls, d, "malformed manifest: parity report", ManifestError)
        if not isinstance(d["exits"], list):
            raise ManifestError("malformed manifest: parity report: exits must be a list")
        d["exits"] = [ExitParity.from_dict(r, f"malformed manifest: parity row {k + 1}") for k, r in enumerate(d["exits"])]
        if d["passed"] is True:  # export passes nothing non-finite: a report that says so of such rows was edited
            bad = [f"exit {r.exit}" for r in d["exits"] if r.finite is False or any(
                isinstance(v, float) and not math.isfinite(v) for v in (r.max_abs_diff_fixed, r.max_abs_diff_real, r.max_abs_diff_batched))]
            if bad:
                raise ManifestError(f"malformed manifest: the parity report says passed, but {', '.join(bad)} answered non-finite "
                                    "values or differences: the manifest was edited; export the bundle again")
        return cls(**d)


@dataclass
class Manifest:
    model: str  # registry name
    target: str  # executorch | coreml | onnx | ort
    precision: str  # fp32 | fp16 | int8
    classes: list[str]
    preprocess: Preprocess
    exits: list[ExitSpec]
    backend: str  # runtime backend that runs the artifacts: onnxruntime | executorch | coreml
    model_config: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    thresholds: Optional[list[Optional[float]]] = None  # default per-exit thresholds (last: None)
    thresholds_source: str = ""
    parity: Optional[ParityReport] = None  # None: built in memory (export's own verification bundle)
    toolchain: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # checkpoint path, sha256
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    extras: dict = field(default_factory=dict)
    # the batch axis (axis 0 of every tensor; the shapes above list batch 1): 1 = the
    # artifacts take one sample per call (the runtime loops); N = up to N; None = any size
    max_batch: Optional[int] = 1
    batch_note: str = ""  # why the batch is fixed, when it is
    # SHA-256 of every other field (canonical JSON), written by ``save``: an edited label, mean or
    # shape in manifest.json is refused like an edited artifact ("" only in version-1 files)
    content_sha256: str = ""

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        d = checked_fields(cls, d, "manifest", ManifestError, SCHEMA_VERSION)
        try:
            d["preprocess"] = Preprocess.from_dict(d["preprocess"])
            if not isinstance(d["exits"], list):
                raise TypeError("exits must be a list")
            d["exits"] = [ExitSpec.from_dict(e) for e in d["exits"]]
            d["parity"] = None if d.get("parity") in (None, {}) else ParityReport.from_dict(d["parity"])
            m = cls(**d)
        except (TypeError, KeyError, ValueError) as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {e}") from None
        m.validate()
        return m

    def validate(self) -> None:
        """Types and ranges of every field a device relies on (a wrong type is a ManifestError, never a wrong label)."""
        for name in ("model", "target", "precision", "backend"):
            _need(isinstance(getattr(self, name), str) and getattr(self, name), f"{name} must be a non-empty string, got {getattr(self, name)!r}")
            _need(printable(getattr(self, name)), f"{name} holds control characters: {getattr(self, name)!r}")
        _need(isinstance(self.exits, list) and self.exits, "exits must be a non-empty list")
        _need(len(self.exits) <= MAX_EXITS, f"{len(self.exits)} exits; a cascade has at most {MAX_EXITS}")
        arts = [PurePosixPath(e.artifact).parts if isinstance(e.artifact, str) else e.artifact for e in self.exits]  # ./a is a
        _need(len(set(map(str, arts))) == len(arts), f"exits share an artifact ({[e.artifact for e in self.exits]}): each exit has its own")
        for i, e in enumerate(self.exits):
            w = f"exit {i + 1}:"
            _need(_is_int(e.index) and e.index == i, f"{w} index must be {i}, got {e.index!r}")
            _need(_is_int(e.grid) and e.grid > 0 and _is_int(e.tokens) and e.tokens > 0, f"{w} grid and tokens must be positive integers")
            _need(isinstance(e.artifact, str) and e.artifact, f"{w} artifact must be a relative path string, got {e.artifact!r}")
            _need(isinstance(e.sha256, str) and len(e.sha256) == 64 and all(c in "0123456789abcdef" for c in e.sha256),
                  f"{w} sha256 must be 64 lowercase hex digits, got {e.sha256!r}")
            _need(_is_int(e.size_bytes) and e.size_bytes >= 0, f"{w} size_bytes must be a non-negative integer, got {e.size_bytes!r}")
            _need(all(_is_num(v) and v >= 0 for v in (e.gflops, e.stage_gflops)), f"{w} gflops must be non-negative numbers")
            _need(isinstance(e.artifact, str) and printable(e.artifact), f"{w} artifact {e.artifact!r} holds control characters")
            for t in list(e.inputs) + list(e.outputs):
                _need(isinstance(t.name, str) and t.name and printable(t.name), f"{w} tensor names must be printable strings, got {t.name!r}")
                _need(isinstance(t.shape, list) and t.shape and all(_is_int(v) and v > 0 for v in t.shape),
                      f"{w} tensor {t.name} has a bad shape {t.shape!r}")
            _need(isinstance(e.quantization, dict), f"{w} quantization must be an object")
        self._validate_chain()
        image = tuple(self.exits[0].inputs[0].shape[1:])
        _need(self.preprocess.input_shape == image, f"preprocess makes {self.preprocess.input_shape} inputs (channels "
              f"{self.preprocess.channels!r}, size {self.preprocess.size}) but exit 1 takes {image}: the preprocessing is another "
              "model's; re-export the bundle (python -m dvt_edge.export ... --force)")
        logits = [t for t in self.exits[-1].outputs if t.name == "logits"]
        _need(bool(logits), "the last exit has no 'logits' output")
        n_classes = logits[0].shape[-1]
        _need(isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes),
              f"classes must be a list of strings, got {type(self.classes).__name__}")
        _need(len(self.classes) == n_classes, f"classes lists {len(self.classes)} names but the model outputs {n_classes} logits")
        bad = [c for c in self.classes if not printable(c)]
        _need(not bad, f"class names hold control characters (a terminal would run them), e.g. {bad[0]!r}" if bad else "")
        if self.thresholds is not None:
            t = self.thresholds
            _need(isinstance(t, list) and len(t) in (self.num_exits - 1, self.num_exits),
                  f"thresholds must be a list of {self.num_exits - 1} numbers (or null), got {t!r}")
            _need(all(v is None or (_is_num(v) and 0.0 <= v <= 1.0) for v in t), f"thresholds must be confidences in [0, 1] or null, got {t!r}")
        _need(self.max_batch is None or (_is_int(self.max_batch) and self.max_batch >= 1),
              f"max_batch must be null (any batch size) or an integer >= 1, got {self.max_batch!r}")
        _need(isinstance(self.batch_note, str), "batch_note must be a string")
        _need(self.parity is None or isinstance(self.parity, ParityReport), "parity must be a parity report object")
        for name in ("model_config", "quantization", "toolchain", "source", "extras"):
            _need(isinstance(getattr(self, name), dict), f"{name} must be an object")

    def _validate_chain(self) -> None:
        """Every exit takes the image exit 1 takes, and what a later exit carries over is what the exit before gives
        (features_out -> features, relations_out -> relations, same shapes but the batch): a mismatched chain had opened
        and failed inside ONNX Runtime at the first image that reached it."""
        _need(bool(self.exits[0].inputs), "exit 1 lists no inputs")
        image = self.exits[0].inputs[0]
        for i, e in enumerate(self.exits):
            ins = {t.name: t.shape for t in e.inputs}
            _need(bool(e.inputs) and bool(e.outputs), f"exit {i + 1} lists no inputs or no outputs")
            _need(e.inputs[0].name == image.name and e.inputs[0].shape[1:] == image.shape[1:],
                  f"exit {i + 1} takes {e.inputs[0].name} {e.inputs[0].shape}, not exit 1's image {image.name} {image.shape}")
            if i == 0:
                continue
            prev = {t.name: t.shape for t in self.exits[i - 1].outputs}
            for name, shape in ins.items():
                if name == image.name:
                    continue
                given = prev.get(f"{name}_out")
                _need(given is not None and given[1:] == shape[1:], f"exit {i + 1}'s input {name} {shape} is not what exit {i} "
                      f"gives ({name}_out: {given}): the exits are not one cascade's")

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> "Manifest":
        """The manifest in ``text`` (read from ``where``, named in errors)."""
        try:
            d = parse_json(text)
        except RecursionError:
            raise ManifestError(f"{where} is nested too deeply to be a manifest") from None
        except ValueError as e:  # bad syntax, a key twice, a 5,000-digit number
            raise ManifestError(f"{where} is not valid JSON ({str(e)[:300]}): the bundle is damaged (a copy or an export cut short?); "
                                "copy it again from where it was exported, or export it again into a new folder") from None
        return cls.from_dict(d)

    # ---------------------------------------------------------------- files
    def save(self, bundle_dir: Union[str, Path]) -> Path:
        """Validate, then write ``bundle_dir/manifest.json`` atomically: never a manifest that ``load`` would refuse."""
        self.validate()
        self.schema_version = written_version(self)
        self.content_sha256 = self.content_digest()
        return atomic_write_json(Path(bundle_dir) / MANIFEST_NAME, self.to_dict())

    def content_digest(self) -> str:
        """SHA-256 of the canonical JSON of every field but ``content_sha256``."""
        import hashlib

        d = self.to_dict()
        d.pop("content_sha256")
        # NaN allowed: a failed parity check records one, and the manifest is written as it was measured
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()

    @classmethod
    def load(cls, bundle_dir: Union[str, Path], verify: bool = True) -> "Manifest":
        """Read ``bundle_dir/manifest.json``; with ``verify`` check paths and SHA-256 of every artifact. A bundle this user may
        not read (another user's, mode 700 or 600) is a ManifestError that says so (a bare "Permission denied" named a file)."""
        try:
            return cls._load(Path(bundle_dir), verify)
        except PermissionError as e:
            from dvt_runtime.console import quote_arg

            raise ManifestError(f"{e.filename or bundle_dir} cannot be read by this user ({e.strerror or e}): let it read the bundle "
                                f"(e.g. chmod -R a+rX {quote_arg(bundle_dir)}), or use a copy it can read") from None

    @classmethod
    def _load(cls, bundle_dir: Path, verify: bool) -> "Manifest":
        path = bundle_dir / MANIFEST_NAME
        if bundle_dir.is_file():
            parent = f": pass its folder, {bundle_dir.parent}" if bundle_dir.name == MANIFEST_NAME else ""
            raise ManifestError(f"{bundle_dir} is a file, not a bundle (a folder holding {MANIFEST_NAME} and the artifacts){parent}")
        if path.is_dir():
            raise ManifestError(f"{path} is a folder, not the bundle's manifest file; re-export the bundle")
        if not path.is_file():
            raise ManifestError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} not found (export one with python -m dvt_edge.export)")
        if path.stat().st_size > MAX_MANIFEST_BYTES:  # read whole before parsing: a 1 GB file held 2 GB
            raise ManifestError(f"{path} is {path.stat().st_size} bytes, far more than a manifest's few KB (at most "
                                f"{MAX_MANIFEST_BYTES >> 20} MB): the bundle is damaged or not dvt-edge's; re-export it")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): the file is corrupted; re-export the bundle") from None
        m = cls.from_json(text, str(path))
        if verify:
            m.verify(bundle_dir)
        return m

    def artifact_path(self, bundle_dir: Union[str, Path], exit_index: int) -> Path:
        """Resolved path of an exit's artifact; refuses paths that leave the bundle."""
        rel = self.exits[exit_index].artifact
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not rel or not printable(rel):
            raise ManifestError(f"exit {exit_index + 1}: artifact path {rel!r} escapes the bundle (must be relative, inside it)")
        root = Path(bundle_dir).resolve()
        full = (root / Path(*p.parts)).resolve()
        if root not in full.parents:
            raise ManifestError(f"exit {exit_index + 1}: artifact path {rel!r} escapes the bundle")
        return full

    def verify(self, bundle_dir: Union[str, Path]) -> None:
        """Check every artifact exists and matches its SHA-256 (the message names the file)."""
        if not self.exits:
            raise ManifestError("manifest lists no exits")
        for i, e in enumerate(self.exits):
            p = self.artifact_path(bundle_dir, i)
            if not p.exists():
                raise ManifestError(f"exit {i + 1}: artifact {e.artifact} is missing from {bundle_dir}")
            if p.is_dir() != (p.suffix in FOLDER_ARTIFACTS):  # a .mlpackage is a folder; .onnx, .ort and .pte are files
                raise ManifestError(f"exit {i + 1}: artifact {e.artifact} in {bundle_dir} is a {'folder' if p.is_dir() else 'file'}, "
                                    f"not the {'file' if p.is_dir() else 'folder'} that was exported; re-export the bundle")
            digest = _digest(p)
            if digest != e.sha256:
                raise ManifestError(
                    f"exit {i + 1}: artifact {e.artifact} fails its SHA-256 check (tampered or corrupted): "
                    f"manifest {e.sha256[:16]}..., file {digest[:16]}...; re-export the bundle"
                )
        self._verify_required_operators(Path(bundle_dir))
        if self.schema_version < 2 and not self.content_sha256:  # older than the digest: an edit cannot be told from the export
            warnings.warn(f"{Path(bundle_dir) / MANIFEST_NAME} is a version-{self.schema_version} manifest, which has no digest of its "
                          "own fields, so an edited class name, mean or shape is not detected: re-export the bundle, or seal it "
                          "as it is with Manifest.load(dir, verify=False).save(dir) after checking its fields",
                          stacklevel=3)
        if (self.schema_version >= 2 or self.content_sha256) and self.content_sha256 != self.content_digest():  # after the artifacts: their errors are more precise
            raise ManifestError(f"{Path(bundle_dir) / MANIFEST_NAME} was edited after export (its content_sha256 does not match "
                                "its fields: a changed class name, mean or shape would give wrong answers); re-export the bundle, "
                                "or, if the edit is meant, Manifest.load(dir, verify=False) then .save(dir) to seal it again")

    def _verify_required_operators(self, bundle_dir: Path) -> None:
        """The ort target's ``required_operators.config`` (a reduced ONNX Runtime build's operator list, not read at run
        time): left off a device, fine; there but not the exported one, a warning (a build from it may lack operators)."""
        name, digest = self.extras.get("required_operators"), self.extras.get("required_operators_sha256")
        if not isinstance(name, str) or not isinstance(digest, str) or Path(name).name != name or not (bundle_dir / name).is_file():
            return
        if sha256_file(bundle_dir / name) != digest:
            warnings.warn(f"{bundle_dir / name} is not the file exported with this bundle (its SHA-256 differs): a reduced ONNX "
                          "Runtime build from it may lack operators the exits need; re-export the bundle for the exported one",
                          stacklevel=4)

    @property
    def num_exits(self) -> int:
        return len(self.exits)


def _digest(p: Path) -> str:
    """SHA-256 of a file, or of a directory artifact (e.g. .mlpackage) as sorted (path, file hash) pairs."""
    if p.is_file():
        return sha256_file(p)
    import hashlib

    h = hashlib.sha256()
    links = [x for x in p.rglob("*") if x.is_symlink()]
    if links:  # a link could point anywhere on the device: an artifact's files lie inside it
        raise ManifestError(f"artifact {p.name} contains symbolic links ({', '.join(str(x.relative_to(p)) for x in links[:3])}): "
                            "a bundle's artifacts must be plain files; re-export or copy the bundle without links")
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not _finder_file(x.name)):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def artifact_digest(p: Union[str, Path]) -> str:
    return _digest(Path(p))


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ManifestError(f"malformed manifest: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finder_file(name: str) -> bool:
    """What macOS adds inside a package it shows or copies (Finder's .DS_Store, AppleDouble ._ files on SMB or FAT): no
    part of the artifact, so no part of its digest (a .DS_Store in an .mlpackage had failed the bundle as tampered)."""
    return name == ".DS_Store" or name.startswith("._")


def written_version(m: Manifest) -> int:
    """The lowest schema version that describes ``m``: an older dvt-runtime on a device reads it, or says to upgrade."""
    return 3 if m.preprocess.interpolation == "pil-bicubic" else 2
