"""TensorRT engines (TensorRT 10 and 11), imported lazily.

Networks are strongly typed (required in 11, where the flag is accepted and ignored;
opt-in on 10): precision comes from the ONNX graph (FP16 casts, INT8 Q/DQ), never from
builder flags. No TensorRT object is created without a CUDA GPU: a runtime created
without one crashes on deserialisation (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BackendUnavailable, BundleError, ConfigError
from ..fileio import atomic_path

TensorRTUnavailable = BackendUnavailable


def import_tensorrt():
    try:
        import tensorrt as trt  # optional and heavy: only where engines are built or run
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed: on an NVIDIA GPU machine run "
                                  "`pip install 'migm[trt]'`; elsewhere build with --backend ort") from None
    return trt


def gpu_arch() -> str:
    """Compute capability of the current CUDA device, e.g. 'sm_90'; raises when there is no GPU."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is available: TensorRT engines need one (build with --backend ort)")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


@dataclass
class BuildOptions:
    # input name -> (min, opt, max) shapes
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    opt_level: int = 3  # builder optimization level 0..5
    workspace_gb: float = 4.0
    hardware_compat: str | None = None  # e.g. "ampere_plus": engines that run on any Ampere+ GPU
    timing_cache: Path | None = None  # read before and written after the build


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts: BuildOptions) -> dict:
    """Parse ONNX, build a serialized engine, write it atomically; returns what was built with."""
    trt = import_tensorrt()
    arch = gpu_arch()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    config.builder_optimization_level = opts.opt_level
    if opts.hardware_compat:
        level = getattr(trt.HardwareCompatibilityLevel, opts.hardware_compat.upper(), None)
        if level is None:
            raise ConfigError(f"unknown hardware compatibility level {opts.hardware_compat!r}")
        config.hardware_compatibility_level = level
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if opts.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, mid, hi) in opts.profiles.items():
            profile.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT failed to build an engine from {onnx_path}")
    with atomic_path(Path(engine_path)) as tmp:
        tmp.write_bytes(bytes(serialized))
    if opts.timing_cache:
        with atomic_path(opts.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "gpu_arch": arch, "opt_level": opts.opt_level,
            "hardware_compat": opts.hardware_compat}


def check_engine_compatible(entry: dict, path: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, with a message saying which."""
    trt = import_tensorrt()
    built = entry.get("tensorrt")
    if built and built.split(".")[:2] != trt.__version__.split(".")[:2]:
        raise BundleError(f"{path} was built with TensorRT {built}; this machine has {trt.__version__}: "
                           "rebuild the bundle here")
    arch = gpu_arch()
    if entry.get("gpu_arch") and entry["gpu_arch"] != arch and not entry.get("hardware_compat"):
        raise BundleError(f"{path} was built for a {entry['gpu_arch']} GPU; this one is {arch}: "
                          "rebuild the bundle here")


def load_engine(path: str | Path, entry: dict):
    """Deserialize an engine after the version/GPU checks (only ever with a GPU present)."""
    check_engine_compatible(entry, path)
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise BundleError(f"{path} is not a valid TensorRT engine (corrupt or truncated)")
    return engine


def version() -> str | None:
    """The installed TensorRT's version, or None."""
    try:
        import tensorrt as trt  # optional: only its version is read here
    except ImportError:
        return None
    return trt.__version__


def usable() -> bool:
    """TensorRT importable and a CUDA GPU present (never touch TensorRT without one)."""
    return torch.cuda.is_available() and version() is not None
