"""TensorRT engines in two flavours, built through Polygraphy's loaders; TensorRT is imported lazily.

    tensorrt       NVIDIA TensorRT 10/11 (`migm[trt]`): its builder times kernels on the GPU it
                   runs on, so building needs that GPU, and the engine runs on GPUs of the same
                   compute capability (any Ampere-or-later one with --hardware-compat ampere_plus).
    tensorrt-rtx   TensorRT for RTX (`migm[trt-rtx]`): builds without a GPU ("CPU-only AOT") for a
                   list of compute capabilities; the kernels are compiled on the GPU at the first
                   run (JIT). Engines of one release do not load in another.

`auto` takes `tensorrt` where it is installed and a GPU is present, else `tensorrt-rtx`.
Networks are strongly typed (opt-in on TensorRT 10, always on in 11 and for RTX): precision
comes from the ONNX graph (FP16 casts, INT8 Q/DQ), never from builder flags. After parsing,
the network's inputs and outputs are checked against the manifest's, before anything is built.

Polygraphy binds its TensorRT loaders to one module per process (`polygraphy.config.
USE_TENSORRT_RTX`, read when `polygraphy.backend.trt` is first imported): one process builds
with one flavour. Without a GPU no engine is ever deserialized (TensorRT for RTX returns None,
TensorRT 10 crashed: docs/design.md); the header-only validity check is as far as it goes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import BackendUnavailable, BundleError, ConfigError
from ..fileio import atomic_path
from .manifest import TensorSpec, TrtInfo

log = logging.getLogger(__name__)

TensorRTUnavailable = BackendUnavailable

FLAVOURS = ("tensorrt", "tensorrt-rtx")
RTX = "tensorrt-rtx"
LABELS = {"tensorrt": "TensorRT", RTX: "TensorRT for RTX"}
EXTRAS = {"tensorrt": "trt", RTX: "trt-rtx"}
# Turing (7.5) is left out of the default targets: TensorRT for RTX cannot compile FP32 GEMMs for it
NO_DEFAULT_TARGET = ("7.5",)


def import_flavour(flavour: str):
    """The flavour's Python module, or BackendUnavailable saying how to install it."""
    try:
        if flavour == RTX:
            import tensorrt_rtx as trt  # optional and heavy: only where engines are built or run
        else:
            import tensorrt as trt  # optional and heavy: only where engines are built or run
    except ImportError:
        raise TensorRTUnavailable(f"{LABELS[flavour]} is not installed: pip install 'migm[{EXTRAS[flavour]}]'"
                                  + ("" if flavour == RTX else " (on an NVIDIA GPU machine)")) from None
    return trt


def version(flavour: str = "tensorrt") -> str | None:
    """The installed version of a flavour, or None."""
    try:
        return import_flavour(flavour).__version__
    except BackendUnavailable:
        return None


def choose_flavour(requested: str = "auto") -> str:
    """`requested`, checked to be installed; `auto`: TensorRT with a GPU, else TensorRT for RTX."""
    if requested not in ("auto", *FLAVOURS):
        raise ConfigError(f"unknown TensorRT flavour {requested!r}; choose from auto, {', '.join(FLAVOURS)}")
    if requested != "auto":
        import_flavour(requested)
        if requested == "tensorrt" and not torch.cuda.is_available():
            raise TensorRTUnavailable("TensorRT builds engines on the GPU they are for, and there is no CUDA GPU "
                                      "here: build with --trt-flavour tensorrt-rtx (no GPU needed) or on the GPU "
                                      "machine")
        return requested
    if torch.cuda.is_available() and version("tensorrt"):
        return "tensorrt"
    if version(RTX):
        return RTX
    raise TensorRTUnavailable("no TensorRT is installed: pip install 'migm[trt-rtx]' (TensorRT for RTX: builds "
                              "anywhere, engines run on RTX and Ampere-or-later GPUs), or 'migm[trt]' on an NVIDIA "
                              "GPU machine; or build with --backend ort")


