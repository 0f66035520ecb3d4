"""ONNX Runtime (.onnx) and ONNX Runtime Mobile (.ort) exits.

fp32: torch's dynamo exporter, weights embedded. int8: ``quantize_static`` (QDQ, U8S8,
per-channel weights) restricted to MatMul/Gemm and calibrated on real images, or
``quantize_dynamic``. The ``ort`` target converts the result to the ORT format and writes
``required_operators.config`` for reduced builds.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from dvt_edge.export.common import ExitArtifact, ExitJob

OPSET = 20


def _export_fp32(job: ExitJob, path: Path) -> None:
    import warnings

    g = job.graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        prog = torch.onnx.export(
            g, job.example_inputs(), dynamo=True, opset_version=OPSET, external_data=False,
            input_names=g.input_names, output_names=g.output_names, verbose=False,
            dynamic_shapes=g.dynamic_shapes(job.target.max_batch) if job.dynamic_batch else None,
        )
    prog.save(str(path), external_data=False)
    _strip_stack_traces(path)


def _strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node Python stack traces: they held the exporting machine's absolute paths (a user name in a
    virtual environment's path) in every artifact shipped. The nodes' module names and scopes stay, for debugging."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for node in [*m.graph.node, *(n for f in m.functions for n in f.node)]:
        keep = [prop for prop in node.metadata_props if prop.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(m, str(path))


class _Reader:
    """onnxruntime CalibrationDataReader over real, preprocessed inputs (one method)."""

    def __init__(self, calib: list[dict[str, np.ndarray]]):
        self._it = iter(calib)

    def get_next(self):
        return next(self._it, None)


U8S8_NOTE = ("uint8 activations x int8 weights kept to 7 bits (reduce_range): on x86 CPUs without VNNI, ONNX Runtime's "
             "u8s8 kernels (VPMADDUBSW) saturate with full 8-bit weights (measured on an AVX2 EPYC: top-1 agreement 91.67% "
             "instead of >= 97% on dvt_micro_fmnist); verify on your device (python -m dvt_edge.evaluate --bundles)")


def _quantize(job: ExitJob, fp32: Path, out: Path, scheme: str) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    op_types = list(job.target.int8.get("op_types", ["MatMul", "Gemm"]))
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        if scheme == "dynamic":
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=op_types, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
            return {"scheme": "dynamic", "method": "onnxruntime.quantize_dynamic", "op_types": op_types,
                    "weights": "int8 per-channel, 7-bit range", "activations": "uint8 dynamic", "note": U8S8_NOTE,
                    "excluded_ops": f"all but {'/'.join(op_types)} with a constant weight: the patch convolutions, LayerNorm, "
                                    "GELU, Softmax and the attention MatMuls (two activations) stay float"}
        if not job.calib:
            raise ValueError("static int8 needs calibration images: pass --calib-data SPEC")
        # U8S8 (asymmetric uint8 activations, symmetric int8 weights): MLAS's VNNI path on x86;
        # S8S8 measured 0.87x of fp32 on dvt_t2t_vit_12 exit 3 here, U8S8 1.13x
        attention = activation_matmuls(pre)  # QDQ ignores MatMulConstBOnly: name them
        quantize_static(
            str(pre), str(out), _Reader(job.calib), quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True}, nodes_to_exclude=attention,
        )
    return {"scheme": "static", "method": "onnxruntime.quantize_static (QDQ)", "op_types": op_types,
            "weights": "int8 per-channel symmetric, 7-bit range", "activations": "uint8 static asymmetric (MinMax)",
            "calibration_images": len(job.calib), "note": U8S8_NOTE,
            "excluded_ops": f"all but {'/'.join(op_types)}; {len(attention)} MatMul(s) of two activations (attention) stay float"}


#: what the ONNX recipe quantizes, said beside its counts (the ExecuTorch and Core ML recipes keep these float)
CONSTANT_WEIGHTS_NOTE = ("every MatMul/Gemm with a constant weight is quantized: the classifier head and the constant resize "
                         "matrices (a stage's input area-resize, feature reuse's resize) included")


def quantized_weights(path: Path) -> dict[str, int]:
    """Nodes of a quantized ONNX graph that compute with an int8 constant weight, by op type, counted on the graph:
    read directly (``MatMulInteger``, dynamic) or through a ``DequantizeLinear`` of an initializer (QDQ, static)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    int8 = {i.name for i in g.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) >= 2}
    deq = {o for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int8 for o in n.output}
    counts: dict[str, int] = {}
    for n in g.node:
        if n.op_type not in ("DequantizeLinear", "QuantizeLinear") and any(i in int8 or i in deq for i in n.input):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def activation_matmuls(path: Path) -> list[str]:
    """MatMul nodes with no constant operand (attention's q.k and attn.v): ORT's ``MatMulConstBOnly``
    keeps them float in ``quantize_dynamic``, but its QDQ quantizer ignores the option."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    const = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in g.node if n.op_type == "MatMul" and not any(i in const for i in n.input)]


def _to_ort(onnx_path: Path, out_dir: Path) -> list[str]:
    """Convert to the ORT format with onnxruntime's own tool; returns the files written."""
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / onnx_path.name
        shutil.copy(onnx_path, src)
        r = subprocess.run(
            [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
             "--output_dir", str(td), "--optimization_style", "Fixed"],
            capture_output=True, text=True,
        )
        ort_files = list(Path(td).glob("*.ort"))
        if r.returncode != 0 or not ort_files:
            raise RuntimeError(f"convert_onnx_models_to_ort failed for {onnx_path.name}: {r.stderr[-2000:] or r.stdout[-2000:]}")
        out = []
        for f in ort_files:
            shutil.copy(f, out_dir / (onnx_path.stem + ".ort"))
            out.append(onnx_path.stem + ".ort")
        cfg = next(Path(td).glob("*required_operators*.config"), None)
        if cfg is not None:
            shutil.copy(cfg, out_dir / f"{onnx_path.stem}.required_operators.config")
            out.append(f"{onnx_path.stem}.required_operators.config")
        return out


