"""ExecuTorch (.pte) exits delegated to XNNPACK.

fp32: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)``.
int8: pt2e with ``XNNPACKQuantizer``, per-channel int8 weights and either dynamic int8
activations or static ones calibrated on real images. Linear/conv layers only (the manifest counts, on the converted graph, any other op that hands on an int8-rounded value: none): the
classifier head, the reuse-resize matrices, residual adds, LayerNorm, softmax and GELU
stay float (static per-tensor activations on those lose accuracy on DVT stages).
"""

from __future__ import annotations

import collections
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from dvt_edge.export.common import ExitArtifact, ExitJob
from dvt_edge.export.pt2e import LN_MEAN, LayerFilter, layer_counts, quantize_static


class PrimitiveLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension from ops XNNPACK delegates.

    ExecuTorch 1.5.1's XNNPACK partitioner has no layer_norm: each one split the stage into
    several delegate calls with a portable kernel between them. Here the two means are a
    linear with a constant 1/C row, then sub, mul, add and rsqrt: the same function, equal to
    ``nn.LayerNorm`` up to float rounding (the export's parity check holds it to 1e-3 on logits).
    """

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        c = ln.normalized_shape[-1]
        assert len(ln.normalized_shape) == 1 and ln.elementwise_affine, "last-dimension affine LayerNorm only"
        self.eps, self.weight, self.bias = ln.eps, ln.weight, ln.bias
        self.register_buffer(LN_MEAN, torch.full((1, c), 1.0 / c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = getattr(self, LN_MEAN)
        xc = x - F.linear(x, w)  # (..., C) minus the mean (..., 1)
        var = F.linear(xc * xc, w)  # (..., 1)
        return xc * torch.rsqrt(var + self.eps) * self.weight + self.bias


BLOCKED_SOFT_SPLIT_MIN_KERNEL = 11  # XNNPACK, 1 thread: 14x14/8 split 1.60 vs 2.63 ms, 11x11/6 1.83 vs 2.04, 7x7/4 2.02 vs 1.32


def for_xnnpack(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for XNNPACK (the original is untouched): every LayerNorm as
    :class:`PrimitiveLayerNorm`, and T2T soft splits with kernels of at least
    ``BLOCKED_SOFT_SPLIT_MIN_KERNEL`` as slices (``SoftSplit.blocked``) instead of a one-hot
    convolution, whose k*k multiply-accumulates per value XNNPACK runs slower there."""
    from dvt_edge.models import SoftSplit

    module = copy.deepcopy(module)
    for child in list(module.modules()):
        if isinstance(child, SoftSplit) and child.kernel_size >= BLOCKED_SOFT_SPLIT_MIN_KERNEL:
            child.blocked = True
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.LayerNorm) and len(sub.normalized_shape) == 1 and sub.elementwise_affine:
                setattr(child, attr, PrimitiveLayerNorm(sub))
    return module.eval()


def _quantize(job: ExitJob, graph: nn.Module, example: tuple) -> tuple[torch.nn.Module, dict]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    scheme = job.scheme or "dynamic"
    dynamic = scheme == "dynamic"
    keep = LayerFilter(convs=not dynamic)
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    q.set_filter_function(keep)
    # XNNPACK's cat annotator ignores the filter: every cat (the residual stream's start, feature reuse's concat,
    # relations_out) came out int8 under static (exit 1's agreement 97.8% against 98.1% float; ad hoc, 1,000 CIFAR images)
    q.SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if p.name != "cat"]
    # dynamic activations are not calibrated: one input (a real image, else the fixed example) only runs the observers
    calib = job.calib if not dynamic else (job.calib[:1] or [{n: t.numpy() for n, t in zip(job.graph.input_names, example)}])
    converted = quantize_static(graph, example, q, calib, job.graph.input_names)
    info = {
        "scheme": scheme,
        "method": "pt2e XNNPACKQuantizer",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 dynamic per-token" if dynamic else f"int8 static per-tensor ({len(calib)} calibration images)",
        **layer_counts(converted, keep),
    }
    return converted, info


def undelegated_ops(edge_program) -> dict[str, int]:
    """Ops left outside the XNNPACK delegate (they run on portable kernels)."""
    counts: collections.Counter = collections.Counter()
    for node in edge_program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name or name == "getitem":
            continue
        counts[name.replace("aten.", "").replace(".default", "")] += 1
    return dict(sorted(counts.items()))


PRECISIONS = ("fp32", "int8")  # what export_exit produces: a recipe listing another is refused before the export


def export_exit(job: ExitJob) -> ExitArtifact:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = job.example_inputs()
    quant: dict = {"scheme": "none", "precision": "fp32"}
    module = for_xnnpack(job.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if job.precision == "int8":
            module, quant = _quantize(job, module, example)
        ep = torch.export.export(module, example)
        etrecord = bool(job.options.get("etrecord"))
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], generate_etrecord=etrecord)
        ops = undelegated_ops(edge.exported_program())
        prog = edge.to_executorch()
        quant["portable_kernels"] = sorted({o.name + (f".{o.overload}" if o.overload else "") for plan in prog.executorch_program.execution_plan
                                            for o in plan.operators})  # as a selective build's op list names them (a default: no overload)
        extra = []
        if etrecord:  # the graphs with debug handles: Inspector(etdump_path=..., etrecord=...) names each traced operator
            prog.get_etrecord().save(str(job.out_dir / f"{job.basename}.etrecord"))
            extra.append(f"{job.basename}.etrecord")
    job.artifact.write_bytes(prog.buffer)
    return ExitArtifact(artifact=job.artifact.name, quantization=quant, undelegated_ops=ops, extra_files=extra)
