"""`migm-export`: ONNX export, calibration, engine bundles."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import click
import torch

from .. import assets
from ..engines.build import TRT_SETTINGS, BuildSettings, build_bundle, rebuild_bundle
from ..engines.bundle import verify_bundle
from ..engines.trt import LABELS
from ..engines.verify import parity, save_polygraphy_reference
from ..export.calibration import sample_calibration, save_calibration
from ..export.onnx import components, export_component
from ..families import family_of
from ..fileio import atomic_path
from ..models.checkpoint import (
    BASE_KINDS,
    VQ_KINDS,
    checkpoint_digest,
    load_checkpoint,
    load_shortcut,
    save_checkpoint,
)
from ..models.loaders import (
    DIMOO_TEMPLATE,
    dimoo_config,
    halton_config,
    load_dimoo,
    load_dimoo_shortcut,
    load_halton_maskgit,
    load_maskgit_shortcut,
)
from ..models.text import load_tokenizer, save_tokenizer
from ..models.vq_loaders import halton_vqgan_config, load_amused_vq, load_halton_vqgan
from ..runtime import hub
from ..runtime.diffusers_pipeline import MigmPipeline
from ..sampling.config import SamplerConfig
from .common import Group, config_option, dataclass_options, debug_option, one_line_errors, settings_from, status_bar


@click.group(cls=Group)
@debug_option
def main():
    """Export the pipeline (base, shortcut, VQ decoder) and build `NAME.plan/` bundles.

    Without model options everything uses the shipped tiny-animals model and shortcut;
    `--model tiny-scenes` takes the shipped text-to-image model (with its tokenizer).
    """


def _models(model, base, vq, shortcut, no_shortcut, pretrained=None):
    if pretrained:  # a saved pipeline: DIR/base, DIR/vq, DIR/shortcut
        d = _pretrained_checkpoints(pretrained)
        return d / "base", d / "vq", None if no_shortcut or not (d / "shortcut").is_dir() else d / "shortcut"
    d = assets.model_dir(model)
    shipped = base is None
    base = base or d / "base"
    vq = vq or d / "vq"
    if no_shortcut:
        return base, vq, None
    if shortcut is None and shipped and assets.has_checkpoint(d / "shortcut"):
        shortcut = d / "shortcut"
    return base, vq, shortcut


def _pretrained_checkpoints(pretrained: str) -> Path:
    """A saved pipeline (folder or Hub repo id) as the checkpoint files build and onnx read: migm 0.1's
    folders as they are; a diffusers folder written out into a temporary directory for this command."""
    d = Path(pretrained)
    if (d / "base" / "model.safetensors").is_file():
        return d
    pipe = MigmPipeline.from_pretrained(pretrained)
    tmp = Path(tempfile.mkdtemp(prefix="migm-pretrained-"))
    click.get_current_context().call_on_close(lambda: shutil.rmtree(tmp, ignore_errors=True))
    save_checkpoint(pipe.base.model, tmp / "base", meta=pipe.base.model.meta, directory=True)
    save_checkpoint(pipe.vq.model, tmp / "vq", meta=pipe.vq.model.meta, directory=True)
    if pipe.shortcut is not None:  # tied to the base as written here
        save_checkpoint(pipe.shortcut.model, tmp / "shortcut", directory=True,
                        meta={**pipe.shortcut.model.meta, "base_digest": checkpoint_digest(tmp / "base")})
    if pipe.tokenizer is not None:
        save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
    return tmp


def _model_options(fn):
    fn = click.option("--pretrained", default=None, type=click.Path(file_okay=False),
                      help="A saved pipeline directory (save_pretrained / `migm-export convert`).")(fn)
    fn = click.option("--no-shortcut", is_flag=True, help="Leave the shortcut out.")(fn)
    fn = click.option("--shortcut", "shortcut_path", default=None,
                      help="Shortcut checkpoint (default: the shipped one, with the shipped base).")(fn)
    fn = click.option("--vq", "vq_path", default=None, help="VQ-VAE checkpoint (default: shipped).")(fn)
    fn = click.option("--base", "base_path", default=None, help="Base checkpoint (default: shipped).")(fn)
    fn = click.option("--model", type=click.Choice(list(assets.MODELS)), default="tiny-animals",
                      show_default=True, help="The shipped model to export (text-to-image: tiny-scenes).")(fn)
    return fn


@main.command()
@click.option("--out", default="migm-export", show_default=True, type=click.Path(file_okay=False),
              help="Directory for base.onnx, shortcut.onnx, decoder.onnx and parity.json.")
@_model_options
@one_line_errors
def onnx(out, model, base_path, vq_path, shortcut_path, no_shortcut, pretrained):
    """Export each component to FP32 ONNX and check it against torch in ONNX Runtime (batch 1, 3, 16)."""
    base_path, vq_path, shortcut_path = _models(model, base_path, vq_path, shortcut_path, no_shortcut, pretrained)
    base, vq = load_checkpoint(base_path, kinds=BASE_KINDS), load_checkpoint(vq_path, kinds=VQ_KINDS)
    shortcut = load_shortcut(shortcut_path, base_path, base) if shortcut_path else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for comp in components(base, vq.decoder, shortcut):
        path = export_component(comp, out / f"{comp.name}.onnx")
        rows += parity(comp, path)
        save_polygraphy_reference(comp, out)
        click.echo(f"exported {path} (+ {comp.name}.inputs.json / .torch.json for polygraphy run)")
    click.echo("\n| component | batch | new tokens | output | max abs error | rel L2 error |")
    click.echo("|---|---|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['component']} | {r['batch']} | {r['new_tokens'] or '-'} | {r['output']} | "
                   f"{r['max_abs']:.2e} | {r['rel_l2']:.2e} |")
    with atomic_path(out / "parity.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")


@main.command()
@click.option("--base", "base_path", default=None, help="Base checkpoint (default: the shipped tiny-animals base).")
@click.option("--count", type=click.IntRange(1, 100_000), default=128, show_default=True,
              help="Number of calibration inputs.")
@click.option("--steps", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Sampling steps N of the trajectories drawn from.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1234, show_default=True)
@click.option("--out", default="calibration.npz", show_default=True)
@one_line_errors
def calibrate(base_path, count, steps, seed, out):
    """Draw the shortcut's INT8 calibration inputs from the base model's own sampling (all steps,
    both CFG branches)."""
    base = load_checkpoint(base_path or assets.BASE, kinds=BASE_KINDS)
    sampler = SamplerConfig.from_dict(base.meta.get("sampling"), default=family_of(base).sampler)
    data = sample_calibration(base, sampler, count, seed=seed, steps=steps)
    save_calibration(out, data)
    click.echo(f"wrote {count} calibration inputs ({len(set(data['steps'].tolist()))} distinct steps) to {out}")


@main.command()
@click.option("--out", required=True, help="Bundle directory, e.g. tiny.plan")
@_model_options
@dataclass_options(BuildSettings)  # the settings, declared once (engines/build.py); a --config file holds them
@config_option
@one_line_errors
def build(out, model, base_path, vq_path, shortcut_path, no_shortcut, pretrained, **settings):
    """Build a bundle: export, convert precision, verify against torch, (engines), manifest."""
    base_path, vq_path, shortcut_path = _models(model, base_path, vq_path, shortcut_path, no_shortcut, pretrained)
    if not out.endswith(".plan"):
        raise click.BadParameter("a bundle is a directory named NAME.plan", param_hint="--out")
    s = settings_from(BuildSettings, settings)
    say, close = status_bar("build")
    try:
        path = build_bundle(out, s, base_path, vq_path, shortcut_path, progress=say)
    finally:
        close()
    doc = verify_bundle(path)
    click.echo(f"built {path} ({doc.precision}, {doc.backend})")
    _print_manifest(path)


@main.group()
def convert():
    """Convert the paper's released files into a saved pipeline directory (a diffusers folder) that
    `migm-run --pretrained`, `migm-export build --pretrained` and diffusers take. The files are
    given as paths, or fetched by `--from-hub` from their Hugging Face repos into the Hub cache."""


@convert.command("maskgit")
@click.option("--from-hub", is_flag=True,
              help=f"Fetch the released files from the Hub ({hub.MASKGIT_REPO}, {hub.SHORTCUT_REPO}) into its cache "
                   "(HF_HOME; HF_HUB_OFFLINE=1 reads only the cache).")
@click.option("--no-shortcut", is_flag=True, help="With --from-hub: leave the shortcut out.")
@click.option("--base", "base_path", default=None, type=click.Path(dir_okay=False),
              help="Halton-MaskGIT v1.0 checkpoint, e.g. MaskGIT_ImageNet_512.pth (or --from-hub).")
@click.option("--vqgan", "vqgan_path", default=None, type=click.Path(dir_okay=False),
              help="Its VQGAN, pretrained_maskgit/VQGAN/last.ckpt (or --from-hub).")
@click.option("--shortcut", "shortcut_path", default=None, type=click.Path(dir_okay=False),
              help="The released MaskGIT-Shortcut weights, maskgit-shortcut.pth.")
@click.option("--heads", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="The base's attention heads (not in the file).")
@click.option("--shortcut-heads", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--codebook-size", type=click.IntRange(2, 1 << 20), default=None,
              help="Codes of the VQGAN (default: read from it).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The saved pipeline directory.")
@one_line_errors
def convert_maskgit(from_hub, no_shortcut, base_path, vqgan_path, shortcut_path, heads, shortcut_heads,
                    codebook_size, out):
    """Halton-MaskGIT (ImageNet-512) + its VQGAN (+ MaskGIT-Shortcut), sampling as the paper does:
    N = 32, guidance 2.8 ramped, tau 7 (512 px), arccos."""
    if from_hub:
        if base_path or vqgan_path or shortcut_path:
            raise click.UsageError("give --from-hub or the files (--base, --vqgan, --shortcut), not both")
        files = hub.fetch_released("maskgit", shortcut=not no_shortcut)
        base_path, vqgan_path, shortcut_path = files["base"], files["vqgan"], files.get("shortcut")
    elif not (base_path and vqgan_path):
        raise click.UsageError("give --base and --vqgan (the released files), or --from-hub to fetch them")
    vq_cfg = halton_vqgan_config(vqgan_path)
    cfg = halton_config(base_path, codebook_size or vq_cfg.codebook_size, heads)
    vq = load_halton_vqgan(vqgan_path, replace(vq_cfg, grid=cfg.grid))
    base = load_halton_maskgit(base_path, cfg)
    base.meta = {"sampling": SamplerConfig(steps=32, schedule="arccos", sampler="halton", tau=7.0,
                                           guidance=2.8).to_dict()}
    models = {"base": base, "vq": vq}
    if shortcut_path:
        models["shortcut"] = load_maskgit_shortcut(shortcut_path, base, shortcut_heads)
    MigmPipeline.from_models(models["base"], models["vq"], models.get("shortcut")).save_pretrained(out)
    click.echo(f"wrote {out}: maskgit {cfg.grid}x{cfg.grid} tokens, {cfg.depth} x {cfg.width}, "
               f"{'with' if shortcut_path else 'without'} the shortcut")


@convert.command("dimoo")
@click.option("--from-hub", is_flag=True,
              help=f"Fetch {hub.DIMOO_REPO} (its JSON and safetensors files) and the DiMOO-Shortcut weights "
                   f"({hub.SHORTCUT_REPO}) into the Hub cache (HF_HOME; HF_HUB_OFFLINE=1 reads only the cache).")
@click.option("--no-shortcut", is_flag=True, help="With --from-hub: leave the shortcut out.")
@click.option("--revision", default=None, help=f"With --from-hub: the revision of {hub.DIMOO_REPO} to fetch.")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="The Lumina-DiMOO directory: safetensors shards + index, tokenizer.json, vqvae/ (or --from-hub).")
@click.option("--shortcut", "shortcut_path", default=None, type=click.Path(dir_okay=False),
              help="The released DiMOO-Shortcut weights, dimoo-shortcut.pth.")
@click.option("--heads", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="The base's attention heads (not in the files).")
@click.option("--grid", type=click.IntRange(1, 512), default=64, show_default=True,
              help="Image tokens per side (64: 1024 px).")
@click.option("--max-text", type=click.IntRange(1, 8192), default=128, show_default=True,
              help="Prompt tokens (left-padded; the system/user template included).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The saved pipeline directory.")
@one_line_errors
def convert_dimoo(from_hub, no_shortcut, revision, model_dir, shortcut_path, heads, grid, max_text, out):
    """Lumina-DiMOO (+ DiMOO-Shortcut) with its aMUSEd VQ and tokenizer, sampling as the paper does:
    N = 64, constant guidance 4, Gumbel tau 1, its cosine schedule; prompts in its system/user
    template and its <uncondition> prompt for guidance."""
    if from_hub:
        if model_dir or shortcut_path:
            raise click.UsageError("give --from-hub or the files (--model, --shortcut), not both")
        files = hub.fetch_released("dimoo", shortcut=not no_shortcut, revision=revision)
        model_dir, shortcut_path = files["model"], files.get("shortcut")
    elif not model_dir:
        raise click.UsageError("give --model (the Lumina-DiMOO directory), or --from-hub to fetch it")
    tokenizer = load_tokenizer(model_dir)
    vq = load_amused_vq(model_dir, grid=grid)
    # tokenized as upstream does (the tokenizer's default special tokens: none for Lumina-DiMOO's)
    uncond = tokenizer(DIMOO_TEMPLATE.replace("{prompt}", "<uncondition>"))["input_ids"]
    cfg = dimoo_config(model_dir, codebook_size=vq.cfg.codebook_size, heads=heads, grid=grid, max_text=max_text,
                       uncond_ids=uncond)
    base = load_dimoo(model_dir, cfg, dtype=torch.float32)
    base.meta = {"sampling": SamplerConfig(steps=64, schedule="dimoo", sampler="dimoo", tau=1.0,
                                           guidance=4.0).to_dict()}
    models = {"base": base, "vq": vq}
    if shortcut_path:
        models["shortcut"] = load_dimoo_shortcut(shortcut_path, base)
    MigmPipeline.from_models(models["base"], models["vq"], models.get("shortcut"), tokenizer).save_pretrained(out)
    click.echo(f"wrote {out}: llada {grid}x{grid} tokens, {cfg.depth} x {cfg.width}, "
               f"{'with' if shortcut_path else 'without'} the shortcut")


@main.command()
@click.argument("bundle", type=click.Path())
@dataclass_options(BuildSettings, only=TRT_SETTINGS, defaults={"opt_level": None})  # unset: the bundle's own
@one_line_errors
def rebuild(bundle, trt_flavour, compute_capabilities, opt_level, hardware_compat, timing_cache):
    """Fresh TensorRT engines for a trt BUNDLE, from the ONNX it keeps: for this machine's TensorRT
    release and GPU, or another flavour or compute capabilities. Settings not given are the
    bundle's own; the bundle is replaced only once the new engines are built."""
    # checked as a build checks them (the format of compute capabilities, paths)
    s = BuildSettings(compute_capabilities=compute_capabilities, timing_cache=timing_cache)
    say, close = status_bar("rebuild")
    try:
        path = rebuild_bundle(bundle, flavour=trt_flavour, compute_capabilities=s.compute_capabilities or None,
                              opt_level=opt_level, hardware_compat=hardware_compat, timing_cache=s.timing_cache,
                              progress=say)
    finally:
        close()
    click.echo(f"rebuilt {path}")
    _print_manifest(path)


