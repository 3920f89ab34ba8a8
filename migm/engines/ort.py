"""The one place ONNX Runtime sessions are made (build-time checks and the ort backend alike)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailable, BundleError, first_line


def ort_session(path: str | Path, device: str = "cpu", device_index: int = 0, threads: int = 0):
    """An InferenceSession for `path` on the CPU, or on a CUDA GPU with onnxruntime-gpu (its
    TensorRT provider first where it is built in)."""
    import onnxruntime as ort  # only where a session is made: the torch backend never loads it

    providers: list = ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable("the ort backend on a GPU needs onnxruntime-gpu: pip uninstall -y onnxruntime "
                                     "&& pip install 'migm[gpu]'")
        providers = [("CUDAExecutionProvider", {"device_id": device_index})] + providers
        if "TensorrtExecutionProvider" in available:
            providers.insert(0, ("TensorrtExecutionProvider", {"device_id": device_index}))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # ORT's pool spins after each run by default, starving the torch ops (sampling kernel, head)
    # that run between calls on the same cores: 50x slower kernels were seen on 2 cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...) for bad graphs
        raise BundleError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from None
