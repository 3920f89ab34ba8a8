"""Build a `NAME.plan/` bundle: export, precision, (calibration), engines, manifest.

    export (FP32 ONNX, constant-folded)  ->  precision per component (fp16 graph
    conversion; INT8 Q/DQ for the shortcut from calibration)  ->  verify in ONNX
    Runtime against torch  ->  ort: the ONNX files are the artifacts; trt: one
    TensorRT engine per component, the ONNX kept beside it under onnx/ (so
    `rebuild_bundle` makes fresh engines for another GPU or TensorRT release)
    ->  bundle (written atomically)
    openvino: the FP32 graphs converted to OpenVINO IR (NAME.xml + NAME.bin), INT8 by NNCF
    on the OpenVINO model (base and shortcut), `best` measured per component (engines/openvino.py)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import onnx
import onnxruntime
import torch

from .. import __version__
from ..choices import BUILD_BACKENDS, BUILD_PRECISIONS, BUNDLE_BACKENDS
from ..errors import ConfigError, DataError
from ..export.calibration import load_calibration, sample_calibration, save_calibration
from ..export.int8 import quantize_int8
from ..export.onnx import (
    Component,
    components,
    data_file,
    export_component,
    fold_constants,
    io_spec,
    name_batch_axes_file,
)
from ..export.precision import component_precisions, to_fp16
from ..families import Family, family_of
from ..fileio import atomic_dir, check_replaceable, copy_regular
from ..models.checkpoint import (
    BASE_KINDS,
    VQ_KINDS,
    checkpoint_digest,
    checkpoint_files,
    load_checkpoint,
    load_shortcut,
)
from ..models.text import tokenizer_files, tokenizer_path
from ..sampling.config import SamplerConfig
from . import openvino, openvino_build, trt
from .bundle import BundleError, bundle_file, fill_bundle, is_bundle, read_manifest, verify_bundle
from .manifest import Artifact, Checkpoint, Configs, GraphFile, Manifest, TensorSpec, Tokenizer, TrtInfo
from .targets import default_backend, default_precision
from .verify import rel_error


@dataclass
class BuildSettings:
    """How a bundle is built, declared once: `migm-export build`'s options are these fields (their
    help, choices and ranges from the metadata here; `cli_default` where the command line's default
    differs: it picks the target for the machine), and a `--config` file holds them by name."""
    precision: str | None = field(default="fp16", metadata=dict(
        choices=BUILD_PRECISIONS, cli_default=None,
        help="fp16: FP16 graphs (norms, softmax, reductions in FP32); int8: INT8 shortcut (openvino: base and "
             "shortcut, NNCF); bf16 (openvino): fp32 IR run with the bf16 hint; best: FP16 base and decoder + INT8 "
             "shortcut (openvino: each component's fastest, timed here). Default: bf16 for openvino, else fp16."))
    backend: str = field(default="ort", metadata=dict(
        choices=BUILD_BACKENDS, cli_default="auto",
        help="ort: ONNX files for ONNX Runtime (any machine); trt: TensorRT engines (see --trt-flavour); openvino: "
             "OpenVINO IR for CPUs (pip install \"migm[openvino]\"); auto: the fastest here (trt on an NVIDIA GPU "
             "with TensorRT, openvino on a CPU with OpenVINO, else ort; an fp16 build on a CPU is ort: OpenVINO "
             "runs bf16 there)."))
    calibration: Path | None = field(default=None, metadata=dict(
        help="INT8 calibration inputs from `migm-export calibrate` (default: reuse the previous bundle's, or "
             "sample)."))
    calibration_size: int = field(default=128, metadata=dict(range=(1, 100_000), help="Calibration inputs to sample."))
    max_batch: int = field(default=64, metadata=dict(range=(1, 65536),
                                                     help="TensorRT profile: largest batch (CFG doubles it)."))
    opt_batch: int = field(default=16, metadata=dict(range=(1, 65536), help="TensorRT profile: the batch to tune for."))
    # the TensorRT settings, which `migm-export rebuild` takes too (its defaults: the bundle's own)
    trt_flavour: str = field(default="auto", metadata=dict(
        choices=("auto", *trt.FLAVOURS),
        help="tensorrt: NVIDIA TensorRT 10/11, builds on the GPU it is for; tensorrt-rtx: TensorRT for RTX, builds "
             "without a GPU (engines run on RTX and Ampere-or-later GPUs); auto: tensorrt where it is installed with a "
             "GPU, else tensorrt-rtx."))
    compute_capabilities: tuple[str, ...] = field(default=(), metadata=dict(
        option="--compute-capability",
        help="tensorrt-rtx flavour: the GPUs' compute capabilities to build for, e.g. 8.6,8.9 (default: every one "
             "it supports but Turing 7.5)."))
    opt_level: int = field(default=3, metadata=dict(range=(0, 5), help="TensorRT builder optimization level."))
    hardware_compat: str | None = field(default=None, metadata=dict(
        help="tensorrt flavour: hardware compatibility level, e.g. ampere_plus (engines for any Ampere-or-later "
             "GPU)."))
    timing_cache: Path | None = field(default=None, metadata=dict(
        help="TensorRT timing cache file (read, then updated; tensorrt flavour)."))

    def __post_init__(self):  # the command line and config files give strings and lists
        for name in ("calibration", "timing_cache"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        self.compute_capabilities = tuple(self.compute_capabilities or ())
        bad = [c for c in self.compute_capabilities if not (isinstance(c, str) and "." in c
                                                            and c.replace(".", "", 1).isdigit())]
        if bad:
            raise ConfigError(f"expected compute capabilities like 8.6,8.9, got {', '.join(map(str, bad))}")


TRT_SETTINGS = ("trt_flavour", "compute_capabilities", "opt_level", "hardware_compat", "timing_cache")


def build_bundle(out: str | Path, s: BuildSettings, base_path, vq_path, shortcut_path=None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Build the bundle for the given checkpoints (the shortcut is optional)."""
    say = progress or (lambda msg: None)
    if s.backend == "auto":
        s = replace(s, backend=default_backend(s.precision))
    if s.precision is None:  # the target's own: bf16 for OpenVINO, fp16 otherwise
        s = replace(s, precision=default_precision(s.backend))
    if s.precision not in BUILD_PRECISIONS:
        raise ConfigError(f"unknown precision {s.precision!r}; choose from {', '.join(BUILD_PRECISIONS)}")
    if s.backend not in BUNDLE_BACKENDS:
        raise ConfigError(f"unknown backend {s.backend!r}; choose from {', '.join(BUILD_BACKENDS)}")
    if not 1 <= s.opt_batch <= s.max_batch <= 65536:
        raise ConfigError(f"TensorRT profile batches need 1 <= opt ({s.opt_batch}) <= max ({s.max_batch}) <= 65536")
    if not 1 <= s.calibration_size <= 100_000:
        raise ConfigError(f"calibration size must be in 1..100000, got {s.calibration_size}")
    check_replaceable(Path(out), is_bundle, "bundle")  # before any work: never someone else's folder
    trt_info = None
    if s.backend == "trt":  # fail before any work when TensorRT (or its GPU) is missing or a setting is wrong
        flavour = trt.choose_flavour(s.trt_flavour)
        trt_info = _trt_info(flavour, s.opt_level, s.compute_capabilities, s.hardware_compat, s.timing_cache)
    ov_info = openvino.info() if s.backend == "openvino" else None  # BackendUnavailable before any work
    base = load_checkpoint(base_path, kinds=BASE_KINDS)
    vq = load_checkpoint(vq_path, kinds=VQ_KINDS)
    fam = family_of(base)
    spec = fam.spec(base.cfg)
    if (vq.cfg.codebook_size, vq.cfg.grid) != (spec.codebook_size, spec.grid):
        raise ConfigError(f"the base model (codebook {spec.codebook_size}, grid {spec.grid}) does not match the "
                          f"VQ-VAE (codebook {vq.cfg.codebook_size}, grid {vq.cfg.grid})")
    precisions = (openvino.component_precisions(s.precision, fam.precisions) if s.backend == "openvino"
                  else component_precisions(s.precision, fam.precisions))
    shortcut = load_shortcut(shortcut_path, base_path, base) if shortcut_path is not None else None
    if shortcut is None and precisions["shortcut"] == "int8":
        raise ConfigError(f"precision {s.precision} quantizes the shortcut, but no shortcut checkpoint was given")
    digests = {"base": checkpoint_digest(base_path), "vq": checkpoint_digest(vq_path)}
    if shortcut_path is not None:
        digests["shortcut"] = checkpoint_digest(shortcut_path)
    sampler = SamplerConfig.from_dict(base.meta.get("sampling"), default=fam.sampler)

    # everything happens inside the staging directory beside `out`: a killed build leaves only that,
    # and the next build on `out` removes it; `out` itself is replaced only by a finished bundle
    with atomic_dir(out, ours=is_bundle, what="bundle") as stage:
        work = stage / ".work"
        files, entries, calib = {}, {}, {}

        def calibration():  # sampled once per build, whichever component asks first
            if not calib:
                calib.update(_calibration(s, out, digests, base, sampler, say))
            return calib

        for comp in components(base, vq.decoder, shortcut):
            prec = precisions[comp.name]
            if s.backend == "openvino":  # IR from the fp32 graph; its precision is OpenVINO's business
                fp32 = component_graph(comp, "fp32", work, say)
                xml, entry = openvino_build.build_component(comp, fp32, prec, work, calibration, say)
                files[entry.file], files[entry.data_file] = xml, xml.with_suffix(".bin")
                if calib:
                    save_calibration(work / "calibration.npz", calib)
                    files["calibration.npz"] = work / "calibration.npz"
                entries[comp.name] = entry
                continue
            final = component_graph(comp, prec, work, say, calibration)
            if prec == "int8":
                files["calibration.npz"] = work / "calibration.npz"
            inputs, outputs = io_spec(final)
            weights = data_file(final).name if data_file(final) is not None else None
            entry = Artifact(file=f"{comp.name}.onnx", data_file=weights, precision=prec, backend=s.backend,
                              inputs=[TensorSpec(**t) for t in inputs], outputs=[TensorSpec(**t) for t in outputs],
                              rel_error_vs_torch=rel_error(comp, final))
            if s.backend == "trt":
                say(f"engine {comp.name} ({trt.LABELS[trt_info.flavour]})")
                entry.profile = {k: [list(x) for x in v] for k, v in _profiles(comp, s, spec.num_tokens).items()}
                # the engine is the artifact; the graph it was built from goes under onnx/, for `rebuild_bundle`
                entry.onnx = GraphFile(file=f"onnx/{entry.file}", data_file=weights and f"onnx/{weights}")
                entry.file, entry.data_file = f"{comp.name}.engine", None
                engine = work / entry.file
                _engine(final, engine, entry, comp.name, trt_info, s.timing_cache, say)
                files[entry.file] = engine
            graph = entry.onnx or entry
            files[graph.file] = final
            if graph.data_file:
                files[graph.data_file] = data_file(final)
            entries[comp.name] = entry
        # the source checkpoints travel too: the torch backend runs them, and the ort/trt
        # backends take the base head from them for reuse/extrapolate steps
        checkpoints = {}
        for name, src in (("base", base_path), ("vq", vq_path), ("shortcut", shortcut_path)):
            if src is not None:
                files[f"torch/{name}.safetensors"], files[f"torch/{name}.json"] = checkpoint_files(src)
                checkpoints[name] = Checkpoint(file=f"torch/{name}")
        manifest = Manifest(
            family=fam.name, precision=s.precision, backend=s.backend,
            config=Configs(base=base.cfg.to_dict(), vq=vq.cfg.to_dict(),
                           shortcut=shortcut.cfg.to_dict() if shortcut is not None else None),
            spec=spec.to_dict(), class_names=list(base.meta.get("class_names", [])), sampling=sampler,
            sources=digests, components=entries, checkpoints=checkpoints, tools=_versions(s.backend),
            tokenizer=_tokenizer_files(fam, base_path, files), trt=trt_info, openvino=ov_info)
        say("bundle")
        fill_bundle(stage, manifest, files)
        read_manifest(stage)  # every check the loader makes (class names, shapes), before the swap
        shutil.rmtree(work)
    return Path(out)


