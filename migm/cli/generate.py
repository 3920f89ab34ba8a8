"""`migm-generate`: batch generation, classes or prompts x seeds, in one process or on Ray."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import click

from .. import assets
from ..choices import RUNTIME_BACKENDS
from ..engines.refit import fit_for_backend
from ..fileio import clip
from ..runtime.cache import default_bundle
from ..sampling.strategies import STRATEGIES
from ..serving.batch import MAX_BATCH, MAX_SEEDS, MAX_SHARD, job, run_local, run_on_ray
from .common import Command, debug_option, one_line_errors


def _say(message: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {message}")


def seed_list(value: str) -> list[int]:
    """"0-99" or "0,5,7" or both ("0-3,10") -> seeds, in the order given."""
    ranges = []
    try:
        for part in (p.strip() for p in value.split(",") if p.strip()):
            lo, dash, hi = part.partition("-")
            ranges.append((int(lo), int(hi) if dash else int(lo)))
    except ValueError:
        raise click.BadParameter(f"expected seeds like 0-99 or 0,5,7, got {clip(value, 60)!r}",
                                 param_hint="--seeds") from None
    if not ranges or any(lo < 0 or hi < lo or hi >= 2**63 for lo, hi in ranges):
        raise click.BadParameter("give seeds in 0..2**63-1, ranges low-high, e.g. 0-99", param_hint="--seeds")
    count = sum(hi - lo + 1 for lo, hi in ranges)  # counted before any list is built
    if count > MAX_SEEDS:
        raise click.BadParameter(f"{count} seeds is over {MAX_SEEDS}: split the job", param_hint="--seeds")
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


@click.command(cls=Command)
@click.option("--classes", default=None, help="Comma-separated class names or indices (class-conditional model).")
@click.option("--prompt", "prompts", multiple=True, help="A text prompt (repeat for several; text-to-image model).")
@click.option("--seeds", default="0", show_default=True, help="Seeds per condition: 0-99, or 0,5,7.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: images/, shards/, manifest.jsonl, job.json. A rerun resumes there.")
@click.option("--engine", default=None, type=click.Path(),
              help="A NAME.plan bundle. Default: the shipped model's bundle (built on first use).")
@click.option("--model", type=click.Choice(list(assets.MODELS)), default=None,
              help="A shipped model's checkpoints on the torch backend instead of a bundle.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(RUNTIME_BACKENDS))
@click.option("--steps", type=int, default=None, help="Sampling steps N (default: the model's).")
@click.option("--budget", type=int, default=None, help="B: steps that run the base model (default: all N).")
@click.option("--strategy", default=None, type=click.Choice(STRATEGIES),
              help="How the other steps get their features (default: shortcut when B < N).")
@click.option("--guidance", type=float, default=None, help="CFG weight (default: the model's).")
@click.option("--shard-size", default=16, show_default=True, type=click.IntRange(1, MAX_SHARD),
              help="Rows per shard: the unit of work, of resuming and of a worker's output.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Rows per generate call within a shard.")
@click.option("--ray", "use_ray", is_flag=True, help="Run the shards on Ray: one pipeline per worker.")
@click.option("--ray-address", default=None,
              help="A running Ray cluster (host:port, or `auto`). Default: $RAY_ADDRESS, else a local one.")
@click.option("--workers", type=int, default=None,
              help="Ray workers. Default: one per GPU in the cluster, else one per --cpus-per-worker CPUs.")
@click.option("--cpus-per-worker", default=1.0, show_default=True,
              help="CPUs each Ray worker reserves (and its threads, on a CPU).")
@debug_option
@one_line_errors
def main(classes, prompts, seeds, out, engine, model, backend, steps, budget, strategy, guidance, shard_size,
         batch_size, use_ray, ray_address, workers, cpus_per_worker):
    """Generate every condition with every seed into OUT, in deterministic shards.

    `migm-generate --classes cat,dog --seeds 0-99 --out run1` writes 200 images and
    run1/manifest.jsonl. Shard k always holds the same rows, and each image depends only on its
    condition, seed and settings, so `--ray` (any number of workers) writes the same files as a
    single-process run. A rerun with the same options skips finished shards.
    """
    if bool(classes) == bool(prompts):
        raise click.UsageError("give --classes (class-conditional model) or --prompt (text-to-image), one of them")
    if engine and model:
        raise click.UsageError("give --engine or --model, not both")
    if model and backend not in ("auto", "torch"):
        raise click.BadParameter("checkpoints run on the torch backend only", param_hint="--backend")
    if workers is not None and workers < 1:
        raise click.BadParameter("must be >= 1", param_hint="--workers")
    if cpus_per_worker <= 0:
        raise click.BadParameter("must be > 0", param_hint="--cpus-per-worker")
    if (ray_address or workers) and not use_ray:
        raise click.UsageError("--ray-address and --workers go with --ray")
    if use_ray and importlib.util.find_spec("ray") is None:
        raise click.ClickException("--ray needs Ray: pip install 'migm[ray]' (docs/cli.md)")
    conditions = [c.strip() for c in classes.split(",") if c.strip()] if classes else list(prompts)
    source = model or engine or default_bundle(backend=backend)
    if not model:  # once here, not in every worker: TensorRT engines made elsewhere are rebuilt for this machine
        fit_for_backend(source, backend, say=_say)
    j = job(conditions, seed_list(seeds), source, backend=backend, steps=steps, budget=budget, strategy=strategy,
            guidance=guidance, shard_size=shard_size, batch_size=batch_size)
    out_dir = Path(out)
    t0 = time.perf_counter()
    if use_ray:
        summary = run_on_ray(j, out_dir, _say, address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker)
    else:
        summary = run_local(j, out_dir, _say)
    _say(f"{summary['images']} images and manifest.jsonl in {out_dir} ({time.perf_counter() - t0:.1f} s in all)")
    if summary["rejected"]:
        raise click.ClickException(f"{summary['rejected']} of {j.num_rows} rows were rejected, the first: "
                                   f"{summary['first_error']} (each has its error in manifest.jsonl)")


if __name__ == "__main__":
    main()
