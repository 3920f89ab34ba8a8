"""INT8 for the shortcut: explicit Q/DQ nodes from calibration, MatMul/Gemm only, symmetric.

Quantizing every op type of a small transformer gave a relative error of 0.56; MatMul/Gemm
only gave 0.046 with top-1 agreement 1.000 (docs/design.md). Symmetric scales (zero point 0)
because TensorRT accepts only those. Biases stay FP32 (`QuantizeBias: False`): ONNX Runtime's
default quantizes a Gemm's bias to INT32 behind a DequantizeLinear, and TensorRT's ONNX parser
rejects every Q/DQ on a type other than INT8/UINT8/INT4/FP8/FP4 ("input has type Int32"), so
such a graph builds on no TensorRT at all. `check_qdq` holds every graph to that rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from ..errors import BundleError, DataError
from ..fileio import atomic_path
from .calibration import SHORTCUT_INPUTS, shortcut_feeds

# the quantized types TensorRT's ONNX parser takes on either side of a Q/DQ pair (its error names them)
TRT_QDQ_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.FLOAT8E4M3FN,
                 TensorProto.FLOAT4E2M1}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def head_matmuls(model, output: str = "logits") -> list[str]:
    """Names of the MatMul nodes on the path back from `output` (the folded-in base head):
    left in FP32, because its logits pick the tokens and INT8 there flips the argmax."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names, frontier = [], [output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            names.append(node.name)
            continue  # stop at the head's matmul: its input is the next features
        frontier.extend(node.input)
    return names


def quantize_int8(src: str | Path, dst: str | Path, calibration: dict[str, np.ndarray],
                  per_channel: bool = True) -> Path:
    """The shortcut graph at `src` with INT8 Q/DQ on its MatMul/Gemm weights and inputs, calibrated on
    `calibration` (a shortcut that reads the condition gets each record's condition too)."""
    model = onnx.load(str(src), load_external_data=False)
    extra = [i.name for i in model.graph.input if i.name not in SHORTCUT_INPUTS]
    if len(extra) > 1:
        raise DataError(f"{src} has inputs {extra} besides the shortcut's: not a shortcut graph")
    condition = extra[0] if extra else None
    if condition and "cond" not in calibration:
        raise DataError(f"this shortcut reads the {condition!r} input, and the calibration data holds no "
                        "conditions (made by an older migm): sample it again with `migm-export calibrate`")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(shortcut_feeds(calibration, condition))

        def get_next(self):
            return next(self.feeds, None)

    dst = Path(dst)
    with atomic_path(dst) as tmp:
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=head_matmuls(model),
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        check_qdq(onnx.load(str(tmp)))
    return dst


def check_qdq(model) -> int:
    """Every QuantizeLinear/DequantizeLinear is one TensorRT's ONNX parser takes: its quantized side
    (the DQ input, the Q output = the zero point's type) of a type in TRT_QDQ_TYPES, zero points 0.
    Returns how many Q/DQ nodes there are; raises BundleError naming the first one that is not."""
    inits = {i.name: i for i in model.graph.initializer}
    quantized = {}  # tensor name -> element type, for the quantized tensors
    nodes = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    for n in nodes:
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        if zp is not None and numpy_helper.to_array(zp).astype(np.float64).any():
            raise BundleError(f"INT8 graph: {n.op_type} node {n.name} has a non-zero zero point; TensorRT "
                              "takes only symmetric quantization")
        if n.op_type == "QuantizeLinear":
            quantized[n.output[0]] = zp.data_type if zp is not None else TensorProto.UINT8  # the ONNX default
    for n in nodes:
        src = n.input[0]
        kind = inits[src].data_type if src in inits else quantized.get(src)
        if n.op_type == "QuantizeLinear":
            kind = quantized[n.output[0]]
        if kind not in TRT_QDQ_TYPES:
            name = TensorProto.DataType.Name(kind) if kind is not None else "an unknown type"
            raise BundleError(f"INT8 graph: {n.op_type} node {n.name} quantizes to {name}, which TensorRT's "
                              "ONNX parser rejects (it takes INT8, UINT8, INT4, FP8 and FP4 only)")
    return len(nodes)