def rebuild_bundle(path: str | Path, flavour: str = "auto", compute_capabilities: tuple[str, ...] | None = None,
                   opt_level: int | None = None, hardware_compat: str | None = None, timing_cache: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> Path:
    """Fresh engines for a TensorRT bundle from the ONNX graphs it keeps, for this machine's TensorRT
    (or another flavour) and GPU; everything else (graphs, profiles, calibration, checkpoints) is kept.
    Settings left None are the bundle's own where they apply to the flavour. Replaces the bundle
    atomically: a failed rebuild leaves the old one as it was."""
    say = progress or (lambda msg: None)
    path = Path(path)
    doc = verify_bundle(path)
    if doc.backend != "trt":
        held = "OpenVINO IR" if doc.backend == "openvino" else "ONNX files for ONNX Runtime"
        raise BundleError(f"{path} holds {held}: there are no engines to rebuild")
    if doc.trt is None or any(e.onnx is None for e in doc.components.values()):
        raise BundleError(f"{path} does not keep the ONNX its engines were built from (built by an older migm): "
                          "build it again with `migm-export build --backend trt`")
    old = doc.trt
    new_flavour = trt.choose_flavour(flavour)
    same = new_flavour == old.flavour
    if compute_capabilities is None:
        compute_capabilities = tuple(old.compute_capabilities) if same and new_flavour == trt.RTX else ()
    if hardware_compat is None and same:
        hardware_compat = old.hardware_compat
    info = _trt_info(new_flavour, old.opt_level if opt_level is None else opt_level, compute_capabilities,
                     hardware_compat, timing_cache)
    files = {rel: bundle_file(path, rel, "bundle file") for rel in _kept_files(doc)}  # only what it names
    with atomic_dir(path, ours=is_bundle, what="bundle") as stage:
        work = stage / ".work"
        work.mkdir()
        for name, entry in doc.components.items():
            say(f"engine {name} ({trt.LABELS[new_flavour]})")
            engine = work / entry.file
            graph = _hashed_graph(files, entry.onnx, work / "src" / name)
            _engine(graph, engine, entry, name, info, timing_cache, say)
            files[entry.file] = engine
        manifest = replace(doc, trt=info, tools={**doc.tools, **_versions()})
        say("bundle")
        fill_bundle(stage, manifest, files)
        read_manifest(stage)  # every check the loader makes, before the swap
        shutil.rmtree(work)
    return path


def _hashed_graph(files: dict, onnx: GraphFile, folder: Path) -> Path:
    """The graph (and its external weights) alone in a folder of its own, so the ONNX parser can read
    only the files the manifest hashes, never another one beside them in the bundle."""
    folder.mkdir(parents=True)
    for rel in (onnx.file, onnx.data_file):
        if rel:
            src, dst = files[rel], folder / Path(rel).name
            try:
                os.link(src, dst)  # same filesystem (the stage is beside the bundle): no copy of a large graph
            except OSError:
                copy_regular(src, dst, "bundle file", BundleError)
    return folder / Path(onnx.file).name


def _kept_files(doc: Manifest) -> list[str]:
    """The files a rebuild carries over: every file the manifest names but the engines."""
    engines = {e.file for e in doc.components.values()}
    return [rel for rel, _, _, _ in doc.files() if rel not in engines]


def _trt_info(flavour: str, opt_level: int, compute_capabilities, hardware_compat, timing_cache) -> TrtInfo:
    """The manifest's `trt` entry: flavour, its version, the compute capabilities the engines target
    (validated here, before anything is built), and the builder settings."""
    opts = trt.BuildOptions(flavour=flavour, opt_level=opt_level, compute_capabilities=tuple(compute_capabilities),
                            hardware_compat=hardware_compat, timing_cache=timing_cache)
    return TrtInfo(flavour=flavour, version=trt.version(flavour), compute_capabilities=trt.targets(opts),
                   hardware_compat=hardware_compat, opt_level=opt_level)


def _engine(onnx_path: Path, engine: Path, entry: Artifact, name: str, info: TrtInfo, timing_cache: Path | None,
            say=lambda msg: None) -> None:
    """Build one component's engine as `info` says, with the entry's profile; its build time into the entry."""
    opts = trt.BuildOptions(flavour=info.flavour, opt_level=info.opt_level,
                            profiles={k: tuple(tuple(x) for x in v) for k, v in entry.profile.items()},
                            compute_capabilities=tuple(info.compute_capabilities) if info.flavour == trt.RTX
                            else (), hardware_compat=info.hardware_compat, timing_cache=timing_cache)
    built = trt.build_engine(onnx_path, engine, opts, component=name, precision=entry.precision,
                             inputs=entry.inputs, outputs=entry.outputs,
                             progress=lambda msg: say(f"engine {name}: {msg}"))
    entry.build_seconds = built["seconds"]


def component_graph(comp: Component, precision: str, work: Path, say=lambda msg: None,
                    calibration: Callable[[], dict] | None = None) -> Path:
    """The component's ONNX graph at its precision. One directory per stage, every file under its
    bundle name (external data is referenced by file name, NAME.onnx.data: never renamed)."""
    say(f"export {comp.name}")
    fp32 = export_component(comp, work / "fp32" / f"{comp.name}.onnx")
    fold_constants(fp32)
    return convert_precision(fp32, precision, work, say, calibration)


def convert_precision(fp32: Path, precision: str, work: Path, say=lambda msg: None,
                      calibration: Callable[[], dict] | None = None) -> Path:
    """An exported FP32 graph at `precision` (fp32: itself), under work/PRECISION/; an INT8 graph's
    calibration inputs are saved as work/calibration.npz."""
    final = fp32
    if precision == "fp16":
        say(f"fp16 {fp32.stem}")
        final = to_fp16(fp32, work / "fp16" / fp32.name)
    elif precision == "int8":
        if calibration is None:
            raise ConfigError("an INT8 graph needs calibration inputs")
        calib = calibration()
        save_calibration(work / "calibration.npz", calib)
        say(f"int8 {fp32.stem} ({len(calib['counts'])} calibration inputs)")
        final = quantize_int8(fp32, work / "int8" / fp32.name, calib)
    name_batch_axes_file(final)
    return final


def _tokenizer_files(fam: Family, base_path, files: dict) -> Tokenizer | None:
    """A text model's prompt tokenizer travels with it (save_pretrained layout)."""
    tok_dir = tokenizer_path(base_path)
    if not fam.needs_tokenizer or not tok_dir.is_dir():
        return None
    names = tokenizer_files(tok_dir)  # the format's file names only, each a regular file, never the folder's listing
    for name in names:
        files[f"tokenizer/{name}"] = tok_dir / name
    return Tokenizer(dir="tokenizer", files=names)


def _calibration(s: BuildSettings, out, digests: dict, base, sampler: SamplerConfig, say) -> dict:
    """Calibration inputs: --calibration, else the previous bundle's (same checkpoints), else sampled."""
    if s.calibration is not None:
        return load_calibration(s.calibration)
    if is_bundle(Path(out)):
        try:
            doc = verify_bundle(out)
            if doc.sources == digests and doc.calibration:
                data = load_calibration(bundle_file(Path(out), doc.calibration.file, "calibration data"))
                if s.backend != "openvino" or "base_tokens" in data:  # OpenVINO INT8 calibrates the base too
                    say("calibration: reusing the previous bundle's")
                    return data
        except (BundleError, DataError):  # an unreadable old bundle: sample afresh
            pass
    say("calibration: sampling trajectories with the base model")
    return sample_calibration(base, sampler, s.calibration_size)


def _profiles(comp: Component, s: BuildSettings, num_tokens: int) -> dict:
    """min/opt/max shapes for TensorRT: the batch axis, and the shortcut's new-token count."""
    out = {}
    for name, t in comp.inputs.items():
        dyn = comp.dynamic.get(name, {})
        lo, mid, hi = list(t.shape), list(t.shape), list(t.shape)
        for axis, axis_name in dyn.items():
            if axis_name == "batch":
                lo[axis], mid[axis], hi[axis] = 1, s.opt_batch, s.max_batch
            elif axis_name == "new_tokens":
                lo[axis], mid[axis], hi[axis] = 1, 8, num_tokens
        out[name] = (tuple(lo), tuple(mid), tuple(hi))
    return out


def _versions(backend: str = "ort") -> dict:
    out = {"migm": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__}
    if backend == "openvino":
        out.update(openvino.versions())
    return out  # a TensorRT bundle's flavour and version are in its `trt` entry
