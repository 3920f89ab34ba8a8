"""Precision decided in the ONNX graph: TensorRT 11 (and TensorRT for RTX) networks are strongly
typed, so there are no builder precision flags; the graph's own types are what runs.

fp16: the graph is converted to FP16 except the ops where FP16 overflows or loses too much in
transformers (LayerNorm, Softmax, reductions, the sinusoidal embedding's Exp/Sin/Cos): FP16
overflow there is the classic TensorRT transformer bug. Inputs and outputs stay FP32, so every
precision has the same interface.
int8: explicit, symmetric Q/DQ pairs on MatMul/Gemm only (export/int8.py).
"""

from __future__ import annotations

from pathlib import Path

import onnx_graphsurgeon as gs
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..choices import BUILD_PRECISIONS
from ..errors import ConfigError
from .onnx import save_onnx

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp", "Sin",
            "Cos", "Sigmoid", "Erf"]


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Convert an FP32 ONNX graph to FP16, keeping FP32_OPS and the I/O types in FP32."""
    # from the path: the converter's shape inference then works on models over 2 GB too
    model = convert_float_to_float16(str(src), keep_io_types=True, op_block_list=FP32_OPS)
    graph = gs.import_onnx(model)  # the converter appends its Cast nodes out of order
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    return save_onnx(model, dst)  # checked with onnx.checker from the file (models over 2 GB too)


def component_precisions(precision: str, supported: tuple[str, ...] = BUILD_PRECISIONS) -> dict[str, str]:
    """What each component is built in for a bundle precision (`best` = FP16 base, INT8 shortcut)."""
    if precision not in BUILD_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(BUILD_PRECISIONS)}")
    if precision not in supported:
        raise ConfigError(f"precision {precision} is not available for this model family; "
                          f"choose from {', '.join(supported)}")
    if precision == "bf16":
        raise ConfigError("bf16 is an OpenVINO precision (an fp32 graph compiled with the bf16 hint): build with "
                          "--backend openvino, or fp16 for ONNX Runtime and TensorRT")
    if precision == "best":
        return {"base": "fp16", "shortcut": "int8", "decoder": "fp16"}
    if precision == "int8":  # only the shortcut is quantized; the base and decoder stay FP32
        return {"base": "fp32", "shortcut": "int8", "decoder": "fp32"}
    return {"base": precision, "shortcut": precision, "decoder": precision}