@main.command()
@click.argument("bundle", type=click.Path())
@one_line_errors
def inspect(bundle):
    """Print a bundle's components, precisions, shapes and versions (after checking its hashes)."""
    _print_manifest(Path(bundle))


def _print_manifest(path: Path):
    doc = verify_bundle(path)
    c = doc.model_spec
    click.echo(f"{path}: {doc.family} {c.grid}x{c.grid} tokens, {c.codebook_size} codes, "
               f"{doc.fam.describe(doc.config.base)}; precision {doc.precision}, backend {doc.backend}")
    if doc.openvino:
        o = doc.openvino
        click.echo(f"  OpenVINO {o.version}; built on {o.cpu} (inference precision {o.inference_precision}; "
                   "chosen again at load)")
    if doc.trt:
        t = doc.trt
        compat = f", {t.hardware_compat}" if t.hardware_compat else ""
        click.echo(f"  engines: {LABELS[t.flavour]} {t.version}, compute capabilities "
                   f"{', '.join(t.compute_capabilities)}{compat}, optimization level {t.opt_level}; "
                   "their ONNX kept under onnx/")
    for name, e in doc.components.items():
        io = lambda specs: ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in specs)
        extra = f", built in {e.build_seconds:.1f} s" if e.build_seconds is not None else ""
        if e.data_file:
            extra += f", weights in {e.data_file}"
        if e.measured_ms:
            extra += "; measured " + ", ".join(f"{p} " + "/".join(f"{v:.2f}" for v in t.values()) + " ms"
                                               for p, t in e.measured_ms.items())
        click.echo(f"  {name:9s} {e.file:15s} {e.precision:5s} {e.bytes / 1e6:9.2f} MB  "
                   f"err vs torch {e.rel_error_vs_torch:.1e}{extra}")
        click.echo(f"            in:  {io(e.inputs)}")
        click.echo(f"            out: {io(e.outputs)}")
    if doc.checkpoints:
        click.echo(f"  torch checkpoints: {', '.join(doc.checkpoints)} (for the torch backend)")
    if doc.calibration:
        click.echo(f"  calibration: {doc.calibration.file}")
    click.echo("  tools: " + ", ".join(f"{k} {v}" for k, v in doc.tools.items()))

if __name__ == "__main__":
    main()
