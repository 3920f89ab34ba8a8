"""OpenVINO for CPUs: IR from the bundle's ONNX graphs, NNCF INT8, and compiling for this CPU.

    build:  fp32 ONNX  ->  ov.convert_model  ->  (int8: nncf.quantize on the OpenVINO model, with
            calibration inputs drawn from the sampler's own trajectories)  ->  NAME.xml + NAME.bin
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
import statistics
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import BackendUnavailable, BundleError, ConfigError, first_line

PRECISIONS = ("fp32", "bf16", "int8")  # what one component of an openvino bundle may be
INSTALL = 'pip install "migm[openvino]"'


def available() -> bool:
    """Whether OpenVINO can be imported here."""
    try:
        import openvino  # noqa: F401  (optional: the openvino extra)
    except ImportError:
        return False
    return True


def import_openvino():
    """The openvino module, or BackendUnavailable saying how to get it."""
    try:
        import openvino  # optional: the openvino extra
    except ImportError as e:
        raise BackendUnavailable(f"OpenVINO is not installed here ({first_line(e)}): {INSTALL}") from None
    return openvino


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


def info() -> dict:
    """The manifest's `openvino` entry: the version, the hint chosen on this machine, its CPU."""
    return {"version": import_openvino().__version__.split("-")[0], "inference_precision": inference_precision(),
            "cpu": cpu_name()}


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


def check_io(compiled, entry: dict, xml: Path) -> None:
    """The compiled model takes and gives the tensors the manifest names, in its order."""
    want_in = [t["name"] for t in entry["inputs"]]
    want_out = [t["name"] for t in entry["outputs"]]
    got_in = [p.get_any_name() for p in compiled.inputs]
    got_out = [p.get_any_name() for p in compiled.outputs]
    if got_in != want_in or got_out != want_out:
        raise BundleError(f"{xml} takes {got_in} -> {got_out}, the manifest says {want_in} -> {want_out} "
                          "(a file from another build; rebuild the bundle with `migm-export build --backend openvino`)")


# ---- build ----

def convert(onnx_path: Path):
    """The OpenVINO model of an ONNX graph (weights kept fp32: the precision is chosen at compile time)."""
    ov = import_openvino()
    return ov.convert_model(str(onnx_path))


def save_ir(model, xml: Path) -> Path:
    """NAME.xml + NAME.bin, fp32 weights (no fp16 compression: bf16/f32 is decided at load)."""
    ov = import_openvino()
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def head_nodes(model, output: str = "logits") -> list[str]:
    """Names of the MatMul nodes on the path back from `output` (the base head): left unquantized,
    because its logits pick the tokens and INT8 there flips the argmax (as for the ORT INT8 shortcut)."""
    port = next((o for o in model.outputs if output in o.get_names()), None)
    if port is None:
        return []
    names, frontier, seen = [], [port.get_node()], set()
    while frontier:
        node = frontier.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if node.get_type_name() == "MatMul":
            names.append(node.get_friendly_name())
            continue  # stop at the head's matmul: its input is the features
        if node.get_type_name() in ("Parameter", "Constant"):
            continue
        frontier.extend(v.get_node() for v in node.input_values())
    return names


def quantize(model, feeds: list[dict[str, np.ndarray]]):
    """NNCF post-training INT8 of an OpenVINO model on `feeds` (one dict of inputs per sample),
    the head's matmul left in float. Transformer mode: NNCF keeps its softmax/layernorm rules."""
    import nncf  # optional: the openvino extra

    if not feeds:
        raise ConfigError("INT8 quantization needs at least one calibration input")
    names = [p.get_any_name() for p in model.inputs]
    data = nncf.Dataset([{k: f[k] for k in names if k in f} for f in feeds])
    scope = nncf.IgnoredScope(names=head_nodes(model), validate=False)
    return nncf.quantize(model, data, subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         ignored_scope=scope, fast_bias_correction=True)


