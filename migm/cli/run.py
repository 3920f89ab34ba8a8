"""`migm-run`: generate images from a bundle (or the shipped model, or checkpoints)."""

from __future__ import annotations

import math
import time

import click

from .. import assets
from ..choices import CHECKPOINT_BACKENDS, RUNTIME_BACKENDS, TORCH_PRECISIONS
from ..sampling.strategies import STRATEGIES
from .common import Bar, Command, debug_option, one_line_errors

MAX_IMAGES = 100_000  # a sane bound: more is a typo, or a job for migm-generate
GRID_MAX = 100  # the grid shows at most this many images


@click.command(cls=Command)
@click.option("--engine", "engine", default=None, type=click.Path(),
              help="A NAME.plan bundle from `migm-export build`. Default: the shipped model's bundle, "
                   "built on first use into ~/.cache/migm (or $MIGM_CACHE).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(RUNTIME_BACKENDS),
              help="auto: trt for a TensorRT bundle, openvino for an OpenVINO one, else torch with CUDA graphs on a "
                   "GPU; on a CPU ONNX Runtime for fp32/int8 bundles, torch (bf16) for fp16/best ones.")
@click.option("--classes", default=None,
              help="Comma-separated class names or indices, cycled to --num images (default: every class in turn).")
@click.option("--prompt", "prompts", multiple=True,
              help="Text prompt for a text-to-image model (repeat for several), cycled to --num images, "
                   "e.g. --prompt \"a small cat on the left\".")
@click.option("--model", type=click.Choice(list(assets.MODELS)), default=None,
              help="A shipped model on the torch backend, instead of a bundle (tiny-scenes: text-to-image).")
@click.option("--num", default=None, type=click.IntRange(1, MAX_IMAGES),
              help=f"Number of images (at most {MAX_IMAGES:,}) [16; with prompts: one per prompt].")
@click.option("--steps", type=click.IntRange(1, 4096), default=None,
              help="Sampling steps N (default: a shipped model's default run, N=32; else the model's).")
@click.option("--budget", type=click.IntRange(1, 4096), default=None,
              help="B: steps that run the base model (of N); the shortcut predicts the others. Default: the "
                   "shipped models' default run (shortcut, N=32, B=6; docs/cli.md says why); else N. "
                   "--budget N (or --strategy vanilla) runs the full sampler.")
@click.option("--strategy", default=None, type=click.Choice(STRATEGIES),
              help="How steps without the base model get their features. Default: shortcut when B < N.")
@click.option("--guidance", "--cfg", "guidance", type=float, default=None,
              help="Classifier-free guidance weight w (default: the model's; --cfg is the old name).")
@click.option("--tau", type=float, default=None,
              help="Gumbel temperature of the confidence noise (default: the model's).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--out", default="migm-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: each run writes a new numbered subfolder of it (run-0001, run-0002, ...) "
                   "with grid.png plus one PNG per image; earlier runs are kept.")
@click.option("--pretrained", default=None, type=click.Path(file_okay=False),
              help="A saved pipeline directory (save_pretrained / `migm-export convert`), on the torch backend.")
