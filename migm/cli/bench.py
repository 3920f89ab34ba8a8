"""`migm-bench`: measure what hybrid sampling buys: quality vs cost, and speed."""

from __future__ import annotations

import copy
import json
import platform
import tempfile
from pathlib import Path

import click
import torch
from tqdm import tqdm

from .. import assets
from ..choices import BUNDLE_BACKENDS, CPU_BACKENDS
from ..data.animals import load_animals
from ..engines.build import BuildSettings, build_bundle
from ..engines.refit import fit_for_backend
from ..errors import ConfigError
from ..evaluation.metrics import Evaluator
from ..evaluation.quality import Sweep, label, pareto_plot, planned_rows, row_key, run_row, summarize
from ..evaluation.speed import SpeedSettings, markdown, measure
from ..families.presets import PRESETS, random_models
from ..families.presets import preset as get_preset
from ..fileio import atomic_path, read_json
from ..models.checkpoint import BASE_KINDS, VQ_KINDS, load_checkpoint, load_shortcut, save_checkpoint
from ..runtime.cache import cache_dir, default_bundle
from ..runtime.pipeline import Pipeline
from ..sampling.strategies import STRATEGIES, check_strategy, get_strategy
from .common import Group, debug_option, int_list, one_line_errors

MAX_BATCH = 4096  # images per timed call: more is a typo, and would run out of memory before any number


@click.group(cls=Group)
@debug_option
def main():
    """Benchmarks: `quality` (FD vs base-model cost, tiny-animals) and `speed` (throughput on this machine)."""


@main.command()
@click.option("--steps", default="32", show_default=True, help="Sampling steps N (comma-separated to sweep).")
@click.option("--budget", default="6,8,12", show_default=True, help="Base-model steps B of N (comma-separated).")
@click.option("--strategies", default="vanilla,fewer,reuse,extrapolate,mlcache,shortcut", show_default=True,
              help="Comma-separated: vanilla, fewer (vanilla with N=B), reuse, extrapolate, mlcache, shortcut; "
                   "`shortcut=PATH` adds another shortcut checkpoint (e.g. an ablation), named by its file stem.")
@click.option("--num", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="Images per row.")
@click.option("--seed", "seeds", default="0", show_default=True, help="Seed(s), comma-separated; rows per seed.")
@click.option("--err-num", type=click.IntRange(0, 100_000), default=100, show_default=True,
              help="Images on which the feature error is measured (an extra pass with the base on every step; "
                   "0 = off).")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=100, show_default=True)
@click.option("--json", "json_path", default="benchmarks/results/quality.json", show_default=True,
              help="Rows are written here (a JSON list), rewritten after every row.")
