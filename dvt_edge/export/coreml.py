"""Core ML (.mlpackage, ML Program) exits, converted from ``torch.export``.

fp32: float32 compute. fp16: float16 compute precision (Core ML's default). int8: int8
weights (``linear_quantize_weights``, symmetric per-channel) with fp16 compute; the
``palettize`` scheme clusters weights to a lookup table (``palettize_weights``) instead;
the ``w8a8`` scheme quantizes activations too (int8 weights and int8 static activations into
every linear/conv, calibrated on real images; iOS 17+), which Apple reports faster than fp16
on the Neural Engine for ViT-class models.

W8A8 is calibrated in PyTorch (pt2e observers on the calibration images), not with
``coremltools.optimize.coreml.linear_quantize_activations``: that one runs the model to
collect statistics and ``MLModel.predict`` exists only on macOS. The pt2e graph's quantize/
dequantize pairs convert to the same Core ML ops. Its accuracy cost is measured by running the
quantized graph in PyTorch on held-out verification images (recorded as ``simulated`` in the
manifest); on macOS the export's parity check also runs the .mlpackage itself.
``MLModel.predict`` exists only on macOS, so on other hosts export checks structure only.

A float16 program keeps the T2T performer's linear attention in float32 (``FP32_OPS_NOTE``).
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dvt_edge.export.common import ExitArtifact, ExitJob, ExportError
from dvt_runtime.io import current_umask

#: why some ops of a float16 program stay float32 (said in the manifest beside their count)
FP32_OPS_NOTE = ("the T2T performer's linear attention (its exp features and their normalisation) computes in float32: in "
                 "float16 the features underflow to 0 and y / (d + 1e-8) is 0 / 0 = NaN (the epsilon is 0 in float16); PyTorch "
                 "in float16 with that attention in float32 stayed within 1e-3 of float32 on weights that make it underflow. "
                 "The Neural Engine computes in float16 only, so these ops run on the GPU or CPU")


#: the name prefix of the nodes a float16 program keeps float32; their Core ML ops bear the node's name (coremltools renames
#: an op whose name another already has: "mul_1" became "mul_1_1" beside a folded constant "mul_1", so plain names missed)
FP32_PREFIX = "dvt_f32_"


def float32_nodes(ep: torch.export.ExportedProgram) -> tuple[int, frozenset[str]]:
    """Rename the nodes computed by the T2T performer itself (not its norms, projections or MLP), which a float16 program
    keeps in float32 (``FP32_OPS_NOTE``), to ``FP32_PREFIX`` + their name. Returns how many, and the names of the
    performer's feature matrices (its ``w``; none once quantized): coremltools names ``linear`` ops by a counter of its
    own, so those are known by their weight."""
    from dvt_edge.models import TokenPerformer

    performer = f"{TokenPerformer.__module__}.{TokenPerformer.__qualname__}"
    outs = {a.name for a in torch.utils._pytree.tree_leaves(next(n for n in ep.graph.nodes if n.op == "output").args)
            if isinstance(a, torch.fx.Node)}  # the program's outputs keep their names (its signature names them)
    nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.meta.get("nn_module_stack") and n.name not in outs
             and str(list(n.meta["nn_module_stack"].values())[-1][1]) in (performer, str(TokenPerformer))]
    weights = frozenset(n.args[1].name for n in nodes if n.target == torch.ops.aten.linear.default
                        and isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "placeholder")
    for n in nodes:
        n._rename(FP32_PREFIX + n.name)
    return len(nodes), weights


def _kept_float32(name: str, op_type: str, weight: Optional[str], weights: frozenset[str]) -> bool:
    """Whether a Core ML op is one of ``float32_nodes``: named so (a division by a constant becomes "_inversed_" + its
    name), or a ``linear`` of a performer's feature matrix (its weight's name; "_to_fp16" once converted)."""
    if op_type == "linear":
        return weight is not None and weight.removesuffix("_to_fp16") in weights
    return name.removeprefix("_inversed_").startswith(FP32_PREFIX)


def xcode_name(model: str, precision: str, scheme: Optional[str], index: int) -> str:
    """The package's name, e.g. ``DvtSmallCifarFp16Exit1``: Xcode names the Swift class it generates, and the compiled
    ``.mlmodelc``, after the file, so every bundle's ``exit1.mlpackage`` collided in one app target (two precisions for
    iOS 16 and 17, or two models), and a class named ``exit1`` reads as no type. A valid Swift type name, unique per
    architecture, precision, int8 scheme and exit (two fine-tunes of one architecture still share names: rename one)."""
    parts = [*re.split(r"[^0-9A-Za-z]+", model), precision, *([scheme] if scheme and scheme != "linear" else []), f"exit{index + 1}"]
    name = "".join(w[:1].upper() + w[1:] for w in parts if w)
    return name if name[:1].isalpha() else "Dvt" + name


def _describe(ml, job: ExitJob, target_os: str) -> None:
    """What Xcode shows, and a Swift app can read from the package itself (``MLModel.modelDescription.metadata``): what the
    exit is, its input's preprocessing, where its reuse inputs come from and its outputs go, the class names."""
    from dvt_edge import __version__

    about, i, g = job.options.get("about") or {}, job.index + 1, job.graph
    n, pre, classes = about.get("num_exits", "?"), about.get("preprocess") or {}, list(about.get("classes") or [])
    ml.author, ml.version = f"exported by dvt-edge {__version__}", __version__
    ml.short_description = (f"{about.get('model', 'DVT')} exit {i} of {n} ({job.precision}{' ' + job.scheme if job.scheme else ''}, "
                            f"{target_os}+): one stage of a Dynamic Vision Transformer cascade. It returns raw logits: stop at this "
                            "exit when the softmax's largest value is >= its threshold (the bundle's manifest.json)")
    c, side = len(pre.get("mean") or []) or "C", pre.get("size", "S")
    ml.input_description["image"] = (f"Float32 MLMultiArray [1, {c}, {side}, {side}], planar {str(pre.get('channels', '')).upper()}: each "
                                     f"pixel / 255, minus mean {pre.get('mean')}, divided by std {pre.get('std')} per channel, after "
                                     "the resize and crop of the manifest's preprocess (not an image input: Vision cannot feed it)")
    for name in g.input_names[1:]:
        ml.input_description[name] = f"exit {i - 1}'s {name}_out, as it returned it"
    ml.output_description["logits"] = f"raw scores of the {len(classes) or ''} classes, in the order of the metadata's dvt.classes"
    for name in g.output_names[1:]:
        ml.output_description[name] = f"give to exit {i + 1}'s {name.removesuffix('_out')} input when this exit does not stop"
    ml.user_defined_metadata.update({
        "dvt.model": str(about.get("model", "")), "dvt.exit": str(i), "dvt.num_exits": str(n), "dvt.precision": job.precision,
        "dvt.scheme": job.scheme or "", "dvt.minimum_deployment_target": target_os, "dvt.classes": json.dumps(classes),
        "dvt.preprocess": json.dumps(pre), "dvt.inputs_from": json.dumps({k: f"exit{i - 1}.{k}_out" for k in g.input_names[1:]})})