PRECISIONS = ("fp32", "int8")  # what export_exit produces: a recipe listing another is refused before the export


def export_exit(job: ExitJob) -> ExitArtifact:
    out_dir = job.out_dir
    onnx_path = out_dir / f"{job.basename}.onnx"
    quant: dict = {"scheme": "none", "precision": "fp32"}
    with tempfile.TemporaryDirectory() as td:
        fp32 = Path(td) / "fp32.onnx"
        _export_fp32(job, fp32)
        if job.precision == "int8":
            quant = _quantize(job, fp32, onnx_path, job.scheme or "static")
            quant["quantized_weights"], quant["quantized_weights_note"] = quantized_weights(onnx_path), CONSTANT_WEIGHTS_NOTE
        else:
            shutil.copy(fp32, onnx_path)
    quant["opset"] = OPSET
    if job.target.suffix == ".ort":  # the recipe asks for the ORT format (whatever it is named)
        files = _to_ort(onnx_path, out_dir)
        onnx_path.unlink()
        if "quantized_weights" in quant:  # the .ort file's own nodes are ORT's fused kernels, not countable the same way
            quant["quantized_weights_note"] += "; counted on the ONNX graph before its conversion to the ORT format"
        return ExitArtifact(artifact=files[0], quantization=quant, extra_files=files[1:])
    return ExitArtifact(artifact=onnx_path.name, quantization=quant)


def merge_required_operators(bundle_dir: Path, names: list[str], models: list[str]) -> None:
    """One ``required_operators.config`` for all exits (``models``, the .ort files), with each operator's types, written by
    ONNX Runtime's own tool (a reduced build reads the types with ``--enable_reduced_operator_type_support``; the
    per-exit configs ``names`` the converter wrote had none, and a hand merge of typed lines split their JSON)."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    for n in names:
        (bundle_dir / n).unlink()
    out = bundle_dir / "required_operators.config"
    create_config_from_models([bundle_dir / m for m in models], out, enable_type_reduction=True)
    lines = [ln for ln in out.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]  # its comment
    out.write_text("# ONNX Runtime's required operators, with their types, for all exits of this bundle (reduced builds)\n"  # named
                   + "".join(ln + "\n" for ln in lines), encoding="utf-8")  # the build folder's temporary paths: dropped
