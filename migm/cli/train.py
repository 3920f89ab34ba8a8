"""`migm-train`: train the VQ-VAE, the evaluation classifier, the base model and the shortcut."""

from __future__ import annotations

import click

from .common import Bar, one_line_errors


@click.group()
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


@main.command()
@click.option("--out", default="runs/vq", show_default=True, help="Checkpoint path (without suffix).")
@click.option("--steps", default=1500, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--codebook-size", default=64, show_default=True, help="Number of codes (at most 512).")
@click.option("--downsample", type=click.Choice(["2", "4"]), default=None,
              help="x2 or x4 per side: 16x16 tokens for 32x32 animals (default x2) or 64x64 scenes (default x4).")
@DATA
@click.option("--seed", default=0, show_default=True)
@DEVICE
@one_line_errors
def vq(out, steps, batch_size, codebook_size, downsample, data, seed, device):
    """Train the VQ-VAE tokenizer and report codebook usage."""
    from ..models.vqvae import VQConfig
    from ..training.data import load_animals
    from ..training.scenes import CANVAS, make_scenes
    from ..training.train_vq import codebook_usage, train_vq

    if not 2 <= codebook_size <= 512:
        raise click.BadParameter("must be between 2 and 512", param_hint="--codebook-size")
    downsample = downsample or ("4" if data == "scenes" else "2")
    scenes = data == "scenes"
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
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@DATA
@click.option("--seed", default=0, show_default=True)
@DEVICE
@one_line_errors
def classifier(out, steps, batch_size, data, seed, device):
    """Train the evaluation classifier (FD uses its penultimate features).

    With --data scenes it learns the animal from the object's crop, as the GenEval-like
    benchmark reads generated scenes."""
    from ..models.classifier import ClassifierConfig
    from ..training.data import load_animals
    from ..training.scenes import crop_splits
    from ..training.train_classifier import accuracy, train_classifier

    splits = crop_splits() if data == "scenes" else (load_animals("train"), load_animals("val"))
    bar = Bar("classifier")
    model = train_classifier(out, ClassifierConfig(), steps=steps, batch_size=batch_size, seed=seed, data=splits,
                             device=device, progress=bar)
    bar.close()
    val = splits[1]
    click.echo(f"validation accuracy {accuracy(model, val.images, val.labels):.4f}; saved {out}")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True, help="The trained VQ-VAE checkpoint.")
@click.option("--preset", type=click.Choice(["tiny-animals", "tiny-scenes"]), default="tiny-animals",
              show_default=True, help="tiny-scenes: the text-to-image (llada) model on the tiny scenes.")
