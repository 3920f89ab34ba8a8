"""OpenVINO for CPUs: IR from the bundle's ONNX graphs, NNCF INT8, and compiling for this CPU.

    build:  fp32 ONNX  ->  ov.convert_model  ->  (int8: nncf.quantize on the OpenVINO model, with
            calibration inputs drawn from the sampler's own trajectories)  ->  NAME.xml + NAME.bin
            (engines/openvino_build.py)
    load:   ov.Core().compile_model(NAME.xml, "CPU", hints) once per component

Precisions of a component: fp32 (compiled with the f32 inference-precision hint: exact fp32),
bf16 (the same fp32 IR compiled with the bf16 hint where the CPU has AMX/AVX512-BF16, i.e. its
OPTIMIZATION_CAPABILITIES include "BF16"; f32 elsewhere), int8 (NNCF's quantized IR; what it
leaves unquantized runs at the bf16 hint where the CPU has it).

`openvino` and `nncf` are optional (`pip install "migm[openvino]"`): every import of them is
inside the function that needs it, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..choices import OPENVINO_PRECISIONS
from ..errors import BackendUnavailable, BundleError, ConfigError, first_line
from .manifest import Artifact, OpenVinoInfo

PRECISIONS = OPENVINO_PRECISIONS  # what one component of an openvino bundle may be (migm/choices.py)
INSTALL = 'pip install "migm[openvino]"'


def available() -> bool:
    """Whether OpenVINO can be imported here."""
    try:
        import_openvino()
    except BackendUnavailable:
        return False
    return True


def import_openvino():
    """The openvino module, or BackendUnavailable saying how to get it."""
    try:
        import openvino  # optional: the openvino extra
    except ImportError as e:
        raise BackendUnavailable(f"OpenVINO is not installed here ({first_line(e)}): {INSTALL}") from None
    return openvino


def import_nncf():
    """The nncf module (INT8 builds), or BackendUnavailable saying how to get it."""
    try:
        import nncf  # optional: the openvino extra
    except ImportError as e:
        raise BackendUnavailable(f"NNCF (OpenVINO's INT8 quantizer) is not installed here ({first_line(e)}): "
                                 f"{INSTALL}") from None
    return nncf


_CORE = None


def core():
    """One OpenVINO Core per process (it holds the plugins and their thread pools)."""
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX512-BF16): OpenVINO then lists "BF16"."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def inference_precision() -> str:
    """The hint bf16 and int8 components are compiled with here: "bf16" where the CPU has it, else "f32"."""
    return "bf16" if cpu_has_bf16() else "f32"


def cpu_name() -> str:
    return str(core().get_property("CPU", "FULL_DEVICE_NAME"))[:200]


def info() -> OpenVinoInfo:
    """The manifest's `openvino` entry: the version, the hint chosen on this machine, its CPU."""
    return OpenVinoInfo(version=import_openvino().__version__.split("-")[0],
                        inference_precision=inference_precision(), cpu=cpu_name())


def threads_here() -> int:
    """The cores this process may use (a container or taskset may give fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compile_config(precision: str, threads: int = 0) -> dict:
    """Compile settings for a component: the precision hint, one stream, latency (the loop runs one
    request at a time, and the sampling kernel runs in torch between calls on the same cores)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"the openvino backend runs {', '.join(PRECISIONS)} components, not {precision!r}")
    hint = "f32" if precision == "fp32" else inference_precision()
    return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads or threads_here())}


def compile_ir(xml: str | Path, precision: str, threads: int = 0):
    """The compiled model of one IR file; BundleError naming the file where OpenVINO cannot read it."""
    ov_core = core()
    config = compile_config(precision, threads)
    try:
        model = ov_core.read_model(str(xml))
        return ov_core.compile_model(model, "CPU", config)
    except RuntimeError as e:  # OpenVINO raises RuntimeError subclasses for unreadable IR
        raise BundleError(f"OpenVINO cannot load {xml}: {first_line(e)} (corrupt or from another OpenVINO: "
                          "rebuild the bundle with `migm-export build --backend openvino`)") from None


def check_io(compiled, entry: Artifact, xml: Path) -> None:
    """The compiled model takes and gives the tensors the manifest names, in its order."""
    want_in = [t.name for t in entry.inputs]
    want_out = [t.name for t in entry.outputs]
    got_in = [p.get_any_name() for p in compiled.inputs]
    got_out = [p.get_any_name() for p in compiled.outputs]
    if got_in != want_in or got_out != want_out:
        raise BundleError(f"{xml} takes {got_in} -> {got_out}, the manifest says {want_in} -> {want_out} "
                          "(a file from another build; rebuild the bundle with `migm-export build --backend openvino`)")


def run_ir(compiled, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of one synchronous call (build-time checks; the runtime binds its own buffers)."""
    res = compiled(feeds)
    return [res[o] for o in compiled.outputs]


def versions() -> dict:
    """Tool versions for the manifest's `tools`."""
    out = {"openvino": import_openvino().__version__.split("-")[0]}
    try:
        out["nncf"] = import_nncf().__version__
    except BackendUnavailable:  # only INT8 builds need it
        pass
    return out


def component_precisions(precision: str, supported: tuple[str, ...]) -> dict[str, str]:
    """What each component of an openvino bundle is built in. int8: the base and the shortcut through
    NNCF, the decoder bf16 (no calibration data for it); best: measured per component at the build."""
    allowed = PRECISIONS + ("best",)  # a build also takes best (each component its fastest)
    if precision not in allowed:
        raise ConfigError(f"an openvino bundle is {', '.join(allowed)}, not {precision!r} (OpenVINO's half precision "
                          "on a CPU is bf16: --precision bf16)")
    if precision not in supported:
        raise ConfigError(f"precision {precision} is not available for this model family; "
                          f"choose from {', '.join(p for p in supported if p in allowed)}")
    if precision == "int8":
        return {"base": "int8", "shortcut": "int8", "decoder": "bf16"}
    return {"base": precision, "shortcut": precision, "decoder": "bf16" if precision == "best" else precision}