def simulate_weights(graph: torch.nn.Module, scheme: str, bits: int = 6, threshold: int = 2048) -> torch.nn.Module:
    """A copy of ``graph`` whose weights are what ``linear_quantize_weights`` (int8 symmetric, per output channel) or
    ``palettize_weights`` (a ``bits``-bit k-means palette per tensor) make of them, rounded by coremltools' own functions:
    every float parameter and buffer of ``threshold`` or more elements, its default. Computed in float32 (the package
    computes in float16)."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize.coreml import _quantization_passes as passes  # the passes' own rounding (pinned coremltools)

    sim = copy.deepcopy(graph)
    with torch.no_grad():
        for t in [*sim.parameters(), *sim.buffers()]:
            if t.is_floating_point() and t.numel() >= threshold:
                w = t.detach().numpy()
                if scheme == "linear":  # axis 0: a linear's or a conv's output channels
                    got = passes.linear_quantize_weights.decompress(passes.linear_quantize_weights.compress(w, 0, "LINEAR_SYMMETRIC", types.int8))
                else:
                    got = passes.palettize_weights.decompress(passes.palettize_weights.compress(w, "KMEANS", bits))
                t.copy_(torch.from_numpy(np.asarray(got, np.float32).reshape(w.shape)))
    return sim


def _convert(job: ExitJob, fp16: bool, module: Optional[torch.nn.Module] = None):
    import coremltools as ct

    g = job.graph
    ep = torch.export.export(module if module is not None else g, job.example_inputs()).run_decompositions({})
    shapes = g.input_shapes()
    # float32 I/O whatever the compute precision: the bundle contract is float32 NCHW tensors
    inputs = [ct.TensorType(name=n, shape=shapes[n], dtype=np.float32) for n in g.input_names]
    outputs = [ct.TensorType(name=n, dtype=np.float32) for n in g.output_names]
    n, weights = float32_nodes(ep) if fp16 else (0, frozenset())
    keep = lambda op: _kept_float32(op.name, op.op_type, op.weight.name if op.op_type == "linear" else None, weights)
    precision = (ct.transform.FP16ComputePrecision(op_selector=lambda op: not keep(op)) if n
                 else ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32)
    return weights, ct.convert(
        ep, inputs=inputs, outputs=outputs, convert_to="mlprogram",
        compute_precision=precision,
        # quantize/dequantize of activations (W8A8) are iOS 17 ops
        minimum_deployment_target=ct.target.iOS17 if module is not None else ct.target.iOS16,
    )


def _w8a8(job: ExitJob):
    """The exit with int8 static activations and int8 weights on every linear/conv, converted; (the performer's float32
    weights, as ``_convert`` returns them, model, manifest info)."""
    import importlib.util

    from dvt_edge.export.pt2e import LayerFilter, layer_counts, quantize_static, simulated_agreement, w8a8_quantizer

    if importlib.util.find_spec("torchao") is None:
        raise ExportError("Core ML w8a8 calibrates its activations with torchao, which is not installed: "
                          "pip install 'dvt-edge[coreml]' (it brings torchao==0.18.0)")
    keep = LayerFilter()
    quantized = quantize_static(job.graph, job.example_inputs(), w8a8_quantizer(keep), job.calib, job.graph.input_names)
    weights, ml = _convert(job, fp16=True, module=quantized)
    ops = program_ops(ml.get_spec())
    info = {
        "scheme": "w8a8", "method": "pt2e (torchao) observers in PyTorch, converted to Core ML quantize/dequantize",
        "weights": "int8 symmetric per-channel", "activations": f"int8 symmetric per-tensor, static ({len(job.calib)} calibration images)",
        "compute_precision": "float16", "minimum_deployment_target": "iOS17",
        **layer_counts(quantized, keep),
        "program_ops": {k: ops[k] for k in ("quantize", "dequantize", "constexpr_affine_dequantize", "linear", "conv", "matmul")},
    }
    if job.check:
        info["simulated"] = {**simulated_agreement(job.graph, quantized, job.check, job.graph.input_names),
                             "on": "held-out verification images; the quantized graph run in PyTorch, not Core ML"}
    return weights, ml, info


PRECISIONS = ("fp32", "fp16", "int8")  # what export_exit produces: a recipe listing another is refused before the export


def export_exit(job: ExitJob) -> ExitArtifact:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheme = (job.scheme or "linear") if job.precision == "int8" else None
        quant: dict = {"scheme": "none", "compute_precision": "float16" if job.precision != "fp32" else "float32"}
        if scheme == "w8a8":
            weights, ml, quant = _w8a8(job)
        else:
            weights, ml = _convert(job, fp16=job.precision in ("fp16", "int8"))
        if scheme in ("linear", "palettize"):
            if scheme == "palettize":
                bits = int(job.target.int8.get("palettize_bits", 6))
                cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=bits))
                ml = cto.palettize_weights(ml, cfg)
                quant.update(scheme="palettize", weights=f"{bits}-bit k-means palette")
                sim = simulate_weights(job.graph, "palettize", bits)
            else:
                cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
                ml = cto.linear_quantize_weights(ml, cfg)
                quant.update(scheme="linear", weights="int8 symmetric per-channel (linear_quantize_weights)")
                sim = simulate_weights(job.graph, "linear")
            if job.check:  # off macOS nothing else measures what the weights' rounding costs
                from dvt_edge.export.pt2e import simulated_agreement

                quant["simulated"] = {**simulated_agreement(job.graph, sim, job.check, job.graph.input_names),
                                      "on": "held-out verification images; the rounded weights run in PyTorch in float32, not Core ML"}
            ops = program_ops(ml.get_spec())  # what was compressed, counted on the program: small weights stay fp16
            quant.update(compressed_constants=sum(v for k, v in ops.items() if k.startswith("constexpr_")),
                         linear_and_conv_layers=ops["linear"] + ops["conv"],
                         uncompressed="constants under 2048 elements (coremltools' weight_threshold) stay fp16; the compressed "
                                      "ones are mostly linear/conv weights, a few feed other ops")
        n, slipped = float32_ops(ml.get_spec(), weights) if job.precision != "fp32" else (0, [])
        if slipped:  # asked for float32, converted to float16: the NaN the selection is there to prevent
            raise ExportError(f"exit {job.index + 1}: coremltools computed {len(slipped)} op(s) of the T2T performer in float16 "
                              f"although they were kept float32 (e.g. {slipped[:3]}); export --precision fp32 for this model")
        if n:
            quant.update(float32_ops=n, float32_ops_note=FP32_OPS_NOTE + (
                "; w8a8 quantizes its feature projections like every linear layer (int8, computed in float16): what follows "
                "them is float32" if scheme == "w8a8" else ""))
    target_os = "iOS17" if scheme == "w8a8" else "iOS16"  # as _convert asked; macOS 14 / 13
    quant["minimum_deployment_target"] = target_os
    _describe(ml, job, target_os)
    path = job.out_dir / (xcode_name(str((job.options.get("about") or {}).get("model", "dvt")), job.precision, scheme, job.index)
                          + job.target.suffix)
    if path.exists():
        shutil.rmtree(path)
    ml.save(str(path))
    (path / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)  # coremltools' note for ExecuTorch: no part of the model
    usual_permissions(path)
    quant["coremltools"] = ct.__version__
    return ExitArtifact(artifact=path.name, quantization=quant)


def usual_permissions(path: Path) -> None:
    """coremltools writes the package through a 0700 temporary folder (files 0600): give it what any folder and file
    the user makes gets (0777 / 0666 less the umask), as the rest of the bundle has."""
    mask = current_umask()
    for d, _, files in os.walk(path):
        os.chmod(d, 0o777 & ~mask)
        for f in files:
            if not os.path.islink(os.path.join(d, f)):
                os.chmod(os.path.join(d, f), 0o666 & ~mask)


def program_ops(spec) -> collections.Counter:
    """How many of each MIL op the ML Program's ``main`` function holds."""
    ops: collections.Counter = collections.Counter()
    for block in spec.mlProgram.functions["main"].block_specializations.values():
        ops.update(op.type for op in block.operations)
    return ops


