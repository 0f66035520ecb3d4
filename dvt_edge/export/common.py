"""What every target exporter shares: the per-exit graph, its named tensors, the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from dvt_edge.export.targets import Target
from dvt_edge.models import DVT, DVTStage
from dvt_runtime.manifest import ExitSpec, TensorSpec, artifact_digest


class ExportError(RuntimeError):
    """Export failed (verification, toolchain); nothing was written to the destination."""


class VerificationFailed(ExportError):
    """The export ran and its artifacts answered unlike the model (or int8 below the agreement asked for): the work failed
    (exit 1, as a failed job among several), not the arguments (exit 2)."""


INPUT_NAMES = ("image", "features", "relations")
OUTPUT_NAMES = ("logits", "features_out", "relations_out")


class ExitGraph(nn.Module):
    """One exit as exported: named positional inputs, and only the outputs someone uses.

    The last exit returns logits only: nothing reuses its features and relations, so
    exporting them would only copy memory on the device.
    """

    def __init__(self, stage: DVTStage, last: bool):
        super().__init__()
        self.stage, self.last, self.reuse = stage, last, stage.reuse

    def forward(self, image: torch.Tensor, features: Optional[torch.Tensor] = None, relations: Optional[torch.Tensor] = None):
        logits, feats, rels = self.stage(image, features, relations)
        if self.last:
            return logits
        return logits, feats, rels

    @property
    def input_names(self) -> list[str]:
        return list(INPUT_NAMES if self.reuse else INPUT_NAMES[:1])

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES[:1] if self.last else OUTPUT_NAMES)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.stage.input_shapes(1))

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        s = self.stage.output_shapes(1)
        return {n: s[k] for n, k in zip(self.output_names, ("logits", "features", "relations"))}

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return self.stage.example_inputs(batch)

    def dynamic_shapes(self, max_batch: int = 0) -> dict[str, dict[int, "torch.export.Dim"]]:
        """One shared batch dimension (axis 0) on every input; ``max_batch`` 0 = unbounded."""
        from torch.utils._sympy.numbers import int_oo  # not imported by ``import torch`` alone

        dim = torch.export.Dim("batch", min=1, max=max_batch or int_oo)
        return {n: {0: dim} for n in self.input_names}


def exit_graphs(model: DVT) -> list[ExitGraph]:
    n = model.num_exits
    return [ExitGraph(s, i == n - 1).eval() for i, s in enumerate(model.stages)]


@dataclass
class ExitJob:
    """Everything a target needs to export one exit."""

    index: int
    graph: ExitGraph
    target: Target
    precision: str  # fp32 | fp16 | int8
    scheme: Optional[str]  # int8 scheme (target-specific), None otherwise
    calib: list[dict[str, np.ndarray]]  # real, deployment-preprocessed inputs (batch 1 each)
    out_dir: Path
    options: dict = field(default_factory=dict)
    check: list[dict[str, np.ndarray]] = field(default_factory=list)  # inputs of held-out verification images (not calibration)

    @property
    def basename(self) -> str:
        return f"exit{self.index + 1}"

    @property
    def artifact(self) -> Path:
        return self.out_dir / (self.basename + self.target.suffix)

    @property
    def dynamic_batch(self) -> bool:
        """Export with a dynamic batch axis (the target's recipe says ``batch = "dynamic"``)."""
        return self.target.batch == "dynamic"

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        # batch 2 when the axis is dynamic: torch.export specializes a size-1 example to the constant 1
        return self.graph.example_inputs(2 if self.dynamic_batch else 1)


@dataclass
class ExitArtifact:
    """What a target wrote for one exit."""

    artifact: str  # file (or directory) name inside the bundle
    quantization: dict = field(default_factory=dict)
    undelegated_ops: Optional[dict] = None
    extra_files: list[str] = field(default_factory=list)


def torch_inputs(d: dict[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(d[n])) for n in names)


def exit_specs(model: DVT, graphs, artifacts: list[ExitArtifact], root: Path) -> list[ExitSpec]:
    """The manifest's per-exit entries (artifact file, SHA-256, named tensor shapes at batch 1)."""
    exits = []
    for e, (g, a) in enumerate(zip(graphs, artifacts)):
        ex = model.exits[e]
        p = root / a.artifact
        in_s, out_s = g.input_shapes(), g.output_shapes()
        exits.append(ExitSpec(
            index=e, grid=ex.grid, tokens=ex.tokens, gflops=ex.gflops, stage_gflops=ex.stage_flops / 1e9,
            artifact=a.artifact, sha256=artifact_digest(p), size_bytes=_size(p),
            inputs=[TensorSpec(n, list(in_s[n])) for n in g.input_names],
            outputs=[TensorSpec(n, list(out_s[n])) for n in g.output_names],
            quantization=a.quantization, undelegated_ops=a.undelegated_ops,
        ))
    return exits


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
