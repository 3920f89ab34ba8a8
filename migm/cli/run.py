"""`migm-run`: generate images from a bundle (or the shipped model, or checkpoints)."""

from __future__ import annotations

import time

import click

from ..sampling.strategies import STRATEGIES
from .common import Bar, debug_option, one_line_errors

MAX_IMAGES = 100_000  # a sane bound: more is a typo, or a job for migm-generate
GRID_MAX = 100  # the grid shows at most this many images


@click.command()
@click.option("--engine", "engine", default=None, type=click.Path(),
              help="A NAME.plan bundle from `migm-export build`. Default: the shipped model's bundle, "
                   "built on first use into ~/.cache/migm (or $MIGM_CACHE).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "torch", "ort", "trt"]),
              help="auto: trt for a TensorRT bundle, else torch with CUDA graphs on a GPU; on a CPU ONNX Runtime "
                   "for fp32/int8 bundles, torch (bf16) for fp16/best ones.")
@click.option("--classes", default=None,
              help="Comma-separated class names or indices, cycled to --num images (default: every class in turn).")
@click.option("--prompt", "prompts", multiple=True,
              help="Text prompt for a text-to-image model (repeat for several), cycled to --num images, "
                   "e.g. --prompt \"a small cat on the left\".")
@click.option("--model", type=click.Choice(["tiny-animals", "tiny-scenes"]), default=None,
              help="A shipped model on the torch backend, instead of a bundle (tiny-scenes: text-to-image).")
@click.option("--num", default=None, type=click.IntRange(1, MAX_IMAGES),
              help=f"Number of images (at most {MAX_IMAGES:,}) [16; with prompts: one per prompt].")
@click.option("--steps", type=click.IntRange(1, 4096), default=None,
              help="Sampling steps N (default: the model's, 16 for tiny-animals).")
@click.option("--budget", type=click.IntRange(1, 4096), default=None,
              help="B: steps that run the base model (of N); the shortcut predicts the others. Default: N.")
@click.option("--strategy", default=None, type=click.Choice(STRATEGIES),
              help="How steps without the base model get their features. Default: shortcut when B < N.")
@click.option("--guidance", "--cfg", "guidance", type=float, default=None,
              help="Classifier-free guidance weight w (default: the model's; --cfg is the old name).")
@click.option("--tau", type=float, default=None,
              help="Gumbel temperature of the confidence noise (default: the model's).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--out", default="migm-out", show_default=True, type=click.Path(file_okay=False),
              help="Output directory: grid.png plus one PNG per image.")
@click.option("--pretrained", default=None, type=click.Path(file_okay=False),
              help="A saved pipeline directory (save_pretrained / `migm-export convert`), on the torch backend.")
@click.option("--base", "base_path", default=None,
              help="Run these checkpoints on the torch backend instead of a bundle.")
@click.option("--vq", "vq_path", default=None, help="VQ-VAE checkpoint (with --base; default: shipped).")
@click.option("--shortcut", "shortcut_path", default=None,
              help="Shortcut checkpoint (with checkpoints; default: the shipped one, with the shipped base).")
@click.option("--verify", is_flag=True,
              help="Hash every file of the bundle (by default only the first open does; later opens re-hash the "
                   "files whose size, times or inode changed).")
