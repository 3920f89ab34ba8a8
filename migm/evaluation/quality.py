"""Quality of hybrid sampling: FD, class accuracy, feature error and cost per strategy.

One row per (seed, N, strategy, B): `num` images (labels cycling through the classes)
sampled with that strategy, scored against the validation split with the evaluation
classifier. The feature error is measured on a separate, smaller pass: on every predicted
step the base model is also run on the same tokens, and ||f_hat - f|| / ||f|| is taken
over the still-masked positions (the ones whose logits the sampler uses).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..fileio import atomic_path
from ..runtime.pipeline import Pipeline
from ..sampling.loop import HybridStats
from .metrics import Evaluator


@dataclass
class Sweep:
    steps: list[int]
    budgets: list[int]
    strategies: list[str]  # "shortcut" = the main pipeline's; "shortcut=NAME" = the pipeline `pipes[NAME]`
    seeds: list[int]
    num: int = 1000
    err_num: int = 100
    batch_size: int = 100
    pipes: dict = field(default_factory=dict)  # NAME -> Pipeline with another shortcut (same base)
    references: dict = field(default_factory=dict)  # (N, seed, num) -> the full N-step images (paired metrics)


def row_key(row: dict) -> tuple:
    return (row["strategy"], row.get("shortcut"), row["steps"], row["budget"], row["seed"], row["num"])


def planned_rows(sweep: Sweep) -> list[dict]:
    """The rows a sweep produces, seeds outermost (a sweep cut short has whole seeds)."""
    rows = []
    for seed in sweep.seeds:
        for n in sweep.steps:
            for strategy in sweep.strategies:
                name, _, variant = strategy.partition("=")
                for b in ([n] if name == "vanilla" else [b for b in sweep.budgets if b <= n]):
                    if name != "vanilla" and b == n:
                        continue  # B = N is vanilla sampling
                    rows.append({"strategy": name, "shortcut": variant or ("shipped" if name == "shortcut" else None),
                                 "steps": n, "budget": b, "seed": seed, "num": sweep.num})
    return rows


class _FeatureError:
    """Probe: the base model's true features on the same tokens, compared with the predicted ones."""

    def __init__(self, pipe: Pipeline):
        self.pipe, self.errors = pipe, []

    def __call__(self, step, feats, seq, labs):
        true, _ = self.pipe.backend.base(seq, labs)
        rows = self.pipe.family.image_rows(self.pipe.spec).to(feats.device)
        feats, true = feats[:, rows], true[:, rows]
        masked = (seq == self.pipe.spec.mask_id)[..., None]
        num = ((feats.float() - true) ** 2 * masked).sum((1, 2)).sqrt()
        den = ((true ** 2) * masked).sum((1, 2)).sqrt().clamp(min=1e-12)
        self.errors.extend((num / den).tolist())