def run_ir(compiled, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of one synchronous call (build-time checks; the runtime binds its own buffers)."""
    res = compiled(feeds)
    return [res[o] for o in compiled.outputs]


def rel_error(compiled, inputs: dict[str, np.ndarray], reference: np.ndarray) -> float:
    """Relative L2 error of the first output against a reference (torch's, at the build)."""
    got = run_ir(compiled, inputs)[0].astype(np.float64)
    ref = reference.astype(np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def time_ms(compiled, feeds: dict[str, np.ndarray], repeats: int = 5, warmup: int = 2) -> float:
    """Median milliseconds of one call (what `--precision best` compares)."""
    req = compiled.create_infer_request()
    for _ in range(warmup):
        req.infer(feeds, share_inputs=True, share_outputs=True)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        req.infer(feeds, share_inputs=True, share_outputs=True)
        out.append(1000 * (time.perf_counter() - t))
    return statistics.median(out)


def batched(feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Example inputs repeated to `rows` rows (timing at the batch the loop runs)."""
    out = {}
    for k, v in feeds.items():
        reps = -(-rows // v.shape[0])
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:rows])
    return out


def calibration_feeds(name: str, data: dict[str, np.ndarray], inputs: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """NNCF samples for a component from calibration.npz: the base's recorded (tokens, condition)
    pairs, or the shortcut's recorded calls (export/calibration.py)."""
    from ..export.calibration import shortcut_feeds

    inputs = list(inputs)
    if name == "base":
        if "base_tokens" not in data:
            raise ConfigError("the calibration data holds no base inputs (made by an older migm): sample it again "
                              "with `migm-export calibrate`")
        return [{inputs[0]: t[None].astype(np.int64), inputs[1]: c[None].astype(np.int64)}
                for t, c in zip(data["base_tokens"], data["base_cond"])]
    if name == "shortcut":
        extra = [i for i in inputs if i not in ("features", "new_pos", "new_tok", "key_mask", "mask_ratio")]
        return list(shortcut_feeds(data, extra[0] if extra else None))
    raise ConfigError(f"no INT8 calibration for the {name} component (fp32 or bf16 only)")


def versions() -> dict:
    """Tool versions for the manifest's `tools`."""
    import nncf  # optional: the openvino extra

    return {"openvino": import_openvino().__version__.split("-")[0], "nncf": nncf.__version__}


def component_precisions(precision: str, supported: tuple[str, ...]) -> dict[str, str]:
    """What each component of an openvino bundle is built in. int8: the base and the shortcut through
    NNCF, the decoder bf16 (no calibration data for it); best: measured per component at the build."""
    allowed = ("fp32", "bf16", "int8", "best")
    if precision not in allowed:
        raise ConfigError(f"an openvino bundle is {', '.join(allowed)}, not {precision!r} (OpenVINO's half precision "
                          "on a CPU is bf16: --precision bf16)")
    if precision not in supported:
        raise ConfigError(f"precision {precision} is not available for this model family; "
                          f"choose from {', '.join(p for p in supported if p in allowed)}")
    if precision == "int8":
        return {"base": "int8", "shortcut": "int8", "decoder": "bf16"}
    return {"base": precision, "shortcut": precision, "decoder": "bf16" if precision == "best" else precision}


BEST_CANDIDATES = ("bf16", "int8")
TIMING_ROWS = (2, 64)  # batch 1 and 32 with guidance: the rows a base or shortcut call sees


def build_component(comp, onnx_path: Path, precision: str, work: Path, calibration, say=lambda msg: None):
    """The component's IR at `precision` (best: each candidate timed here, the fastest kept) under
    work/openvino/, and its manifest entry (file, data_file, precision, inputs, outputs, error vs torch;
    for best the timings). `calibration()` gives the calibration inputs (INT8 only)."""
    import torch

    from ..export.onnx import io_spec

    model = convert(onnx_path)
    inputs, outputs = io_spec(onnx_path)
    example = {k: v.numpy() for k, v in comp.inputs.items()}
    candidates = BEST_CANDIDATES if precision == "best" else (precision,)
    models, timings = {}, {}
    for cand in candidates:
        if cand == "int8":
            feeds = calibration_feeds(comp.name, calibration(), [t["name"] for t in inputs])
            say(f"int8 {comp.name} (NNCF, {len(feeds)} calibration inputs)")
            models[cand] = quantize(model, feeds)
        else:
            models[cand] = model
        if len(candidates) > 1:
            compiled = core().compile_model(models[cand], "CPU", compile_config(cand))
            timings[cand] = {str(r): round(time_ms(compiled, batched(example, r)), 4) for r in TIMING_ROWS}
            say(f"timed {comp.name} {cand}: " + ", ".join(f"{v:.2f} ms at {k} rows" for k, v in timings[cand].items()))
    # fastest over the batches: the geometric mean, so batch 1 and batch 32 weigh alike
    chosen = min(candidates, key=lambda c: float(np.prod(list(timings[c].values())))) if timings else candidates[0]
    xml = save_ir(models[chosen], work / "openvino" / f"{comp.name}.xml")
    compiled = compile_ir(xml, chosen)
    with torch.no_grad():
        ref = comp.module(*comp.inputs.values())
    ref = (ref[0] if isinstance(ref, tuple) else ref).float().numpy()
    entry = {"file": xml.name, "data_file": xml.with_suffix(".bin").name, "precision": chosen, "inputs": inputs,
             "outputs": outputs, "rel_error_vs_torch": rel_error(compiled, example, ref)}
    check_io(compiled, entry, xml)
    if timings:
        entry["measured_ms"] = timings
    return xml, entry