@debug_option
@one_line_errors
def main(engine, backend, classes, prompts, model, num, steps, budget, strategy, guidance, tau, seed, batch_size, out,
         pretrained, base_path, vq_path, shortcut_path, verify):
    """Generate images for classes (tiny-animals) or text prompts (tiny-scenes).

    `migm-run --num 8 --steps 16 --budget 6` runs the base model on 6 of 16 steps and the
    learned shortcut on the others; `--engine NAME.plan --backend ort` picks a bundle and
    backend. `migm-run --engine scenes.plan --prompt "a small cat on the left"` runs a
    text-to-image bundle. Checkpoint options (--model or --base/--vq/--shortcut) run the
    torch backend on them.
    """
    import torch  # here, not at the top: `migm-run --help` starts without torch and the runtime

    from ..runtime.images import ImageFolder, make_grid, slug  # (as torch)
    from ..runtime.pipeline import Pipeline  # (as torch)

    if prompts and classes:
        raise click.UsageError("give --classes (class-conditional model) or --prompt (text-to-image), not both")
    folder = ImageFolder(out)  # refused now, before any work, if it holds files migm-run did not write

    checkpoints = base_path or vq_path or shortcut_path or model or pretrained
    if checkpoints and engine:
        raise click.UsageError("give either --engine or checkpoints (--model, --pretrained, --base/--vq/--shortcut), "
                               "not both")
    if checkpoints:
        if backend not in ("auto", "torch"):
            raise click.BadParameter("checkpoints run on the torch backend only; build a bundle for "
                                     f"{backend} with `migm-export build`", param_hint="--backend")
        pipe = Pipeline.from_pretrained(pretrained) if pretrained else \
            Pipeline.from_checkpoints(base_path, vq_path, shortcut_path, model=model or "tiny-animals")
    else:
        if engine is None:
            from ..runtime.cache import default_bundle  # builds the shipped model's bundle on first use

            engine = default_bundle(say=click.echo)
        from ..engines.refit import fit_for_backend  # TensorRT engines made elsewhere: rebuilt here, once

        fit_for_backend(engine, backend, say=click.echo)
        pipe = Pipeline.from_bundle(engine, backend=backend, verify=verify)
    source = engine or pretrained or base_path or model
    text = pipe.family.text
    if text and not prompts:
        instead = " instead of --classes" if classes else ""
        raise click.UsageError(f"{source} is a text-to-image model: give --prompt \"...\"{instead}"
                               " (e.g. --prompt \"a small cat on the left\")")
    if prompts and not text:
        raise click.UsageError(f"{source} is a class-conditional model: give --classes, not --prompt")
    if text and pipe.tokenizer is None:
        raise click.ClickException(f"{source} carries no tokenizer, so text prompts cannot be read: rebuild the "
                                   "bundle from a base checkpoint with BASE.tokenizer/ beside it")
    sampler = pipe.sampler(steps=steps, guidance=guidance, tau=tau)
    if budget is not None and budget > sampler.steps:
        raise click.BadParameter(f"budget B={budget} must be between 1 and the number of steps N={sampler.steps}",
                                 param_hint="--budget")
    if text:
        chosen = list(prompts)
        num = num or len(chosen)
        cond = pipe.conditions(prompts=chosen)  # read (unknown words, length) before any work
        names = [slug(chosen[i % len(chosen)]) for i in range(num)]
    else:
        chosen = list(range(pipe.num_classes)) if classes is None else [c for c in classes.split(",") if c.strip()]
        if not chosen:
            raise click.BadParameter("no class given", param_hint="--classes")
        num = num or 16
        cond = pipe.conditions(classes=chosen)  # checked before any work
        class_names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
        names = [slug(class_names[int(cond[i % len(chosen)])]) for i in range(num)]
    cond = cond[torch.arange(num) % len(chosen)]
    strategy = pipe.resolve_strategy(strategy, sampler.steps, budget)
    batches = pipe.iter_tokens(cond=cond, sampler=sampler, seed=seed, batch_size=batch_size, strategy=strategy,
                               budget=budget, progress=lambda i, n: bar(i, n))  # checked here, before any write

    folder.open()
    bar = Bar(f"sampling ({pipe.backend.name}, {pipe.device}, {strategy})")
    t0 = time.perf_counter()
    shown, done = [], 0
    for tokens in batches:  # written batch by batch: memory does not grow with --num
        images = pipe.decode(tokens, batch_size=batch_size)
        for img in images:
            folder.save(img, f"{done:04d}_{names[done]}.png", scale=4)
            if len(shown) < GRID_MAX:
                shown.append(img)
            done += 1
    elapsed = time.perf_counter() - t0
    bar.close()
    ncol = min(len(chosen), num, 10) if len(chosen) > 1 else None
    folder.save(make_grid(torch.stack(shown), ncol=ncol), "grid.png", scale=4)
    folder.close()
    more = f" (the grid shows the first {GRID_MAX})" if num > GRID_MAX else ""
    click.echo(f"wrote {num} images and grid.png to {folder.path}{more}: {num / elapsed:.1f} images/s "
               f"({pipe.backend.name} backend, N={sampler.steps}, B={budget or sampler.steps})")


if __name__ == "__main__":
    main()
