"""Post-training static quantization of an exit graph with PyTorch 2 export (pt2e, torchao).

Shared by the ExecuTorch recipe (``XNNPACKQuantizer``) and Core ML W8A8
(:class:`W8A8Quantizer`): which layers are quantized, how the graph is calibrated, and how
far the quantized graph's logits move from float, simulated in PyTorch.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np
import torch

from dvt_edge.export.common import torch_inputs

QUANTIZED_TARGETS = ("aten.linear.default", "aten.conv2d.default")
# XNNPACK's dynamically quantized convs: the .pte of the CIFAR reference's exits 1 and 2 was written, and
# ExecuTorch 1.5.1 could not run it (method execute failed with error 0x1); the static scheme takes convs
NO_DYNAMIC_CONV = "conv (dynamic scheme: linear layers only; static quantizes convs)"
LN_MEAN = "ln_mean_weights"  # the constant averaging row of PrimitiveLayerNorm (never quantized)


def excluded_reason(node: torch.fx.Node) -> Optional[str]:
    """Why a linear/conv node stays float (None: it is quantized)."""
    stack = node.meta.get("nn_module_stack", {})
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if any(p.endswith("head") for p in paths):
        return "classifier head"
    weight = str(node.args[1].target) if len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node) else ""
    for name, why in (("reuse_resize", "reuse resize (constant matrix)"), ("input_resize", "input resize (constant area-resize matrix)"),
                      (LN_MEAN, "layer norm means (constant 1/C row)")):
        if name in weight:
            return why
    return None


class LayerFilter:
    """Quantizer filter: True for the linear/conv nodes to quantize, and for the weight, bias and
    input nodes that annotators ask about with them (XNNPACK's conv annotator checks the whole
    partition: a filter saying no to the weight left every conv float). Records each excluded
    layer once, with why; what was quantized is counted on the converted graph
    (:func:`quantized_layers`), not here, as an annotator may still refuse a kept node."""

    def __init__(self, convs: bool = True) -> None:
        self._excluded: dict[str, str] = {}
        self.convs = convs

    def __call__(self, node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return True
        if str(node.target) not in QUANTIZED_TARGETS:
            return False
        why = excluded_reason(node)
        if why is None and not self.convs and "conv" in str(node.target):
            why = NO_DYNAMIC_CONV
        if why:
            self._excluded[node.name] = why
            return False
        return True

    @property
    def excluded(self) -> collections.Counter:
        """Excluded linear/conv layers by reason (each node once, however often annotators asked)."""
        return collections.Counter(self._excluded.values())


def quantized_layers(converted: torch.fx.GraphModule) -> dict[str, int]:
    """Linear and conv layers of a converted graph whose weight is dequantized from int8: what
    really runs quantized (``{"linear": n, "conv": m}``)."""
    counts = {"linear": 0, "conv": 0}
    for node in converted.graph.nodes:
        if node.op != "call_function" or str(node.target) not in QUANTIZED_TARGETS or len(node.args) < 2:
            continue
        w = node.args[1]
        if isinstance(w, torch.fx.Node) and "dequantize" in str(w.target):
            counts["conv" if "conv" in str(node.target) else "linear"] += 1
    return counts


def _rounded_for_float_ops(node: torch.fx.Node) -> bool:
    """Whether an op other than linear/conv reads ``node``'s value rounded to int8 (through a quantize and dequantize
    pair): a linear/conv reading its input so is what static int8 means; a float op doing so is rounding it did not ask."""
    def _is(n, kind: str) -> bool:
        return n.op == "call_function" and kind in str(n.target) and ("dequantize" in str(n.target)) == (kind == "dequantize")
    for q in (u for u in node.users if _is(u, "quantize_per_tensor")):
        for dq in (u for u in q.users if _is(u, "dequantize")):
            if any(v.op == "output" or (v.op == "call_function" and str(v.target) not in QUANTIZED_TARGETS) for v in dq.users):
                return True
    return False


# ops that move or pick values without computing new ones: a quantized linear's int8 output passes through them as such
_LAYOUT_OPS = ("reshape", "view", "transpose", "permute", "slice", "select", "flatten", "squeeze", "unsqueeze", "expand", "clone",
               "dropout", "contiguous")


def quantized_other_ops(converted: torch.fx.GraphModule) -> dict[str, int]:
    """Computing ops other than linear/conv whose output a converted graph hands to float ops (or the graph's output)
    rounded to int8, by op: counted on the graph, as an annotator may ignore the filter (XNNPACK's ``cat`` did: the
    residual stream's start, feature reuse's concat, relations_out). Empty when only linear/conv run quantized."""
    counts: collections.Counter = collections.Counter()
    for node in converted.graph.nodes:
        t = str(node.target)
        name = t.replace("aten.", "").split(".")[0]
        if (node.op == "call_function" and "quantize" not in t and t not in QUANTIZED_TARGETS and name not in _LAYOUT_OPS
                and _rounded_for_float_ops(node)):
            counts[name] += 1
    return dict(sorted(counts.items()))


def layer_counts(converted: torch.fx.GraphModule, keep: LayerFilter) -> dict:
    """The manifest's record of which layers a pt2e export quantized and which it left float (every other op: its
    output is float unless ``quantized_other_ops`` names it)."""
    by_kind = quantized_layers(converted)
    return {"quantized_layers": sum(by_kind.values()), "quantized_by_kind": by_kind, "quantized_other_ops": quantized_other_ops(converted),
            "excluded_ops": dict(keep.excluded) | {"float (not linear/conv)": "add, cat, layer_norm, softmax, gelu, matmul"}}


def quantize_static(graph: torch.nn.Module, example: tuple, quantizer, calib: list, input_names: list[str]) -> torch.fx.GraphModule:
    """``graph`` exported, observed on every calibration input (dicts of named arrays), converted
    to quantize/dequantize form (``quantized_decomposed`` ops)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calib:
        raise ValueError("static int8 needs calibration images: pass --calib-data SPEC")
    gm = torch.export.export(graph, example).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for c in calib:
            prepared(*torch_inputs(c, input_names))
    return convert_pt2e(prepared)


