"""`migm-train`: train the VQ-VAE, the evaluation classifier, the base model and the shortcut."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from .. import assets
from ..data.animals import CLASS_NAMES, load_animals
from ..data.scenes import CANVAS, all_captions, caption_words, make_scenes
from ..evaluation.judge import crop_splits
from ..families import family_of
from ..families.presets import preset
from ..fileio import copy_regular, staged_files
from ..models.checkpoint import BASE_KINDS, checkpoint_digest, load_checkpoint, load_shortcut, save_checkpoint
from ..models.classifier import ClassifierConfig
from ..models.shortcut import LAYOUTS
from ..models.text import (
    build_tokenizer,
    encode_prompts,
    load_tokenizer,
    save_tokenizer,
    tokenizer_files,
    tokenizer_path,
)
from ..models.vqvae import VQConfig
from ..sampling.config import SamplerConfig
from ..training.dist import close_distributed, init_distributed
from ..training.train_base import TOKEN_DATA, train_base
from ..training.train_classifier import accuracy, train_classifier
from ..training.train_shortcut import ShortcutTrainSettings, train_shortcut
from ..training.train_vq import codebook_usage, train_vq
from ..training.trajectories import TrajectorySet, collect_trajectories
from .common import Bar, Group, config_option, dataclass_options, debug_option, one_line_errors, settings_from


@click.group(cls=Group)
@debug_option
def main():
    """Train the models of the tiny pipelines (CPU is fine; resumable).

    Order: `vq`, then `classifier` and `base` (the base needs the VQ-VAE), `trajectories`,
    `shortcut`, then `ship` / `ship-shortcut`. `--data scenes` / `--preset tiny-scenes` train
    the text-to-image (llada) family on the tiny scenes instead of class-conditional animals.
    Re-running a command with the same --out resumes from its last checkpoint.
    """


DATA = click.option("--data", type=click.Choice(["animals", "scenes"]), default="animals", show_default=True,
                    help="animals: 32x32 silhouettes; scenes: 64x64 captioned scenes (text-to-image).")
DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
MODEL = click.option("--model", type=click.Choice(list(assets.MODELS)), default="tiny-animals",
                     show_default=True, help="Which shipped model the checkpoints become.")
# the sampling steps each shipped model defaults to
SHIP_STEPS = {"tiny-animals": 16, "tiny-scenes": 32}


@main.command()
@click.option("--out", default="runs/vq", show_default=True, help="Checkpoint path (without suffix).")
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=1500, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True)
@click.option("--codebook-size", type=click.IntRange(2, 512), default=64, show_default=True,
              help="Number of codes (at most 512).")
@click.option("--downsample", type=click.Choice(["2", "4"]), default=None,
              help="x2 or x4 per side: 16x16 tokens for 32x32 animals (default x2) or 64x64 scenes (default x4).")
@DATA
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@DEVICE
@config_option
@one_line_errors
def vq(out, steps, batch_size, codebook_size, downsample, data, seed, device):
    """Train the VQ-VAE tokenizer and report codebook usage."""
    if not 2 <= codebook_size <= 512:
        raise click.BadParameter("must be between 2 and 512", param_hint="--codebook-size")
    scenes = data == "scenes"
    downsample = downsample or ("4" if scenes else "2")
    cfg = VQConfig(image_size=CANVAS if scenes else 32, codebook_size=codebook_size,
                   n_down={"2": 1, "4": 2}[downsample])
    images = make_scenes("train", 4, seed=0).images if scenes else None
    bar = Bar("vq")
    model = train_vq(out, cfg, steps=steps, batch_size=batch_size, seed=seed, images=images, device=device,
                     progress=bar)
    bar.close()
    used, ppl = codebook_usage(model, make_scenes("val", 1, seed=1).images if scenes else load_animals("val").images)
    click.echo(f"codebook usage on validation: {used}/{cfg.codebook_size} codes, perplexity {ppl:.1f}; saved {out}")


@main.command()
@click.option("--out", default="runs/classifier", show_default=True)
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True)
@DATA
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@DEVICE
@config_option
@one_line_errors
def classifier(out, steps, batch_size, data, seed, device):
    """Train the evaluation classifier (FD uses its penultimate features).

    With --data scenes it learns the animal from the object's crop, as the GenEval-like
    benchmark reads generated scenes."""
    splits = crop_splits() if data == "scenes" else (load_animals("train"), load_animals("val"))
    bar = Bar("classifier")
    model = train_classifier(out, ClassifierConfig(), steps=steps, batch_size=batch_size, seed=seed, data=splits,
                             device=device, progress=bar)
    bar.close()
    val = splits[1]
    click.echo(f"validation accuracy {accuracy(model, val.images, val.labels):.4f}; saved {out}")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True, help="The trained VQ-VAE checkpoint.")
@click.option("--preset", "preset_name", type=click.Choice(list(assets.MODELS)), default="tiny-animals",
              show_default=True, help="tiny-scenes: the text-to-image (llada) model on the tiny scenes.")
@click.option("--out", default="runs/base", show_default=True)
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=3000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@DEVICE
@config_option
@one_line_errors
def base(vq_path, preset_name, out, steps, batch_size, lr, seed, device):
    """Train the base model on VQ tokens (EMA weights are saved).

    A text-to-image preset also writes its prompt tokenizer beside the checkpoint (OUT.tokenizer/)."""
    p = preset(preset_name)
    vq_model = load_checkpoint(vq_path, kinds=("vqvae",))
    cfg = p.base
    if cfg.codebook_size != vq_model.cfg.codebook_size or cfg.grid != vq_model.cfg.grid:
        raise click.ClickException(f"preset {preset_name} does not match the VQ-VAE at {vq_path} (codebook or grid)")
    size = p.vq.image_size
    if vq_model.cfg.image_size != size:
        raise click.ClickException(f"preset {preset_name} trains on {size}x{size} images, but the VQ-VAE at "
                                   f"{vq_path} takes {vq_model.cfg.image_size}x{vq_model.cfg.image_size} (train one "
                                   f"with `migm-train vq --data {p.data}`)")
    tokenizer = None
    if p.fam.needs_tokenizer:
        tokenizer = build_tokenizer(caption_words(), cfg.text_vocab, cfg.max_text)
        save_tokenizer(tokenizer, tokenizer_path(out))
    data = TOKEN_DATA[p.data](vq_model.to(device), cfg, tokenizer)
    bar = Bar("base")
    train_base(out, cfg, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=bar)
    bar.close()
    click.echo(f"saved {out}")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True)
@click.option("--classifier", "classifier_path", default="runs/classifier", show_default=True)
@click.option("--base", "base_path", default="runs/base", show_default=True)
@MODEL
@click.option("--steps", default=None, type=int, help="Default sampling steps stored with the model [16; scenes 32].")
@click.option("--guidance", "--cfg", "guidance", default=0.0, show_default=True,
              help="Default guidance weight stored with the model (--cfg is the old name).")
@click.option("--tau", default=None, type=float, help="Default confidence-noise temperature [4.5; scenes 1].")
@click.option("--out", "out_dir", default=None, help="Asset directory (default: the package's, for --model).")
@config_option
@one_line_errors
def ship(vq_path, classifier_path, base_path, model, steps, guidance, tau, out_dir):
    """Copy trained checkpoints into the package as fp16 assets, with sampling defaults.

    A text-to-image model samples as Lumina-DiMOO does (constant guidance, tau 1, cosine schedule)
    and ships its tokenizer with the base."""
    out = Path(out_dir) if out_dir else assets.model_dir(model)
    fam = preset(model).fam
    sampler = fam.sampler.replace(steps=steps or SHIP_STEPS[model], guidance=guidance, tau=tau).validate()
    names = {"class_names": CLASS_NAMES} if fam.condition_kind == "class" else {}  # what a class id means
    base_extra = {"sampling": sampler.to_dict(), **names}
    # everything is read and checked before anything is written, and written as one: a failure
    # leaves the shipped model as it was
    models = [(vq_path, "vq", load_checkpoint(vq_path, kinds=("vqvae",)), {}),
              (classifier_path, "classifier", load_checkpoint(classifier_path, kinds=("classifier",)),
               {"class_names": CLASS_NAMES}),
              (base_path, "base", load_checkpoint(base_path, kinds=(fam.base_kind,)), base_extra)]
    tok = tokenizer_path(base_path)
    if fam.needs_tokenizer and not (tok / "tokenizer.json").is_file():
        raise click.ClickException(f"no tokenizer beside the base model (expected {tok}/)")
    with staged_files(out) as stage:
        for src, name, m, extra in models:
            save_checkpoint(m, stage / name, meta={**m.meta, **extra}, dtype=torch.float16)
        if fam.needs_tokenizer:
            tokenizer_path(stage / "base").mkdir()
            for f in tokenizer_files(tok):  # the format's files only, each a regular file
                copy_regular(tok / f, tokenizer_path(stage / "base") / f, "tokenizer file")
    for src, name, _, _ in models:
        click.echo(f"{name}: {src} -> {out / name}.safetensors")
    if fam.needs_tokenizer:
        click.echo(f"tokenizer: {tok} -> {tokenizer_path(out / 'base')}")


@main.command()
@click.option("--base", "base_path", default=None,
              help="Base model checkpoint (default: the shipped tiny-animals base).")
@click.option("--out", default="runs/trajectories", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (shards + manifest.json); an unfinished one is resumed.")
@click.option("--images", "--num", "num", type=click.IntRange(1, 10_000_000), default=1000, show_default=True,
              help="Number of sampled images (trajectories per branch). Under torchrun write --images: "
                   "torchrun's own parser takes --num for its --numa-binding.")
@click.option("--steps", type=click.IntRange(1, 4096), default=32, show_default=True, help="Sampling steps N.")
@click.option("--guidance", "--cfg", "guidance", type=float, default=None,
              help="Guidance weight (default: the base model's); 0 = one branch. --cfg is the old name.")
@click.option("--tau", type=float, default=None, help="Confidence-noise temperature (default: the base model's).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--shard-size", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Images per shard (one sampling batch).")
@click.option("--shortcut", "shortcut_path", default=None,
              help="On-policy data: follow the hybrid sampler with this shortcut (and --budget); the base still "
                   "runs on every step to record the features it would have computed.")
@click.option("--budget", type=click.IntRange(1, 4096), default=None, help="B of N for --shortcut.")
@DEVICE
@config_option
@one_line_errors
def trajectories(base_path, out, num, steps, guidance, tau, seed, shard_size, shortcut_path, budget, device):
    """Record the base model's sampling trajectories: the shortcut's training data.

    A class-conditional base samples every class in turn; a text-to-image base every caption of
    the tiny scenes, with its own (Lumina-DiMOO) sampler. Runs under torchrun too (shards are
    split across processes).
    """
    if shard_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--shard-size")
    path = base_path or assets.BASE
    model = load_checkpoint(path, kinds=BASE_KINDS)
    fam = family_of(model)
    spec = fam.spec(model.cfg)
    sampler = SamplerConfig.from_dict(model.meta.get("sampling"), default=fam.sampler).replace(
        steps=steps, guidance=guidance, tau=tau)
    if fam.text:  # every caption of the tiny scenes, read by the model's own tokenizer
        conditions = encode_prompts(load_tokenizer(tokenizer_path(path)), [c for c, *_ in all_captions()],
                                    spec.max_text, spec.text_vocab)
    else:
        conditions = torch.arange(spec.num_classes)
    if (shortcut_path is None) != (budget is None):
        raise click.UsageError("--shortcut and --budget go together (on-policy trajectories)")
    sc = load_shortcut(shortcut_path, path, model).to(device).eval() if shortcut_path else None
    info = init_distributed(device)
    note = f" (process {info.rank + 1}/{info.world})" if info.world > 1 else ""
    bar = Bar("trajectories" + note)
    try:
        manifest = collect_trajectories(model.to(device), out, sampler, conditions, num, seed=seed,
                                        shard_size=shard_size, base_digest=checkpoint_digest(path), info=info,
                                        progress=lambda i, n: bar(i, n), shortcut=sc, budget=budget,
                                        shortcut_digest=checkpoint_digest(shortcut_path) if sc else "")
    finally:
        bar.close()
        close_distributed(info)
    if info.main:
        click.echo(f"wrote {num} trajectories x {2 if sampler.guidance else 1} branches, N={steps}, "
                   f"to {manifest.parent}")


@main.command()
@click.option("--trajectories", "traj_path", default="runs/traj32", show_default=True,
              type=click.Path(file_okay=False), help="A trajectory set from `migm-train trajectories`.")
@click.option("--base", "base_path", default=None, help="The base model the trajectories came from (default: shipped).")
@click.option("--out", default="runs/shortcut", show_default=True, help="Checkpoint path (without suffix).")
@dataclass_options(ShortcutTrainSettings)
@click.option("--ratio", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Bottleneck ratio r (inner width d/r).")
@click.option("--blocks", "n_block", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Number of shortcut blocks.")
@click.option("--heads", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--no-cross-attention", is_flag=True,
              help="Ablation: self-attention instead of attending to sampled tokens.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="upstream", show_default=True,
              help="upstream: the released MIGM-Shortcut's layout (its weights load into it); migm: this "
                   "project's first design, kept for comparison.")
@config_option
@one_line_errors
def shortcut(traj_path, base_path, out, ratio, n_block, heads, no_cross_attention, layout, **options):
    """Train the MIGM-Shortcut feature predictor on recorded trajectories (resumable).

    Runs under torchrun with DistributedDataParallel (gloo on CPU, nccl on CUDA).
    Reports, on held-out trajectories, one-step and 3-step chained feature error and
    guided logit KL, next to the same numbers for plain feature reuse.
    """
    path = base_path or assets.BASE
    base_model = load_checkpoint(path, kinds=BASE_KINDS)
    ts = TrajectorySet(traj_path)
    digest = checkpoint_digest(path)
    recorded = ts.manifest.get("base", {}).get("digest")
    if recorded and recorded != digest:
        raise click.ClickException(f"the trajectories in {traj_path} were recorded with another base model "
                                   f"(digest {recorded}, {path} has {digest})")
    c = base_model.cfg
    if c.width % ratio or (c.width // ratio) % heads:
        raise click.BadParameter(f"width {c.width} / ratio {ratio} must split into {heads} heads", param_hint="--ratio")
    cfg = family_of(base_model).shortcut_config(c, ratio=ratio, n_block=n_block, heads=heads,
                                                cross_attention=not no_cross_attention, layout=layout)
    settings = settings_from(ShortcutTrainSettings, options)
    info = init_distributed(settings.device)
    bar = Bar("shortcut")
    try:
        _, val = train_shortcut(out, base_model, ts, cfg, settings, meta={"base_digest": digest}, info=info,
                                progress=bar)
    finally:
        bar.close()
        close_distributed(info)
    if info.main:
        n_params = sum(p.numel() for p in load_checkpoint(out).parameters())
        click.echo(f"saved {out} ({n_params / 1e6:.2f}M params)")
        click.echo("validation (held-out trajectories, still-masked positions; reuse = f[i+1] = f[i]):")
        for key in ("rel_err_1", "rel_err_chain", "kl_1", "kl_chain"):
            click.echo(f"  {key:14s} shortcut {val[key]:.4f}   reuse {val['reuse_' + key]:.4f}")


@main.command("ship-shortcut")
@click.argument("path", default="runs/shortcut")
@MODEL
@click.option("--out", "out_dir", default=None, help="Asset directory (default: the package's, for --model).")
@config_option
@one_line_errors
def ship_shortcut(path, model, out_dir):
    """Copy a trained shortcut into the package (fp16), after checking it belongs to the shipped base."""
    out = Path(out_dir) if out_dir else assets.model_dir(model)
    sc = load_shortcut(path, out / "base")
    with staged_files(out) as stage:  # weights and config land together, or not at all
        save_checkpoint(sc, stage / "shortcut", meta=sc.meta, dtype=torch.float16)
    click.echo(f"shortcut: {path} -> {out / 'shortcut'}.safetensors")


if __name__ == "__main__":
    main()