def float32_ops(spec, weights: frozenset[str] = frozenset()) -> tuple[int, list[str]]:
    """Ops of the ML Program's ``main`` that compute in float32 (casts and constants aside: 0 for a float16 program unless
    some were kept float32), and the names of ops kept float32 (``float32_nodes``) that compute in float16 all the same."""
    from coremltools.proto import MIL_pb2

    fp32, fp16 = MIL_pb2.DataType.Value("FLOAT32"), MIL_pb2.DataType.Value("FLOAT16")
    n, slipped = 0, []
    for block in spec.mlProgram.functions["main"].block_specializations.values():
        for op in block.operations:
            types = {o.type.tensorType.dataType for o in op.outputs if o.type.HasField("tensorType")}
            if op.type in ("const", "cast"):
                continue
            n += fp32 in types
            name = op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else ""
            weight = op.inputs["weight"].arguments[0].name if op.type == "linear" and "weight" in op.inputs else None
            if fp16 in types and _kept_float32(name, op.type, weight, weights):
                slipped.append(name)
    return n, slipped


def check_structure(path, input_shapes: dict, output_shapes: dict, scheme: Optional[str] = None) -> list[str]:
    """Structural check that runs anywhere: the spec loads, names/shapes/dtypes match, and a
    ``w8a8`` program really quantizes activations. Returns problems."""
    import coremltools as ct

    problems = []
    spec = ct.utils.load_spec(str(path))
    if scheme == "w8a8":
        ops = program_ops(spec)
        if not ops["quantize"] or not ops["constexpr_affine_dequantize"]:
            problems.append(f"w8a8 program has {ops['quantize']} quantize and {ops['constexpr_affine_dequantize']} int8-weight ops; "
                            "expected activations and weights quantized")
    fp32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    got_in = {i.name: (list(i.type.multiArrayType.shape), i.type.multiArrayType.dataType) for i in spec.description.input}
    got_out = {o.name: (list(o.type.multiArrayType.shape), o.type.multiArrayType.dataType) for o in spec.description.output}
    for kind, got, want in (("input", got_in, input_shapes), ("output", got_out, output_shapes)):
        for n, s in want.items():
            if n not in got:
                problems.append(f"{kind} {n} missing (has {sorted(got)})")
            elif got[n][0] != list(s) or got[n][1] != fp32:
                problems.append(f"{kind} {n}: shape {got[n][0]} dtype {got[n][1]}, expected {list(s)} float32")
    if extra := sorted(set(got_in) - set(input_shapes)):  # the runtime would not feed them
        problems.append(f"unexpected input(s) {extra} (expected only {sorted(input_shapes)})")
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type {spec.WhichOneof('Type')}, expected mlProgram")
    return problems