def w8a8_quantizer(layer_filter: LayerFilter):
    """A pt2e quantizer for Core ML W8A8: each kept linear/conv gets int8 symmetric per-tensor
    activations (static, calibrated) and int8 symmetric per-channel weights; bias and every
    other op stay float. coremltools turns the result into ``quantize``/``dequantize`` ops and
    ``constexpr_affine_dequantize`` weights, the form ``linear_quantize_activations`` writes."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

    act = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           is_dynamic=False, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
                              is_dynamic=False, observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12))

    class W8A8Quantizer(Quantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or not layer_filter(node):
                    continue
                x, w = node.args[0], node.args[1]
                node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map={x: act, w: weight}, _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return W8A8Quantizer()


def simulated_agreement(float_graph: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: list, input_names: list[str]) -> dict:
    """Top-1 agreement (%) and max |dlogit| of the quantized graph against the float one, both run
    in PyTorch on the same exit inputs; non-finite logits are reported, never hidden."""
    agree, worst, finite = [], 0.0, True
    with torch.no_grad():
        for c in inputs:
            args = torch_inputs(c, input_names)
            ref, got = float_graph(*args), quantized(*args)
            ref, got = (ref[0] if isinstance(ref, tuple) else ref).numpy(), (got[0] if isinstance(got, (tuple, list)) else got).numpy()
            finite = finite and bool(np.isfinite(got).all()) and bool(np.isfinite(ref).all())
            agree.append(float((ref.argmax(-1) == got.argmax(-1)).mean()))
            worst = max(worst, float(np.abs(ref - got).max())) if finite else float("nan")
    return {"agreement": 100.0 * float(np.mean(agree)) if agree else float("nan"), "max_abs_logit_diff": worst, "finite": finite,
            "images": len(inputs)}