@click.option("--plot", "plot_path", default=None, help="Pareto plot PNG (default: the JSON path with .png).")
@click.option("--resume", is_flag=True, help="Keep the rows already in --json and run only the missing ones.")
@click.option("--base", "base_path", default=None, help="Base checkpoint (default: shipped).")
@click.option("--vq", "vq_path", default=None, help="VQ-VAE checkpoint (default: shipped).")
@click.option("--shortcut", "shortcut_path", default=None, help="Shortcut checkpoint (default: shipped).")
@click.option("--classifier", "classifier_path", default=None, help="Evaluation classifier (default: shipped).")
@one_line_errors
def quality(steps, budget, strategies, num, seeds, err_num, batch_size, json_path, plot_path, resume, base_path,
            vq_path, shortcut_path, classifier_path):
    """FD, class accuracy, feature error, base-model calls and time for each strategy.

    Prints a table (mean ± sd over seeds), writes the rows as JSON and a
    quality-versus-cost Pareto plot.
    """
    if num < 2:
        raise click.BadParameter("FD needs at least 2 images", param_hint="--num")
    if batch_size < 1 or err_num < 0:
        raise click.BadParameter("must be positive", param_hint="--batch-size/--err-num")
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    for s in names:
        if s.partition("=")[0] not in STRATEGIES:
            raise click.BadParameter(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}",
                                     param_hint="--strategies")
    n_list, b_list = int_list(steps, "--steps"), int_list(budget, "--budget")
    for b in b_list:
        if b > max(n_list):
            raise click.BadParameter(f"budget B={b} exceeds every N in --steps", param_hint="--budget")
    pipe = Pipeline.from_checkpoints(base_path, vq_path, shortcut_path)
    # other shortcuts run on the same base and decoder, each in a pipeline of its own
    extra = {}
    for s in names:
        if s.startswith("shortcut="):
            path = s.partition("=")[2]
            sc = load_shortcut(path, base_path or assets.BASE, pipe.backend.base_model)
            vq = load_checkpoint(vq_path or assets.VQ, kinds=VQ_KINDS)
            extra[Path(path).stem] = Pipeline.from_models(pipe.backend.base_model, vq, sc)
    names = [f"shortcut={Path(s.partition('=')[2]).stem}" if s.startswith("shortcut=") else s for s in names]
    for s in names:  # (a shortcut=NAME row runs on a pipeline of its own, with that shortcut)
        if "=" not in s:
            pipe.check_strategy(s)
    sweep = Sweep(steps=n_list, budgets=b_list, strategies=names, seeds=int_list(seeds, "--seed"), num=num,
                  err_num=min(err_num, num), batch_size=batch_size, pipes=extra)

    out = Path(json_path)
    rows = []
    if resume and out.exists():
        rows = _read_rows(out, ("strategy", "steps", "budget", "seed", "num"), "a quality sweep's rows")
    done = {row_key(r) for r in rows}
    todo = [r for r in planned_rows(sweep) if row_key(r) not in done]
    classifier = load_checkpoint(classifier_path or assets.CLASSIFIER)
    evaluate = Evaluator(classifier, load_animals("val").images)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(plot_path) if plot_path else out.with_suffix(".png")

    def write():
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")

    click.echo(f"{len(todo)} rows to run ({len(done)} kept from {out})" if resume else f"{len(todo)} rows to run")
    for row in todo:
        tag = f"{label(row)} N={row['steps']} B={row['budget']} seed={row['seed']}"
        steps_run, _ = get_strategy(row["strategy"]).steps_and_budget(row["steps"], row["budget"])
        bar = tqdm(total=num * steps_run, desc=tag, leave=False, unit=" image-steps")
        run_row(pipe, evaluate, row, sweep, progress=lambda i, n: bar.update(i - bar.n))
        bar.close()
        rows.append(row)
        write()
        err = f"{row['feature_rel_err']:.3f}" if row["feature_rel_err"] is not None else "-"
        click.echo(f"{tag}: FD {row['fd']:.2f}  acc {row['class_acc']:.3f}  feat err {err}  "
                   f"paired: tokens {row['token_agreement']:.3f} pixels {row['pixel_mae']:.4f} "
                   f"features {row['feature_dist']:.3f}  cost {row['cost']:.2f}  {row['ms_per_image']:.1f} ms/img")

    summary = summarize(rows)
    click.echo("\n| strategy | N | B | FD | class acc | paired: tokens | pixel MAE | feature dist | "
               "feature rel err | base cost | ms/img |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for s in sorted(summary, key=lambda s: (s["steps"], s["budget"], label(s))):
        click.echo(f"| {label(s)} | {s['steps']} | {s['budget']} | {s['fd_mean']:.2f} ± {s['fd_sd']:.2f} | "
                   f"{s['class_acc_mean']:.3f} | {fmt(s['token_agreement'], '.3f')} | {fmt(s['pixel_mae'], '.4f')} | "
                   f"{fmt(s['feature_dist'], '.3f')} | {fmt(s['feature_rel_err'], '.3f')} | {s['cost']:.2f} | "
                   f"{s['ms_per_image']:.1f} |")
    used = ",".join(str(x) for x in sorted({r["seed"] for r in rows}))
    pareto_plot(summary, plot, title=f"tiny-animals, {num} images per point, seeds {used} (mean ± sd)")
    click.echo(f"wrote {out} and {plot}")


@main.command()
@click.option("--preset", default="tiny-animals", show_default=True,
              type=click.Choice(list(PRESETS)),
              help="tiny-animals runs the shipped trained model; the others random weights of that size "
                   "(tiny-scenes and dimoo-8b: the llada text-to-image family, DiMOO sampler).")
@click.option("--depth", type=int, default=None,
              help="Override the preset's number of base blocks (e.g. a 2-layer dimoo-8b on a small GPU).")
@click.option("--backend", default="torch", show_default=True, type=click.Choice(("torch",) + BUNDLE_BACKENDS))
@click.option("--engine", default=None, type=click.Path(),
              help="Bundle for ort/trt (default: built into the cache for the preset).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available for torch/trt).")
@click.option("--batch", "batches", default="1,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--steps", type=click.IntRange(1, 4096), default=32, show_default=True, help="Sampling steps N.")
@click.option("--budget", "budgets", default="12", show_default=True, help="Base-model steps B (comma-separated).")
@click.option("--strategies", default="shortcut,reuse,extrapolate,fewer", show_default=True,
              help="Hybrid strategies timed at each B (vanilla N is always timed).")
@click.option("--repeats", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed runs per measurement (the median is kept).")
@click.option("--warmup", type=click.IntRange(0, 1000), default=1, show_default=True,
              help="Untimed runs first (they also capture CUDA graphs).")
@click.option("--no-plain", is_flag=True, help="Skip the plain-PyTorch baseline loop.")
@click.option("--graphs/--no-graphs", default=True, show_default=True, help="CUDA graphs on a GPU (torch, trt).")
@click.option("--json", "json_path", default="benchmarks/results/speed.json", show_default=True,
              help="Rows (a JSON list); a markdown table goes beside it (.md) and a speedup-vs-B plot (.png).")
@one_line_errors
def speed(preset, depth, backend, engine, device, batches, steps, budgets, strategies, repeats, warmup, no_plain,
          graphs, json_path):
    """Throughput of vanilla N vs hybrid (N, B) with the cost model and the plain-PyTorch baseline."""
    batch_list, budget_list = int_list(batches, "--batch"), int_list(budgets, "--budget")
    if any(not 1 <= b <= MAX_BATCH for b in batch_list):
        raise click.BadParameter(f"batch sizes must be in 1..{MAX_BATCH}", param_hint="--batch")
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    for s in names:
        if s not in STRATEGIES or not get_strategy(s).hybrid:
            raise click.BadParameter(f"unknown hybrid strategy {s!r}", param_hint="--strategies")
        check_strategy(s, get_preset(preset).fam.provides, f"{preset} models")  # before any model is built
    for b in budget_list:
        if not 1 <= b <= steps:
            raise click.BadParameter(f"budget B={b} must be between 1 and N={steps}", param_hint="--budget")
    device = device or ("cuda" if torch.cuda.is_available() and backend not in CPU_BACKENDS else "cpu")
    pipe, plain = _speed_pipeline(preset, backend, engine, device, depth)
    for s in names:  # and on this backend
        pipe.check_strategy(s)
    pipe.use_graphs = graphs
    dev_name = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    info = {"preset": preset if depth is None else f"{preset} (depth {depth})", "backend": backend,
            "device": dev_name}
    settings = SpeedSettings(batches=batch_list, steps=steps, budgets=budget_list, strategies=names,
                             plain=not no_plain, repeats=repeats, warmup=warmup)
    rows = measure(pipe, settings, info, say=click.echo, plain_models=None if no_plain else plain)
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    _speed_plot(rows, out.with_suffix(".png"))
    click.echo(table)
    click.echo(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


@main.command()
@click.argument("json_paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@one_line_errors
def plot(json_paths):
    """Redraw the speedup-vs-B plot (.png beside each file) from `migm-bench speed` JSON files."""
    for p in json_paths:
        rows = _read_rows(Path(p), ("batch", "strategy", "budget", "steps", "speedup", "ideal_speedup"),
                          "`migm-bench speed` rows")
        _speed_plot(rows, Path(p).with_suffix(".png"))
        click.echo(f"wrote {Path(p).with_suffix('.png')}")


def _speed_pipeline(preset, backend, engine, device, depth=None):
    """The pipeline to time, and the torch (base, shortcut) for the plain baseline."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if preset == "tiny-animals":
        base, vq = load_checkpoint(assets.BASE, kinds=BASE_KINDS), load_checkpoint(assets.VQ, kinds=VQ_KINDS)
        sc = load_shortcut(assets.SHORTCUT, assets.BASE, base)
    else:
        base, vq, sc = random_models(preset, device=dev, dtype=dtype, depth=depth)
    if backend == "torch":
        pipe = Pipeline.from_models(base, vq, sc, device=device)
        # the plain loop runs the same modules (bf16 on a GPU; on a CPU fp32 weights under autocast)
        return pipe, (pipe.backend.base_model, pipe.backend.shortcut_model)
    # the plain loop gets its own copies: the backend moves and casts its modules in place
    plain = (copy.deepcopy(base).to(dev, dtype), copy.deepcopy(sc).to(dev, dtype))
    if engine is None:
        if preset == "tiny-animals" and backend in CPU_BACKENDS:
            engine = default_bundle(backend=backend)
        else:
            # the depth is in the name: a bundle cached at one depth must not answer for another
            deep = "" if depth is None else f"-depth{depth}"
            engine = cache_dir() / "bundles" / f"{preset}{deep}-random-{backend}-fp32.plan"
            if not (engine / "manifest.json").exists():
                click.echo(f"building {engine} (random weights, once)")
                with tempfile.TemporaryDirectory() as tmp:
                    for name, m in (("base", base), ("vq", vq), ("shortcut", sc)):
                        save_checkpoint(m, f"{tmp}/{name}", meta=getattr(m, "meta", {}))
                    build_bundle(engine, BuildSettings(precision="fp32", backend=backend),
                                 f"{tmp}/base", f"{tmp}/vq", f"{tmp}/shortcut")
    if backend == "trt":  # TensorRT engines made elsewhere: rebuilt here, once
        fit_for_backend(engine, backend, say=click.echo)
    return Pipeline.from_bundle(engine, backend=backend, device=device), plain


def _read_rows(path: Path, keys: tuple[str, ...], what: str) -> list[dict]:
    """A results file from an earlier run (bounded read): a JSON list of objects with `keys`, or one Error line."""
    rows = read_json(path, "results file")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        raise ConfigError(f"{path} does not hold {what} (a JSON list of objects with {', '.join(keys)}); "
                          "give the file the command wrote, or run without it")
    return rows


def _speed_plot(rows, path):
    import matplotlib  # heavy, and only plots need it

    matplotlib.use("Agg")  # no display: draw to a file
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r["batch"] for r in rows}):
        # the shortcut against its cost-model ideal and the plain loop (the rest is in the table)
        for strategy in ("shortcut", "plain-shortcut"):
            pts = sorted((r["budget"], r["speedup"]) for r in rows if r["batch"] == batch and r["strategy"] == strategy
                         and r["budget"] < r["steps"])
            if pts:
                ref = "its own vanilla N" if strategy.startswith("plain") else "vanilla N"
                ax.plot(*zip(*pts), "o-", label=f"{strategy} (over {ref}), batch {batch}")
        ideal = sorted({(r["budget"], r["ideal_speedup"]) for r in rows if r["batch"] == batch
                        and r["strategy"] == "shortcut" and r["ideal_speedup"]})
        if ideal:
            ax.plot(*zip(*ideal), "k--", alpha=0.5, label=f"cost-model ideal, batch {batch}")
    r0 = rows[0]
    ax.set(xlabel="B (base-model steps)", ylabel=f"speedup over vanilla N={r0['steps']}",
           title=f"{r0['preset']}, {r0['backend']}, {r0['device']}"[:80])
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
