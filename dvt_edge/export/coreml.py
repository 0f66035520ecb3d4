"""Core ML (.mlpackage, ML Program) exits, converted from ``torch.export``.

fp32: float32 compute. fp16: float16 compute precision (Core ML's default). int8: int8
weights (``linear_quantize_weights``, symmetric per-channel) with fp16 compute; the
``palettize`` scheme clusters weights to a lookup table (``palettize_weights``) instead.
``MLModel.predict`` exists only on macOS, so on other hosts export checks structure only.
"""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import torch

from dvt_edge.export.common import ExitArtifact, ExitJob


def _convert(job: ExitJob, fp16: bool):
    import coremltools as ct

    g = job.graph
    ep = torch.export.export(g, job.example_inputs()).run_decompositions({})
    shapes = g.input_shapes()
    # float32 I/O whatever the compute precision: the bundle contract is float32 NCHW tensors
    inputs = [ct.TensorType(name=n, shape=shapes[n], dtype=np.float32) for n in g.input_names]
    outputs = [ct.TensorType(name=n, dtype=np.float32) for n in g.output_names]
    return ct.convert(
        ep, inputs=inputs, outputs=outputs, convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )


def export_exit(job: ExitJob) -> ExitArtifact:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = _convert(job, fp16=job.precision in ("fp16", "int8"))
        quant: dict = {"scheme": "none", "compute_precision": "float16" if job.precision != "fp32" else "float32"}
        if job.precision == "int8":
            scheme = job.scheme or "linear"
            if scheme == "palettize":
                bits = int(job.target.int8.get("palettize_bits", 6))
                cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=bits))
                ml = cto.palettize_weights(ml, cfg)
                quant.update(scheme="palettize", weights=f"{bits}-bit k-means palette")
            else:
                cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
                ml = cto.linear_quantize_weights(ml, cfg)
                quant.update(scheme="linear", weights="int8 symmetric per-channel (linear_quantize_weights)")
    path = job.artifact
    if path.exists():
        shutil.rmtree(path)
    ml.save(str(path))
    quant["coremltools"] = ct.__version__
    return ExitArtifact(artifact=path.name, quantization=quant)


def check_structure(path, input_shapes: dict, output_shapes: dict) -> list[str]:
    """Structural check that runs anywhere: the spec loads, names/shapes/dtypes match. Returns problems."""
    import coremltools as ct

    problems = []
    spec = ct.utils.load_spec(str(path))
    fp32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    got_in = {i.name: (list(i.type.multiArrayType.shape), i.type.multiArrayType.dataType) for i in spec.description.input}
    for n, s in input_shapes.items():
        if n not in got_in:
            problems.append(f"input {n} missing (has {sorted(got_in)})")
        elif got_in[n][0] != list(s) or got_in[n][1] != fp32:
            problems.append(f"input {n}: shape {got_in[n][0]} dtype {got_in[n][1]}, expected {list(s)} float32")
    got_out = {o.name: o.type.multiArrayType.dataType for o in spec.description.output}
    for n in output_shapes:
        if n not in got_out:
            problems.append(f"output {n} missing (has {sorted(got_out)})")
        elif got_out[n] != fp32:
            problems.append(f"output {n}: dtype {got_out[n]}, expected float32")
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type {spec.WhichOneof('Type')}, expected mlProgram")
    return problems