def gpu_capability(index: int = 0) -> str:
    """Compute capability of a CUDA device, e.g. '9.0'; raises when there is no GPU."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is available: TensorRT engines run on one (use --backend ort or "
                                  "torch)")
    major, minor = torch.cuda.get_device_capability(index)
    return f"{major}.{minor}"


def rtx_capabilities(trt) -> list[str]:
    """The compute capabilities TensorRT for RTX can target, from its `ComputeCapability` enum
    (SM86 -> '8.6', SM120 -> '12.0')."""
    names = [n for n in trt.ComputeCapability.__members__ if re.fullmatch(r"SM\d{2,3}", n)]
    return sorted((f"{n[2:-1]}.{n[-1]}" for n in names), key=lambda c: tuple(map(int, c.split("."))))


@dataclass
class BuildOptions:
    flavour: str  # tensorrt | tensorrt-rtx (choose_flavour)
    # input name -> (min, opt, max) shapes
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    opt_level: int = 3  # builder optimization level 0..5
    workspace_gb: float | None = None  # the builder's scratch memory limit; None: TensorRT's default
    compute_capabilities: tuple[str, ...] = ()  # tensorrt-rtx targets, e.g. ("8.6", "8.9"); () = all but Turing
    hardware_compat: str | None = None  # tensorrt: e.g. "ampere_plus" (engines for any Ampere+ GPU)
    timing_cache: Path | None = None  # tensorrt: read before and written after the build


def targets(opts: BuildOptions) -> list[str]:
    """The compute capabilities the engines will be built for (checked against what the flavour can do)."""
    if opts.flavour != RTX:
        if opts.compute_capabilities:
            raise ConfigError("TensorRT builds for the GPU it runs on: --compute-capability is for "
                              "--trt-flavour tensorrt-rtx (use --hardware-compat ampere_plus for portable engines)")
        trt = import_flavour(opts.flavour)
        if opts.hardware_compat and not hasattr(trt.HardwareCompatibilityLevel, opts.hardware_compat.upper()):
            raise ConfigError(f"unknown hardware compatibility level {opts.hardware_compat!r}; TensorRT "
                              f"{trt.__version__} has {', '.join(trt.HardwareCompatibilityLevel.__members__).lower()}")
        return [gpu_capability()]
    if opts.hardware_compat or opts.timing_cache:
        raise ConfigError("TensorRT for RTX takes neither --hardware-compat nor --timing-cache (it compiles kernels "
                          "on the GPU at the first run): give --compute-capability instead")
    trt = import_flavour(RTX)
    known = rtx_capabilities(trt)
    wanted = list(opts.compute_capabilities) or [c for c in known if c not in NO_DEFAULT_TARGET]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ConfigError(f"TensorRT for RTX {trt.__version__} cannot target compute capability "
                          f"{', '.join(unknown)}; it targets {', '.join(known)}")
    return wanted


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts: BuildOptions, *, component: str,
                 precision: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 progress: Callable[[str], None] | None = None) -> dict:
    """Parse the ONNX graph (Polygraphy's NetworkFromOnnxPath), check its inputs and outputs against
    `inputs`/`outputs` (the manifest's), build (CreateConfig[RTX] + EngineBytesFromNetwork) and write
    the engine atomically. Returns what it was built with. A failure raises BundleError naming the
    component, the precision and (for a parse failure) the node; nothing is written then.
    `progress` hears TensorRT's build phases ("Building engine 2/5") where the module has a
    progress monitor; TensorRT's own log goes to this module's logger at DEBUG (--verbose)."""
    trt = import_flavour(opts.flavour)
    loaders, create_config = _polygraphy(opts.flavour)
    from polygraphy.exception import PolygraphyException  # heavy-ish, build side only: the runtime never needs it
    cc = targets(opts)
    label, what = f"{LABELS[opts.flavour]} {trt.__version__}", f"the {component} graph ({precision})"
    start = time.perf_counter()
    buf = io.StringIO()
    with _logged(buf), _quiet(buf):  # the log is logged once stdout and stderr are back
        try:
            builder, network, parser = loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
        except PolygraphyException:
            raise BundleError(f"{label} could not parse {what}: {_parse_error(trt, onnx_path)}") from None
        check_network(trt, network, inputs, outputs, f"{component} ({precision})")
        profile = loaders.Profile()
        for name, (lo, mid, hi) in opts.profiles.items():
            profile.add(name, min=lo, opt=mid, max=hi)
        common = dict(profiles=[profile], builder_optimization_level=opts.opt_level)
        if progress is not None and hasattr(trt, "IProgressMonitor"):
            common["progress_monitor"] = _progress_monitor(trt, progress)
        if opts.workspace_gb is not None:
            common["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(opts.workspace_gb * (1 << 30))}
        if opts.flavour == RTX:
            make_config = create_config(compute_capabilities=[tuple(map(int, c.split("."))) for c in cc], **common)
        else:
            level = getattr(trt.HardwareCompatibilityLevel, opts.hardware_compat.upper()) if opts.hardware_compat \
                else None
            cache = opts.timing_cache if opts.timing_cache and opts.timing_cache.exists() else None
            make_config = create_config(hardware_compatibility_level=level,
                                        load_timing_cache=str(cache) if cache else None, **common)
        try:
            config = make_config(builder, network)
            data = loaders.EngineBytesFromNetwork((builder, network, parser), config=config)()
        except PolygraphyException as e:
            raise BundleError(f"{label} could not build {what}: {_build_error(buf.getvalue(), e)}") from None
    if not data or data.nbytes == 0:
        raise BundleError(f"{label} built an empty engine for {what}")
    if "MALFORMED_ENGINE" in engine_validity(opts.flavour, bytes(data))[1]:
        raise BundleError(f"{label} built {what}, but its own validity check finds the engine malformed")
    with atomic_path(Path(engine_path)) as tmp:
        tmp.write_bytes(bytes(data))
    if opts.timing_cache and opts.flavour != RTX:
        with atomic_path(opts.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"seconds": round(time.perf_counter() - start, 3), "compute_capabilities": cc}


def check_network(trt, network, inputs: list[TensorSpec], outputs: list[TensorSpec], what: str) -> None:
    """The parsed network has exactly the manifest's inputs and outputs: names in order, dtypes, and
    shapes (a named, dynamic axis is -1 in TensorRT; a fixed one its size)."""
    def specs(count, get):
        out = []
        for i in range(count):
            t = get(i)
            out.append({"name": t.name, "dtype": np.dtype(trt.nptype(t.dtype)).name, "shape": list(t.shape)})
        return out

    for kind, want, got in (("inputs", inputs, specs(network.num_inputs, network.get_input)),
                            ("outputs", outputs, specs(network.num_outputs, network.get_output))):
        if [w.name for w in want] != [g["name"] for g in got]:
            raise BundleError(f"the parsed {what} network has {kind} {[g['name'] for g in got]}, the manifest "
                              f"{[w.name for w in want]}")
        for w, g in zip(want, got):
            shape = [-1 if isinstance(d, str) else d for d in w.shape]
            if w.dtype != g["dtype"] or shape != g["shape"]:
                raise BundleError(f"the parsed {what} network's {g['name']} is {g['dtype']}{g['shape']}, the "
                                  f"manifest's {w.dtype}{w.shape}")


def engine_problem(info: TrtInfo, engines: list[Path], device_index: int = 0) -> str | None:
    """Why engines built as `info` (a manifest's `trt` entry) cannot run on this machine, or None.
    With a GPU, TensorRT for RTX's own validity check has the last word."""
    flavour, built = info.flavour, info.version
    have = version(flavour)
    if have is None:
        return f"its engines were built with {LABELS[flavour]} {built}, which is not installed here"
    if flavour == RTX and have != built:
        return f"its engines were built with TensorRT for RTX {built}, and this machine has {have} (engines do " \
               "not load across its releases)"
    if flavour != RTX and have.split(".")[:2] != built.split(".")[:2]:
        return f"its engines were built with TensorRT {built}, and this machine has {have}"
    if not torch.cuda.is_available():
        return None  # nothing runs here anyway: the caller says so
    cc = gpu_capability(device_index)
    if flavour != RTX:
        if cc not in info.compute_capabilities and not info.hardware_compat:
            return f"its engines were built for a GPU of compute capability " \
                   f"{', '.join(info.compute_capabilities)}, and this one is {cc}"
        return None
    for path in engines:
        validity, diagnostics = engine_validity(flavour, Path(path).read_bytes())
        if validity == "INVALID":
            return f"TensorRT for RTX {have} finds {Path(path).name} invalid on this GPU (compute capability " \
                   f"{cc}): {', '.join(diagnostics) or 'no reason given'}"
    return None


def engine_validity(flavour: str, data: bytes) -> tuple[str, list[str]]:
    """TensorRT's header-only check of a serialized engine, where the library has one:
    (VALID | SUBOPTIMAL | INVALID, [diagnostics]); ("UNCHECKED", []) where it has none. Without
    a GPU a well-formed TensorRT for RTX engine reads INVALID with no diagnostic."""
    trt = import_flavour(flavour)
    runtime = trt.Runtime(_collecting_logger(trt))
    if not hasattr(runtime, "get_engine_validity"):
        return "UNCHECKED", []
    validity, diag = runtime.get_engine_validity(data)
    names = [n for n, e in trt.EngineInvalidityDiagnostics.__members__.items() if int(diag) & int(e)]
    return validity.name, names


def load_engine(path: str | Path, flavour: str):
    """Deserialize an engine (only ever with a GPU present; `engine_problem` first)."""
    trt = import_flavour(flavour)
    gpu_capability()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise BundleError(f"{path} is not a valid {LABELS[flavour]} engine here (corrupt, truncated, or for "
                          "another GPU): rebuild it with `migm-export rebuild`")
    return engine


# ---- Polygraphy and TensorRT plumbing ----

def _polygraphy(flavour: str):
    """Polygraphy's TensorRT loaders bound to the flavour's module (the first import decides), and
    the flavour's config loader (CreateConfigRTX takes the compute capabilities)."""
    want = flavour == RTX
    from polygraphy import config as polygraphy_config  # build side only, like the loaders below

    if "polygraphy.backend.trt" in sys.modules and bool(polygraphy_config.USE_TENSORRT_RTX) != want:
        other = LABELS[RTX if polygraphy_config.USE_TENSORRT_RTX else "tensorrt"]
        raise TensorRTUnavailable(f"this process already builds with {other} (Polygraphy binds one TensorRT "
                                  f"module per process): build the {LABELS[flavour]} engines in a new process")
    polygraphy_config.USE_TENSORRT_RTX = want
    import polygraphy.backend.trt as loaders  # binds to tensorrt or tensorrt_rtx now, by USE_TENSORRT_RTX

    if not want:
        return loaders, loaders.CreateConfig
    import polygraphy.backend.tensorrt_rtx as rtx  # TensorRT for RTX's config loader (compute capabilities)

    return loaders, rtx.CreateConfigRTX


@contextlib.contextmanager
def _quiet(buf: io.StringIO):
    """Polygraphy's and TensorRT's log during a build, kept (errors only; everything from INFO up
    when this module logs DEBUG) instead of printed; the DeprecationWarning of TensorRT for RTX's
    no-op timing cache (Polygraphy always makes one) dropped."""
    from polygraphy.logger import G_LOGGER  # build side only: _quiet wraps Polygraphy's loaders

    level = G_LOGGER.INFO if log.isEnabledFor(logging.DEBUG) else G_LOGGER.ERROR
    with G_LOGGER.verbosity(level), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield buf


@contextlib.contextmanager
def _logged(buf: io.StringIO):
    """TensorRT's build log, kept by `_quiet`, to this module's logger at DEBUG once the build ends
    (or fails): Polygraphy prints it, so it cannot go to the log line by line."""
    try:
        yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                log.debug("%s", line)


def _progress_monitor(trt, progress: Callable[[str], None]):
    """A TensorRT IProgressMonitor that reports the innermost phase with a step count."""
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases = {}  # name -> steps, in start order

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.phases[phase_name] = num_steps

        def step_complete(self, phase_name, step):
            progress(f"{phase_name} {step + 1}/{self.phases.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.phases.pop(phase_name, None)

    return Monitor()


def _one_line(text: str) -> str:
    text = re.sub(r"\s+In \w+ at /\S+", "", text)  # TensorRT's source locations
    return " ".join(text.split())


def _parse_error(trt, path) -> str:
    """The first ONNX parser error, as 'node NAME (OP): what' (a second, plain parse: Polygraphy
    keeps only its log)."""
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(path)) or parser.num_errors == 0:
        return "; ".join(logger.errors) or "no reason given"
    e = parser.get_error(0)
    node, desc = e.node_name() or "?", _one_line(e.desc())
    # "Invalid Node - N ... Error Code 4: API Usage Error (N: what. [more errors ...]": keep "what"
    m = re.search(r"Error \((.*?)(?:\.? \[|\)?$)", desc)
    detail = (m.group(1) if m else desc.split(" [")[0]).removeprefix(f"{node}: ").rstrip(".)")
    return f"node {node} ({e.node_operator() or '?'}): {detail}"


def _build_error(log: str, exc: Exception) -> str:
    errors = [line for line in log.splitlines() if line.startswith("[E]")]
    msg = _one_line(errors[0][3:]) if errors else _one_line(str(exc))
    if "OutOfMemory" in msg:  # activations at the profile's largest shapes
        msg += " (the optimization profile's largest batch needs that much: lower --max-batch)"
    return msg


def _collecting_logger(trt):
    """A TensorRT logger that keeps errors (`.errors`) and prints nothing (a CPU-only machine's
    'no CUDA driver' messages would otherwise reach the terminal)."""
    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in (trt.Logger.ERROR, trt.Logger.INTERNAL_ERROR):
                self.errors.append(msg)

    return Collect()

