"""Building OpenVINO bundle components: IR from the fp32 ONNX graphs, NNCF INT8 (base and shortcut),
and `best` measured per component on the build machine. Only builds import this module; what
the runtime needs (compiling, checks) is in engines/openvino.py.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..choices import OPENVINO_BEST
from ..errors import ConfigError
from ..export.calibration import shortcut_feeds
from ..export.onnx import io_spec
from .manifest import Artifact, TensorSpec
from .openvino import check_io, compile_config, compile_ir, core, import_nncf, import_openvino, run_ir


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
    nncf = import_nncf()
    if not feeds:
        raise ConfigError("INT8 quantization needs at least one calibration input")
    names = [p.get_any_name() for p in model.inputs]
    data = nncf.Dataset([{k: f[k] for k in names if k in f} for f in feeds])
    scope = nncf.IgnoredScope(names=head_nodes(model), validate=False)
    return nncf.quantize(model, data, subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         ignored_scope=scope, fast_bias_correction=True)


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


TIMING_ROWS = (2, 64)  # batch 1 and 32 with guidance: the rows a base or shortcut call sees


def build_component(comp, onnx_path: Path, precision: str, work: Path, calibration, say=lambda msg: None):
    """The component's IR at `precision` (best: each candidate timed here, the fastest kept) under
    work/openvino/, and its manifest entry (file, data_file, precision, inputs, outputs, error vs torch;
    for best the timings). `calibration()` gives the calibration inputs (INT8 only)."""
    model = convert(onnx_path)
    inputs, outputs = io_spec(onnx_path)
    example = {k: v.numpy() for k, v in comp.inputs.items()}
    candidates = OPENVINO_BEST if precision == "best" else (precision,)
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
    entry = Artifact(file=xml.name, data_file=xml.with_suffix(".bin").name, precision=chosen, backend="openvino",
                      inputs=[TensorSpec(**t) for t in inputs], outputs=[TensorSpec(**t) for t in outputs],
                      rel_error_vs_torch=rel_error(compiled, example, ref), measured_ms=timings or None)
    check_io(compiled, entry, xml)
    return xml, entry
