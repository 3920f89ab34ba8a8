"""`migm-bench`: measure what hybrid sampling buys (quality vs cost)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import one_line_errors


def _ints(value: str, name: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None
    if not out:
        raise click.BadParameter("give at least one value", param_hint=name)
    return out


@click.group()
def main():
    """Benchmarks of the tiny-animals pipeline (torch backend, this machine)."""


@main.command()
@click.option("--steps", default="32", show_default=True, help="Sampling steps N (comma-separated to sweep).")
@click.option("--budget", default="6,8,12", show_default=True, help="Base-model steps B of N (comma-separated).")
@click.option("--strategies", default="vanilla,fewer,reuse,extrapolate,mlcache,shortcut", show_default=True,
              help="Comma-separated: vanilla, fewer (vanilla with N=B), reuse, extrapolate, mlcache, shortcut; "
                   "`shortcut=PATH` adds another shortcut checkpoint (e.g. an ablation), named by its file stem.")
@click.option("--num", default=1000, show_default=True, help="Images per row.")
@click.option("--seed", "seeds", default="0", show_default=True, help="Seed(s), comma-separated; rows per seed.")
@click.option("--err-num", default=100, show_default=True,
              help="Images on which the feature error is measured (an extra pass with the base on every step; 0 = off).")
@click.option("--batch-size", default=100, show_default=True)
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
    from tqdm import tqdm

    from .. import assets
    from ..models.checkpoint import load_checkpoint
    from ..runtime.pipeline import Pipeline, load_shortcut
    from ..sampling.loop import STRATEGIES
    from ..training.data import load_animals
    from ..training.metrics import Evaluator
    from ..training.quality import Sweep, label, pareto_plot, planned_rows, row_key, run_row, summarize

    if num < 2:
        raise click.BadParameter("FD needs at least 2 images", param_hint="--num")
    if batch_size < 1 or err_num < 0:
        raise click.BadParameter("must be positive", param_hint="--batch-size/--err-num")
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    for s in names:
        if s.partition("=")[0] not in STRATEGIES:
            raise click.BadParameter(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}",
                                     param_hint="--strategies")
    n_list, b_list = _ints(steps, "--steps"), _ints(budget, "--budget")
    for b in b_list:
        if b > max(n_list):
            raise click.BadParameter(f"budget B={b} exceeds every N in --steps", param_hint="--budget")
    pipe = Pipeline.from_checkpoints(base_path, vq_path, shortcut_path)
    extra = {}
    for s in names:
        if s.startswith("shortcut="):
            path = s.partition("=")[2]
            extra[Path(path).stem] = load_shortcut(path, base_path or assets.BASE)
    names = [f"shortcut={Path(s.partition('=')[2]).stem}" if s.startswith("shortcut=") else s for s in names]
    if "shortcut" in names and pipe.shortcut is None:
        raise click.ClickException("strategy shortcut needs a shortcut checkpoint: pass --shortcut PATH")
    sweep = Sweep(steps=n_list, budgets=b_list, strategies=names, seeds=_ints(seeds, "--seed"), num=num,
                  err_num=min(err_num, num), batch_size=batch_size, shortcuts=extra)

    out = Path(json_path)
    rows = []
    if resume and out.exists():
        rows = json.loads(out.read_text())
    done = {row_key(r) for r in rows}
    todo = [r for r in planned_rows(sweep) if row_key(r) not in done]
    classifier = load_checkpoint(classifier_path or assets.CLASSIFIER)
    evaluate = Evaluator(classifier, load_animals("val").images)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(plot_path) if plot_path else out.with_suffix(".png")

    def write():
        from ..fileio import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")

    click.echo(f"{len(todo)} rows to run ({len(done)} kept from {out})" if resume else f"{len(todo)} rows to run")
    for row in todo:
        tag = f"{label(row)} N={row['steps']} B={row['budget']} seed={row['seed']}"
        bar = tqdm(total=num * (row["steps"] if row["strategy"] != "fewer" else row["budget"]), desc=tag, leave=False)
        run_row(pipe, evaluate, row, sweep, progress=lambda i, n: bar.update(i - bar.n))
        bar.close()
        rows.append(row)
        write()
        err = f"{row['feature_rel_err']:.3f}" if row["feature_rel_err"] is not None else "-"
        click.echo(f"{tag}: FD {row['fd']:.2f}  acc {row['class_acc']:.3f}  feat err {err}  "
                   f"cost {row['cost']:.2f}  {row['ms_per_image']:.1f} ms/img")

    summary = summarize(rows)
    click.echo("\n| strategy | N | B | FD | class acc | feature rel err | base cost | ms/img |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for s in sorted(summary, key=lambda s: (s["steps"], s["budget"], label(s))):
        err = f"{s['feature_rel_err']:.3f}" if s["feature_rel_err"] is not None else "-"
        click.echo(f"| {label(s)} | {s['steps']} | {s['budget']} | {s['fd_mean']:.2f} ± {s['fd_sd']:.2f} | "
                   f"{s['class_acc_mean']:.3f} | {err} | {s['cost']:.2f} | {s['ms_per_image']:.1f} |")
    used = ",".join(str(x) for x in sorted({r["seed"] for r in rows}))
    pareto_plot(summary, plot, title=f"tiny-animals, {num} images per point, seeds {used} (mean ± sd)")
    click.echo(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
