"""Which bundle kind runs fastest on this machine, and a build's default precision: asked by the
build (no --backend) and by the runtime's default bundle, so it stays off the export stack."""

from __future__ import annotations

import torch

from . import openvino, trt


def default_backend(precision: str | None = None) -> str:
    """The bundle kind that runs fastest on this machine (measured: benchmarks/RESULTS.md): TensorRT on
    an NVIDIA GPU with TensorRT installed, OpenVINO on a CPU with OpenVINO installed, else ONNX Runtime.
    Given a precision, the fastest that builds it: OpenVINO has no fp16 graphs (its CPU runs bf16),
    so an fp16 build on a CPU is an ONNX Runtime bundle."""
    if torch.cuda.is_available():
        return "trt" if trt.version("tensorrt") or trt.version(trt.RTX) else "ort"
    if openvino.available() and (precision is None or precision == "best" or precision in openvino.PRECISIONS):
        return "openvino"
    return "ort"


def default_precision(backend: str) -> str:
    """A build's precision when none is given: bf16 for OpenVINO (its CPU winner), fp16 otherwise."""
    return "bf16" if backend == "openvino" else "fp16"
