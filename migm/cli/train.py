"""`migm-train`: train the VQ-VAE, the evaluation classifier and the base model."""

from __future__ import annotations

import click

from .common import Bar, one_line_errors


@click.group()
def main():
    """Train the models of the tiny-animals pipeline (CPU is fine; resumable).

    Order: `vq`, then `classifier` and `base` (the base needs the VQ-VAE).
    Re-running a command with the same --out resumes from its last checkpoint.
    """


@main.command()
@click.option("--out", default="runs/vq", show_default=True, help="Checkpoint path (without suffix).")
@click.option("--steps", default=1500, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--codebook-size", default=64, show_default=True, help="Number of codes (at most 512).")
@click.option("--downsample", type=click.Choice(["2", "4"]), default="2", show_default=True,
              help="x2 -> 16x16 tokens, x4 -> 8x8 tokens for 32x32 images.")
@click.option("--seed", default=0, show_default=True)
@one_line_errors
def vq(out, steps, batch_size, codebook_size, downsample, seed):
    """Train the VQ-VAE tokenizer and report codebook usage."""
    from ..models.vqvae import VQConfig
    from ..training.data import load_animals
    from ..training.train_vq import codebook_usage, train_vq

    if not 2 <= codebook_size <= 512:
        raise click.BadParameter("must be between 2 and 512", param_hint="--codebook-size")
    cfg = VQConfig(codebook_size=codebook_size, n_down={"2": 1, "4": 2}[downsample])
    bar = Bar("vq")
    model = train_vq(out, cfg, steps=steps, batch_size=batch_size, seed=seed, progress=bar)
    bar.close()
    used, ppl = codebook_usage(model, load_animals("val").images)
    click.echo(f"codebook usage on validation: {used}/{cfg.codebook_size} codes, perplexity {ppl:.1f}; saved {out}")


@main.command()
@click.option("--out", default="runs/classifier", show_default=True)
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@one_line_errors
def classifier(out, steps, batch_size, seed):
    """Train the evaluation classifier (FD uses its penultimate features)."""
    from ..models.classifier import ClassifierConfig
    from ..training.data import load_animals
    from ..training.train_classifier import accuracy, train_classifier

    bar = Bar("classifier")
    model = train_classifier(out, ClassifierConfig(), steps=steps, batch_size=batch_size, seed=seed, progress=bar)
    bar.close()
    val = load_animals("val")
    click.echo(f"validation accuracy {accuracy(model, val.images, val.labels):.4f}; saved {out}")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True, help="The trained VQ-VAE checkpoint.")
@click.option("--preset", default="tiny-animals", show_default=True)
@click.option("--out", default="runs/base", show_default=True)
@click.option("--steps", default=3000, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@one_line_errors
def base(vq_path, preset, out, steps, batch_size, lr, seed):
    """Train the MaskGIT base model on VQ tokens (EMA weights are saved)."""
    from ..models.checkpoint import load_checkpoint
    from ..models.presets import base_config
    from ..training.train_base import train_base

    vq_model = load_checkpoint(vq_path)
    cfg = base_config(preset)
    if cfg.codebook_size != vq_model.cfg.codebook_size or cfg.grid != vq_model.cfg.grid:
        raise click.ClickException(f"preset {preset} does not match the VQ-VAE at {vq_path} (codebook or grid)")
    bar = Bar("base")
    train_base(out, cfg, vq_model, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=bar)
    bar.close()
    click.echo(f"saved {out}")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True)
@click.option("--classifier", "classifier_path", default="runs/classifier", show_default=True)
@click.option("--base", "base_path", default="runs/base", show_default=True)
@click.option("--steps", default=16, show_default=True, help="Default sampling steps stored with the model.")
@click.option("--cfg", default=0.0, show_default=True, help="Default guidance weight stored with the model.")
@click.option("--tau", default=4.5, show_default=True, help="Default confidence-noise temperature.")
@click.option("--out", "out_dir", default=None, help="Asset directory (default: the package's migm/assets).")
@one_line_errors
def ship(vq_path, classifier_path, base_path, steps, cfg, tau, out_dir):
    """Copy trained checkpoints into the package as fp16 assets, with sampling defaults."""
    from pathlib import Path

    import torch

    from .. import assets
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..training.data import CLASS_NAMES

    out = Path(out_dir) if out_dir else assets.ASSETS
    sampling = {"steps": steps, "cfg": cfg, "tau": tau, "temperature": 1.0, "schedule": "arccos"}
    for src, name, extra in [(vq_path, "vq", {}), (classifier_path, "classifier", {"class_names": CLASS_NAMES}),
                             (base_path, "base", {"class_names": CLASS_NAMES, "sampling": sampling})]:
        model = load_checkpoint(src)
        meta = {**getattr(model, "meta", {}), **extra}
        save_checkpoint(model, out / name, meta=meta, dtype=torch.float16)
        click.echo(f"{name}: {src} -> {out / name}.safetensors")