@click.option("--precision", type=click.Choice(TORCH_PRECISIONS), default=None,
              help="Checkpoints (--model, --pretrained, --base): fp32 (the default) runs upstream's arithmetic, so "
                   "tokens equal the reference's bit for bit; bf16 is faster where the hardware has bf16 units and "
                   "samples other tokens. A bundle runs at the precision it was built with.")
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
         pretrained, precision, base_path, vq_path, shortcut_path, verify):
    """Generate images for classes (tiny-animals) or text prompts (tiny-scenes).

    `migm-run --num 8 --steps 16 --budget 6` runs the base model on 6 of 16 steps and the
    learned shortcut on the others; `--engine NAME.plan --backend ort` picks a bundle and
    backend. `migm-run --engine scenes.plan --prompt "a small cat on the left"` runs a
    text-to-image bundle. Checkpoint options (--model or --base/--vq/--shortcut) run the
    torch backend on them.
    """
    import torch  # here, not at the top: `migm-run --help` starts without torch and the runtime

    from ..runtime import defaults  # (as torch)
    from ..runtime.images import ImageFolder, labelled_grid, slug  # (as torch)
    from ..runtime.pipeline import Pipeline  # (as torch)
    from ..sampling.loop import HybridStats  # (as torch)

    if prompts and classes:
        raise click.UsageError("give --classes (class-conditional model) or --prompt (text-to-image), not both")
    folder = ImageFolder(out)  # refused now, before any work, if it is a file; the run's subfolder comes later

    checkpoints = base_path or vq_path or shortcut_path or model or pretrained
    if checkpoints and engine:
        raise click.UsageError("give either --engine or checkpoints (--model, --pretrained, --base/--vq/--shortcut), "
                               "not both")
    if checkpoints:
        if backend not in CHECKPOINT_BACKENDS:
            raise click.BadParameter("checkpoints run on the torch backend only; build a bundle for "
                                     f"{backend} with `migm-export build`", param_hint="--backend")
        why = "the default: upstream's arithmetic, identical tokens" if precision is None else "asked for"
        precision = precision or "fp32"
        click.echo(f"precision {precision} ({why}; --precision fp32|bf16)")
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        pipe = Pipeline.from_pretrained(pretrained, torch_dtype=dtype) if pretrained else \
            Pipeline.from_checkpoints(base_path, vq_path, shortcut_path, model=model or "tiny-animals",
                                      precision=precision)
        shipped = defaults.default_run(pretrained) if pretrained in assets.MODELS else \
            None if pretrained else _checkpoints_run(model or "tiny-animals", base_path, shortcut_path)
    else:
        if precision:
            raise click.UsageError("--precision is for checkpoints; a bundle runs at the precision it was built "
                                   "with (migm-export build --precision)")
        if engine is None:
            from ..runtime.cache import default_bundle  # builds the shipped model's bundle on first use

        path = engine or default_bundle(backend=backend)
        from ..engines.refit import fit_for_backend  # TensorRT engines made elsewhere: rebuilt here, once

        fit_for_backend(path, backend, say=click.echo)
        pipe = Pipeline.from_bundle(path, backend=backend, verify=verify)
        shipped = defaults.for_bundle(path)
    # a shipped model starts from its default run (the shortcut at the budget the quality tables support)
    steps, budget, strategy = defaults.fill(shipped, steps, budget, strategy)
    # what the messages call the model: the default bundle is the shipped model, not its cache path
    source = engine or pretrained or base_path or model or "the shipped tiny-animals model"
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
    labels = [chosen[i % len(chosen)] if text else class_names[int(cond[i])] for i in range(num)]
    strategy = pipe.resolve_strategy(strategy, sampler.steps, budget)
    stats = HybridStats()
    batches = pipe.iter_tokens(cond=cond, sampler=sampler, seed=seed, batch_size=batch_size, strategy=strategy,
                               budget=budget, stats=stats,
                               progress=lambda i, n: bar(i, n))  # checked here, before any write

    folder.open()
    # the count is images x steps: every image advances one step per tick
    bar = Bar(f"sampling ({pipe.backend.name}, {pipe.device}, {strategy})", unit=" image-steps")
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
    folder.save(labelled_grid(torch.stack(shown), labels[:len(shown)], ncol=ncol), "grid.png")
    folder.close()
    more = f" (the grid shows the first {GRID_MAX})" if num > GRID_MAX else ""
    account = _against_full(pipe, sampler, strategy, budget, stats, num, batch_size)
    images = "image" if num == 1 else "images"
    hint = getattr(pipe.backend, "inference_precision", None)  # OpenVINO: bf16 or f32 on this CPU
    label = f"{pipe.backend.name} backend" + (f", {hint} on this CPU" if hint else "")
    click.echo(f"wrote {num} {images} and grid.png to {folder.path}{more}: {num / elapsed:.1f} images/s "
               f"({label}, {account})")


def _checkpoints_run(model, base_path, shortcut_path):
    """The default run of a shipped model whose base and shortcut these checkpoints are."""
    from ..runtime import defaults  # (as torch)

    d = assets.model_dir(model)
    base = base_path or d / "base"
    shortcut = shortcut_path or (d / "shortcut" if base_path is None and assets.has_checkpoint(d / "shortcut")
                                 else None)
    return defaults.for_checkpoints(base, shortcut)


def _against_full(pipe, sampler, strategy, budget, stats, num, batch_size) -> str:
    """The closing line's account: strategy, N, B and the speedup against the full sampler (vanilla N)."""
    from ..runtime import defaults  # (as torch)

    n = sampler.steps
    if strategy == "vanilla" or ((budget or n) >= n and strategy != "fewer"):
        return f"{strategy}, N={n}, B={n}: the full sampler"
    chunks = math.ceil(num / batch_size)  # the loop's stats count per batch, i.e. per image
    cost, predicted = stats.cost(pipe.spec.num_tokens) / chunks, stats.predicted_steps / chunks
    c = None
    if strategy == "shortcut":  # c: one shortcut step over one base step, timed here (a few calls)
        from ..evaluation.speed import components  # the timing harness: only for this closing line

        c = components(pipe, min(num, batch_size), n, repeats=3, warmup=1)["c"]
    calls, time_x = defaults.speedups(n, cost, predicted, strategy, c)
    timed = f", {time_x:.1f}x faster by the cost model" + (f" (c={c:.2f} measured here)" if c is not None else "")
    return (f"{strategy}, N={n}, B={budget}: against the full sampler (vanilla N={n}) {calls:.1f}x fewer base calls"
            f"{timed if time_x is not None else ''}")


if __name__ == "__main__":
    main()
