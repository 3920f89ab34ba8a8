"""Which bundle kind runs fastest on this machine, and a build's default precision: asked by the
build (no --backend) and by the runtime's default bundle, so it stays off the export stack."""

from __future__ import annotations

import torch

from . import openvino, trt


def default_backend() -> str:
    """The bundle kind that runs fastest on this machine (measured: benchmarks/RESULTS.md): TensorRT on
    an NVIDIA GPU with TensorRT installed, OpenVINO on a CPU with OpenVINO installed, else ONNX Runtime."""
    if torch.cuda.is_available():
        return "trt" if trt.version("tensorrt") or trt.version(trt.RTX) else "ort"
    return "openvino" if openvino.available() else "ort"


def default_precision(backend: str) -> str:
    """A build's precision when none is given: bf16 for OpenVINO (its CPU winner), fp16 otherwise."""
    return "bf16" if backend == "openvino" else "fp16"