def reference(pipe: Pipeline, sweep: Sweep, steps: int, seed: int, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, images) of vanilla N-step sampling for a seed: what every strategy at that N is paired
    with. The loop draws the same random numbers at the same steps whatever the strategy (every step
    samples from [b, L, K] Gumbel noise and adds [b, L] confidence noise), so a hybrid sample and its
    reference share all their noise; `fewer` runs other steps and shares none."""
    key = (steps, seed, num)
    if key not in sweep.references:
        labels = [i % pipe.num_classes for i in range(num)]
        tokens = pipe.generate_tokens(labels, steps=steps, seed=seed, batch_size=sweep.batch_size)
        sweep.references[key] = (tokens, pipe.decode(tokens))
    return sweep.references[key]


def run_row(pipe: Pipeline, evaluate: Evaluator, row: dict, sweep: Sweep,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample and score one row in place (fills fd, class_acc, feature_rel_err, base_calls, cost, seconds,
    and the paired metrics against vanilla N: token_agreement, pixel_mae, feature_dist)."""
    if row["strategy"] == "shortcut" and row["shortcut"] != "shipped":
        pipe = sweep.pipes[row["shortcut"]]
    labels = [i % pipe.num_classes for i in range(row["num"])]
    opts = dict(steps=row["steps"], strategy=row["strategy"], budget=row["budget"], seed=row["seed"],
                batch_size=sweep.batch_size)
    stats = HybridStats()
    t0 = time.perf_counter()
    tokens = pipe.generate_tokens(labels, stats=stats, progress=progress, **opts)
    seconds = time.perf_counter() - t0
    chunks = -(-row["num"] // sweep.batch_size)
    images = pipe.decode(tokens)
    m = evaluate(images, torch.tensor(labels))
    if row["strategy"] == "vanilla":
        sweep.references[(row["steps"], row["seed"], row["num"])] = (tokens, images)
    ref_tokens, ref_images = reference(pipe, sweep, row["steps"], row["seed"], row["num"])
    paired = {"token_agreement": float((tokens == ref_tokens).float().mean()),
              **evaluate.paired(images, ref_images), "noise_shared": row["strategy"] != "fewer"}
    err = None
    if sweep.err_num and stats.predicted_steps:
        probe = _FeatureError(pipe)
        pipe.generate_tokens(labels[: sweep.err_num], probe=probe, **{**opts, "batch_size": sweep.err_num})
        err = statistics.mean(probe.errors)
    row.update(fd=m["fd"], class_acc=m["class_acc"], **paired, feature_rel_err=err,
               base_calls=stats.base_calls / chunks,
               cost=stats.cost(pipe.spec.num_tokens) / chunks, seconds=seconds,
               ms_per_image=1000 * seconds / row["num"], full_steps=stats.full_steps)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds for each (strategy, shortcut, N, B)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r.get("shortcut"), r["steps"], r["budget"]), []).append(r)
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    out = []
    for (strategy, sc, n, b), rs in groups.items():
        fds, accs = [r["fd"] for r in rs], [r["class_acc"] for r in rs]
        errs = [r["feature_rel_err"] for r in rs if r.get("feature_rel_err") is not None]
        paired = {k: statistics.mean(r[k] for r in rs) if all(k in r for r in rs) else None
                  for k in ("token_agreement", "pixel_mae", "feature_dist")}
        out.append({"strategy": strategy, "shortcut": sc, "steps": n, "budget": b, "seeds": len(rs),
                    "fd_mean": statistics.mean(fds), "fd_sd": sd(fds), "class_acc_mean": statistics.mean(accs),
                    "class_acc_sd": sd(accs), "feature_rel_err": statistics.mean(errs) if errs else None, **paired,
                    "cost": rs[0]["cost"], "ms_per_image": statistics.mean(r["ms_per_image"] for r in rs)})
    return out


def label(s: dict) -> str:
    if s["strategy"] == "shortcut" and s.get("shortcut") not in (None, "shipped"):
        return f"shortcut ({s['shortcut']})"
    return s["strategy"]


def pareto_plot(summary: list[dict], path: str | Path, title: str = "") -> None:
    """FD against base-model cost and against measured time; the Pareto front drawn through both."""
    import matplotlib  # heavy, and only plots need it

    matplotlib.use("Agg")  # no display: draw to a file
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import
    import matplotlib.ticker  # its formatters, for the log axes

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    # one line per strategy (and per N where a sweep has several: B of 16 and B of 32 are other curves)
    multi_n = len({s["steps"] for s in summary if s["strategy"] not in ("vanilla", "fewer")}) > 1
    line = lambda s: label(s) + (f" N={s['steps']}" if multi_n and s["strategy"] not in ("vanilla", "fewer") else "")
    names = list(dict.fromkeys(line(s) for s in summary))
    markers = "os^vDP*Xhp<>"
    for ax, key, xlabel in ((axes[0], "cost", "base-model cost per image (full-call equivalents)"),
                            (axes[1], "ms_per_image", "sampling time per image (ms, this machine)")):
        for j, name in enumerate(names):
            pts = sorted(((s[key], s["fd_mean"], s["fd_sd"], s) for s in summary if line(s) == name),
                         key=lambda p: p[:2])
            xs, ys, es = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker=markers[j % len(markers)], capsize=3, linestyle="-", label=name)
            for x, y, _, s in pts:
                tag = f"N={s['steps']}" if s["strategy"] == "vanilla" else f"B={s['budget']}"
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front, best = [], float("inf")
        for s in sorted(summary, key=lambda s: (s[key], s["fd_mean"])):
            if s["fd_mean"] < best:
                best = s["fd_mean"]
                front.append((s[key], s["fd_mean"]))
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", alpha=0.5,
                linestyle="--", label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FD (lower is better)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "quality vs cost (mean ± sd over seeds)")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