@click.option("--out", default="runs/base", show_default=True)
@click.option("--steps", default=3000, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@DEVICE
@one_line_errors
def base(vq_path, preset, out, steps, batch_size, lr, seed, device):
    """Train the base model on VQ tokens (EMA weights are saved).

    tiny-scenes also writes its prompt tokenizer beside the checkpoint (OUT.tokenizer/)."""
    from ..models.checkpoint import load_checkpoint
    from ..models.presets import LLADA_PRESETS, base_config
    from ..models.text import save_tokenizer, tokenizer_path
    from ..training.scenes import CANVAS, scenes_tokenizer
    from ..training.train_base import train_base

    vq_model = load_checkpoint(vq_path)
    cfg = LLADA_PRESETS[preset] if preset in LLADA_PRESETS else base_config(preset)
    if cfg.codebook_size != vq_model.cfg.codebook_size or cfg.grid != vq_model.cfg.grid:
        raise click.ClickException(f"preset {preset} does not match the VQ-VAE at {vq_path} (codebook or grid)")
    size = CANVAS if preset in LLADA_PRESETS else 32
    if vq_model.cfg.image_size != size:
        raise click.ClickException(f"preset {preset} trains on {size}x{size} images, but the VQ-VAE at {vq_path} "
                                   f"takes {vq_model.cfg.image_size}x{vq_model.cfg.image_size} (train one with "
                                   f"`migm-train vq --data {'scenes' if size == CANVAS else 'animals'}`)")
    tokenizer = None
    if preset in LLADA_PRESETS:
        tokenizer = scenes_tokenizer(cfg)
        save_tokenizer(tokenizer, tokenizer_path(out))
    bar = Bar("base")
    train_base(out, cfg, vq_model, steps=steps, batch_size=batch_size, lr=lr, seed=seed, tokenizer=tokenizer,
               device=device, progress=bar)
    bar.close()
    click.echo(f"saved {out}")


MODEL = click.option("--model", type=click.Choice(["tiny-animals", "tiny-scenes"]), default="tiny-animals",
                     show_default=True, help="Which shipped model the checkpoints become.")


@main.command()
@click.option("--vq", "vq_path", default="runs/vq", show_default=True)
@click.option("--classifier", "classifier_path", default="runs/classifier", show_default=True)
@click.option("--base", "base_path", default="runs/base", show_default=True)
@MODEL
@click.option("--steps", default=None, type=int, help="Default sampling steps stored with the model [16; scenes 32].")
@click.option("--cfg", default=0.0, show_default=True, help="Default guidance weight stored with the model.")
@click.option("--tau", default=None, type=float, help="Default confidence-noise temperature [4.5; scenes 1].")
@click.option("--out", "out_dir", default=None, help="Asset directory (default: the package's, for --model).")
@one_line_errors
def ship(vq_path, classifier_path, base_path, model, steps, cfg, tau, out_dir):
    """Copy trained checkpoints into the package as fp16 assets, with sampling defaults.

    tiny-scenes samples as Lumina-DiMOO does (constant CFG, tau 1, cosine schedule) and
    ships its tokenizer with the base."""
    import shutil
    from pathlib import Path

    import torch

    from .. import assets
    from ..fileio import atomic_dir
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.text import tokenizer_path
    from ..training.data import CLASS_NAMES

    out = Path(out_dir) if out_dir else assets.model_dir(model)
    scenes = model == "tiny-scenes"
    sampling = {"steps": steps or (32 if scenes else 16), "cfg": cfg, "tau": (1.0 if scenes else 4.5) if tau is None
                else tau, "temperature": 1.0, "schedule": "dimoo" if scenes else "arccos",
                "sampler": "dimoo" if scenes else "halton"}
    base_extra = {"sampling": sampling} if scenes else {"class_names": CLASS_NAMES, "sampling": sampling}
    for src, name, extra in [(vq_path, "vq", {}), (classifier_path, "classifier", {"class_names": CLASS_NAMES}),
                             (base_path, "base", base_extra)]:
        m = load_checkpoint(src)
        meta = {**getattr(m, "meta", {}), **extra}
        save_checkpoint(m, out / name, meta=meta, dtype=torch.float16)
        click.echo(f"{name}: {src} -> {out / name}.safetensors")
    if scenes:
        src = tokenizer_path(base_path)
        if not (src / "tokenizer.json").exists():
            raise click.ClickException(f"no tokenizer beside the base model (expected {src}/)")
        with atomic_dir(tokenizer_path(out / "base")) as tmp:
            for f in src.iterdir():
                shutil.copyfile(f, tmp / f.name)
        click.echo(f"tokenizer: {src} -> {tokenizer_path(out / 'base')}")


@main.command()
@click.option("--base", "base_path", default=None, help="Base model checkpoint (default: the shipped tiny-animals base).")
@click.option("--out", default="runs/trajectories", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (shards + manifest.json); an unfinished one is resumed.")
@click.option("--images", "--num", "num", default=1000, show_default=True,
              help="Number of sampled images (trajectories per branch). Under torchrun write --images: "
                   "torchrun's own parser takes --num for its --numa-binding.")
@click.option("--steps", default=32, show_default=True, help="Sampling steps N.")
@click.option("--cfg", type=float, default=None, help="Guidance weight (default: the base model's); 0 = one branch.")
@click.option("--tau", type=float, default=None, help="Confidence-noise temperature (default: the base model's).")
@click.option("--seed", default=0, show_default=True)
@click.option("--shard-size", default=50, show_default=True, help="Images per shard (one sampling batch).")
@DEVICE
@one_line_errors
def trajectories(base_path, out, num, steps, cfg, tau, seed, shard_size, device):
    """Record the base model's sampling trajectories: the shortcut's training data.

    A text-to-image (llada) base samples every caption of the tiny scenes in turn, with
    Lumina-DiMOO's sampler. Runs under torchrun too (shards are split across processes).
    """
    from .. import assets
    from ..models.checkpoint import checkpoint_digest, load_checkpoint
    from ..models.llada import LLaDA
    from ..models.maskgit import MaskGIT
    from ..training.dist import close_distributed, init_distributed
    from ..training.trajectories import CollectSettings, collect_trajectories

    if shard_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--shard-size")
    path = base_path or assets.BASE
    model = load_checkpoint(path)
    if not isinstance(model, (MaskGIT, LLaDA)):
        raise click.ClickException(f"{path} is not a base model checkpoint (maskgit or llada)")
    sampling = getattr(model, "meta", {}).get("sampling", {})
    llada = isinstance(model, LLaDA)
    s = CollectSettings(num=num, steps=steps, cfg=sampling.get("cfg", 0.0) if cfg is None else cfg,
                        tau=sampling.get("tau", 1.0 if llada else 4.5) if tau is None else tau, seed=seed,
                        shard_size=shard_size, schedule=sampling.get("schedule", "dimoo" if llada else "arccos"),
                        sampler=sampling.get("sampler", "dimoo" if llada else "halton"))
    prompts = scene_prompts(path, model.cfg) if llada else None
    info = init_distributed(device)
    torch_threads_note = f" (process {info.rank + 1}/{info.world})" if info.world > 1 else ""
    bar = Bar("trajectories" + torch_threads_note)
    try:
        manifest = collect_trajectories(model.to(device), out, s, base_digest=checkpoint_digest(path), info=info,
                                        prompts=prompts, progress=lambda i, n: bar(i, n))
    finally:
        bar.close()
        close_distributed(info)
    if info.main:
        click.echo(f"wrote {num} trajectories x {2 if s.cfg else 1} branches, N={steps}, to {manifest.parent}")


def scene_prompts(base_path, cfg):
    """Every caption of the tiny scenes as prompt ids, with the base model's own tokenizer."""
    from ..models.text import encode_prompts, load_tokenizer, tokenizer_path
    from ..training.scenes import all_captions

    tokenizer = load_tokenizer(tokenizer_path(base_path))
    return encode_prompts(tokenizer, [c for c, *_ in all_captions()], cfg.max_text, cfg.text_vocab)


def _int_list(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()] if value else []
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None


@main.command()
@click.option("--trajectories", "traj_path", default="runs/traj32", show_default=True,
              type=click.Path(file_okay=False), help="A trajectory set from `migm-train trajectories`.")
@click.option("--base", "base_path", default=None, help="The base model the trajectories came from (default: shipped).")
@click.option("--out", default="runs/shortcut", show_default=True, help="Checkpoint path (without suffix).")
@click.option("--steps", default=3000, show_default=True, help="Training iterations.")
@click.option("--batch-size", default=32, show_default=True, help="Windows per iteration (per process).")
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--weight-decay", default=1e-2, show_default=True)
@click.option("--decay-at", default=1000, show_default=True, help="Multiply the lr by 0.1 after this many iterations.")
@click.option("--ema", "ema_decay", default=0.999, show_default=True, help="EMA decay of the saved weights.")
@click.option("--rollout", default=1, show_default=True, help="Most shortcut steps chained per window (1 = teacher forcing).")
@click.option("--plan-budgets", default="", help="Draw windows along these hybrid plans, e.g. 6,8,12 (start at full steps).")
@click.option("--kl", default=0.0, show_default=True, help="Weight of the (CFG-guided) logit KL term; 0 = MSE only.")
@click.option("--ratio", default=2, show_default=True, help="Bottleneck ratio r (inner width d/r).")
@click.option("--blocks", "n_block", default=1, show_default=True, help="Number of shortcut blocks.")
@click.option("--heads", default=4, show_default=True)
@click.option("--no-cross-attention", is_flag=True, help="Ablation: self-attention instead of attending to sampled tokens.")
@click.option("--max-trajectories", default=0, show_default=True,
              help="Train on only the first n trajectories (0 = all; the held-out 5% stay the same).")
@click.option("--eval-every", default=500, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--seed", default=0, show_default=True)
@one_line_errors
def shortcut(traj_path, base_path, out, steps, batch_size, lr, weight_decay, decay_at, ema_decay, rollout, plan_budgets,
             kl, ratio, n_block, heads, no_cross_attention, max_trajectories, eval_every, device, seed):
    """Train the MIGM-Shortcut feature predictor on recorded trajectories (resumable).

    Runs under torchrun with DistributedDataParallel (gloo on CPU, nccl on CUDA).
    Reports, on held-out trajectories, one-step and 3-step chained feature error and
    guided logit KL, next to the same numbers for plain feature reuse.
    """
    from .. import assets
    from ..models.checkpoint import checkpoint_digest, load_checkpoint
    from ..models.llada import LLaDA
    from ..models.maskgit import MaskGIT
    from ..models.shortcut import ShortcutConfig
    from ..models.shortcut_llada import LLaDAShortcutConfig
    from ..training.dist import close_distributed, init_distributed
    from ..training.train_shortcut import ShortcutTrainSettings, train_shortcut
    from ..training.trajectories import TrajectorySet

    path = base_path or assets.BASE
    base_model = load_checkpoint(path)
    if not isinstance(base_model, (MaskGIT, LLaDA)):
        raise click.ClickException(f"{path} is not a base model checkpoint (maskgit or llada)")
    ts = TrajectorySet(traj_path)
    digest = checkpoint_digest(path)
    recorded = ts.manifest.get("base", {}).get("digest")
    if recorded and recorded != digest:
        raise click.ClickException(f"the trajectories in {traj_path} were recorded with another base model "
                                   f"(digest {recorded}, {path} has {digest})")
    c = base_model.cfg
    if c.width % ratio or (c.width // ratio) % heads:
        raise click.BadParameter(f"width {c.width} / ratio {ratio} must split into {heads} heads", param_hint="--ratio")
    if isinstance(base_model, LLaDA):  # the DiMOO variant (RMSNorm, SwiGLU, RoPE, prompt keys)
        if no_cross_attention:
            raise click.BadParameter("the DiMOO shortcut has no self-attention-only ablation", param_hint="--no-cross-attention")
        cfg = LLaDAShortcutConfig(base=c.to_dict(), ratio=ratio, n_block=n_block, heads=heads)
    else:
        cfg = ShortcutConfig(width=c.width, codebook_size=c.codebook_size, vocab=c.vocab, num_tokens=c.num_tokens,
                             ratio=ratio, n_block=n_block, heads=heads, cross_attention=not no_cross_attention)
    settings = ShortcutTrainSettings(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                     decay_at=decay_at, ema_decay=ema_decay, rollout=rollout,
                                     plan_budgets=_int_list(plan_budgets, "--plan-budgets"), kl=kl,
                                     max_trajectories=max_trajectories, eval_every=eval_every, seed=seed,
                                     device=device)
    info = init_distributed(device)
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
@one_line_errors
def ship_shortcut(path, model, out_dir):
    """Copy a trained shortcut into the package (fp16), after checking it belongs to the shipped base."""
    from pathlib import Path

    import torch

    from .. import assets
    from ..models.checkpoint import save_checkpoint
    from ..runtime.pipeline import load_shortcut

    out = Path(out_dir) if out_dir else assets.model_dir(model)
    sc = load_shortcut(path, out / "base")
    save_checkpoint(sc, out / "shortcut", meta=getattr(sc, "meta", {}), dtype=torch.float16)
    click.echo(f"shortcut: {path} -> {out / 'shortcut'}.safetensors")


if __name__ == "__main__":
    main()
