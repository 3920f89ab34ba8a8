"""Build a `NAME.plan/` bundle: export, precision, (calibration), engines, manifest.

    export (FP32 ONNX, constant-folded)  ->  precision per component (fp16 graph
    conversion; INT8 Q/DQ for the shortcut from calibration)  ->  verify in ONNX
    Runtime against torch  ->  ort: the ONNX files are the artifacts; trt: one
    TensorRT engine per component  ->  bundle (written atomically)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..export.onnx import components, data_file, export_component, name_batch_axes, ort_session
from ..export.precision import component_precisions, to_fp16
from ..models.checkpoint import checkpoint_digest, load_checkpoint
from ..models.llada import LLaDA
from ..models.maskgit import MaskGIT
from ..models.shortcut import Shortcut
from ..models.vqvae import VQVAE
from .bundle import read_manifest, write_bundle

BACKENDS = ("ort", "trt")


@dataclass
class BuildSettings:
    precision: str = "fp16"
    backend: str = "ort"
    calibration: Path | None = None  # an .npz from `migm-export calibrate`; collected when missing
    calibration_size: int = 128
    max_batch: int = 64  # TensorRT profile: batch 1..max_batch (CFG doubles the batch)
    opt_batch: int = 16
    opt_level: int = 3
    hardware_compat: str | None = None
    timing_cache: Path | None = None
    extra: dict = field(default_factory=dict)


def fold_constants(path: Path) -> None:
    """Polygraphy's constant folding (what `polygraphy surgeon sanitize --fold-constants` does)."""
    import onnx
    from polygraphy.backend.onnx import fold_constants as fold

    if data_file(path) is not None:
        return  # weights held as external data (> 2 GB): loading them all to fold is not worth it
    model = fold(onnx.load(str(path)), error_ok=True)
    name_batch_axes(model)  # folding re-infers shapes and may rename the batch axis again
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _name_batch_axes_file(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # saved back beside its data: references hold
    if name_batch_axes(model):
        onnx.save(model, str(path))


def io_spec(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph: name, element type, shape (symbolic axes by name)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": [d.dim_param or d.dim_value for d in t.shape.dim]})
        return out

    return spec(graph.input), spec(graph.output)


def _max_rel_error(comp, path: Path) -> float:
    """ORT vs torch on the component's example inputs (relative L2 of the first output)."""
    session = ort_session(path)
    got = session.run(None, {k: v.numpy() for k, v in comp.inputs.items()})[0]
    with torch.no_grad():
        ref = comp.module(*comp.inputs.values())
    ref = (ref[0] if isinstance(ref, tuple) else ref).float().numpy()
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def build_bundle(out: str | Path, s: BuildSettings, base_path, vq_path, shortcut_path=None,
                 trajectories=None, progress: Callable[[str], None] | None = None) -> Path:
    """Build the bundle for the given checkpoints (the shortcut is optional)."""
    from ..calibration.int8 import quantize_int8

    say = progress or (lambda msg: None)
    if s.backend not in BACKENDS:
        raise ValueError(f"unknown backend {s.backend!r}; choose from {', '.join(BACKENDS)}")
    precisions = component_precisions(s.precision)
    if s.backend == "trt":  # fail before any work when TensorRT or the GPU is missing
        from .trt import gpu_arch, import_tensorrt

        import_tensorrt()
        gpu_arch()
    base, vq = load_checkpoint(base_path), load_checkpoint(vq_path)
    if not isinstance(base, (MaskGIT, LLaDA)) or not isinstance(vq, VQVAE):
        raise ValueError("expected a maskgit or llada base checkpoint and a vqvae checkpoint")
    family = "llada" if isinstance(base, LLaDA) else "maskgit"
    if family == "llada" and "int8" in precisions.values():
        raise ValueError("INT8 calibration is written for the maskgit family only; build llada bundles as fp32 or fp16")
    shortcut = None
    if shortcut_path is not None:
        from ..runtime.pipeline import load_shortcut

        shortcut = load_shortcut(shortcut_path, base_path)
    elif precisions["shortcut"] == "int8":
        raise ValueError(f"precision {s.precision} quantizes the shortcut, but no shortcut checkpoint was given")
    digests = {"base": checkpoint_digest(base_path), "vq": checkpoint_digest(vq_path)}
    if shortcut_path is not None:
        digests["shortcut"] = checkpoint_digest(shortcut_path)

    with tempfile.TemporaryDirectory(prefix="migm-build-") as work:
        work = Path(work)
        files, entries = {}, {}
        for comp in components(base, vq.decoder, shortcut):
            prec = precisions[comp.name]
            say(f"export {comp.name}")
            # one directory per stage, every file under its bundle name (external data is
            # referenced by file name, NAME.onnx.data, so it must never be renamed)
            fp32 = export_component(comp, work / "fp32" / f"{comp.name}.onnx")
            fold_constants(fp32)
            final = fp32
            if prec == "fp16":
                say(f"fp16 {comp.name}")
                final = to_fp16(fp32, work / "fp16" / f"{comp.name}.onnx")
            elif prec == "int8":
                calib = _calibration(s, out, digests, trajectories, base, say, work)
                say(f"int8 {comp.name} ({len(calib['counts'])} calibration inputs)")
                final = quantize_int8(fp32, work / "int8" / f"{comp.name}.onnx", calib)
                files["calibration.npz"] = work / "calibration.npz"
            _name_batch_axes_file(final)  # precision passes re-infer shapes and may rename the batch axis
            err = _max_rel_error(comp, final)
            inputs, outputs = io_spec(final)
            entry = {"precision": prec, "backend": s.backend, "inputs": inputs, "outputs": outputs,
                     "rel_error_vs_torch": err}
            if s.backend == "trt":
                from .trt import BuildOptions, build_engine

                say(f"engine {comp.name}")
                engine = work / f"{comp.name}.engine"
                profiles = _profiles(comp, s)
                entry.update(build_engine(final, engine, BuildOptions(
                    profiles=profiles, opt_level=s.opt_level, hardware_compat=s.hardware_compat,
                    timing_cache=s.timing_cache)))
                entry["profile"] = {k: [list(x) for x in v] for k, v in profiles.items()}
                files[f"{comp.name}.engine"], entry["file"] = engine, f"{comp.name}.engine"
            else:
                files[f"{comp.name}.onnx"], entry["file"] = final, f"{comp.name}.onnx"
                if data_file(final) is not None:
                    files[data_file(final).name] = data_file(final)
                    entry["data_file"] = data_file(final).name
            entries[comp.name] = entry
        # the source checkpoints travel too: the torch backend runs them, and the ort/trt
        # backends take the base head from them for reuse/extrapolate steps
        checkpoints = {}
        for name, src in (("base", base_path), ("vq", vq_path), ("shortcut", shortcut_path)):
            if src is None:
                continue
            weights, config = _checkpoint_files(src)
            files[f"torch/{name}.safetensors"], files[f"torch/{name}.json"] = weights, config
            checkpoints[name] = {"file": f"torch/{name}"}
        tokenizer = None
        if family == "llada":  # the prompt tokenizer travels with the model (save_pretrained layout)
            from ..models.text import tokenizer_path

            tok_dir = tokenizer_path(base_path)
            if tok_dir.is_dir():
                for f in sorted(tok_dir.iterdir()):
                    files[f"tokenizer/{f.name}"] = f
                tokenizer = {"dir": "tokenizer", "files": sorted(f.name for f in tok_dir.iterdir())}
        meta = getattr(base, "meta", {})
        manifest = {
            "family": family, "precision": s.precision, "backend": s.backend,
            "config": {"base": base.cfg.to_dict(), "vq": vq.cfg.to_dict(),
                       "shortcut": shortcut.cfg.to_dict() if shortcut is not None else None},
            "grid": base.cfg.grid, "num_tokens": base.cfg.num_tokens, "codebook_size": base.cfg.codebook_size,
            "mask_id": base.cfg.mask_id, "vocab": base.cfg.vocab,
            **({"max_text": base.cfg.max_text, "pad_id": base.cfg.pad_id} if family == "llada" else
               {"no_class_id": base.cfg.no_class_id}),
            "class_names": meta.get("class_names", []), "sampling": meta.get("sampling", {}),
            "sources": digests, "components": entries, "checkpoints": checkpoints, "tools": _versions(),
            **({"tokenizer": tokenizer} if tokenizer else {}),
        }
        say("bundle")
        return write_bundle(out, manifest, files)


def _checkpoint_files(path) -> tuple[Path, Path]:
    p = Path(path)
    p = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def _calibration(s, out, digests, trajectories, base, say, work):
    """Calibration inputs: --calibration, else the previous bundle's (same checkpoints), else collected."""
    from ..calibration.data import collect_calibration as collect
    from ..calibration.data import load_calibration as load
    from ..calibration.data import save_calibration as save
    from ..training.trajectories import CollectSettings, TrajectorySet, collect_trajectories

    if s.calibration is not None:
        data = load(s.calibration)
    else:
        data = None
        old = Path(out) / "calibration.npz"
        if old.exists():
            try:
                if read_manifest(out).get("sources") == digests:
                    data = load(old)
                    say("calibration: reusing the previous bundle's")
            except Exception:  # an unreadable old bundle is simply rebuilt
                data = None
        if data is None:
            if trajectories is None:
                say("calibration: sampling trajectories with the base model")
                sampling = getattr(base, "meta", {}).get("sampling", {})
                n = max(8, min(64, s.calibration_size // 8))
                collect_trajectories(base, work / "traj", CollectSettings(
                    num=n, steps=32, cfg=sampling.get("cfg", 0.0), tau=sampling.get("tau", 4.5), seed=1234,
                    shard_size=n))
                trajectories = work / "traj"
            data = collect(TrajectorySet(trajectories), s.calibration_size)
    save(work / "calibration.npz", data)
    return data


def _profiles(comp, s: BuildSettings) -> dict:
    """min/opt/max shapes for TensorRT: the batch axis, and the shortcut's new-token count."""
    out = {}
    for name, t in comp.inputs.items():
        dyn = comp.dynamic.get(name, {})
        lo, mid, hi = list(t.shape), list(t.shape), list(t.shape)
        for axis, axis_name in dyn.items():
            if axis_name == "batch":
                lo[axis], mid[axis], hi[axis] = 1, s.opt_batch, s.max_batch
            elif axis_name == "new_tokens":
                lo[axis], mid[axis], hi[axis] = 1, 8, comp.module.shortcut.cfg.num_tokens
        out[name] = (tuple(lo), tuple(mid), tuple(hi))
    return out


def _versions() -> dict:
    import onnx
    import onnxruntime

    from .. import __version__

    out = {"migm": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__}
    try:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return out
