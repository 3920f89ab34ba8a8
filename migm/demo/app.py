"""The demo page (`migm-demo`): the full N-step image beside a faster strategy's image, same seed.

Tab "Compare": model, class or prompt, seed, N, B, strategy, guidance -> the vanilla N-step image
and the chosen strategy's, each with its wall time, base calls and speedup, and the share of
tokens they agree on; a batch mode makes a labelled grid. Tab "Cost and quality": the committed
benchmark tables (FD and token agreement against base calls, a line per strategy) and a speed-vs-B
curve measured on the machine serving the page.

The work is plain functions over a `Models` registry (tested without a browser); `build` wraps
them in a Gradio page. Bad input (unknown class, control tokens in a prompt, B > N, a batch too
large) comes back as a message on the page; the server keeps serving.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw, ImageFont

from .. import assets
from ..errors import ConfigError, MigmError
from ..evaluation.speed import components
from ..runtime import defaults
from ..runtime.images import labelled_grid, to_pil
from ..runtime.pipeline import Pipeline
from ..sampling.loop import HybridStats
from ..sampling.strategies import get_strategy
from . import results

STRATEGIES = ("shortcut", "reuse", "extrapolate", "fewer", "vanilla")
MAX_STEPS = 64  # the page's bound on N: each click runs vanilla N as well, on whatever serves the page
MAX_BATCH = 32  # images per batch-mode click
MAX_TEXT = 400  # characters in a class/prompt field
DISPLAY = 256  # the tiny images are enlarged (nearest neighbour) to about this many pixels
Progress = Callable[[float, str], None]


class Models:
    """The page's models by name, loaded on first use (one at a time) and kept: the shipped ones on the
    torch backend, plus a bundle (`engine`) and a saved pipeline (`pretrained`) when given."""

    def __init__(self, engine: str | Path | None = None, pretrained: str | Path | None = None,
                 backend: str = "auto", shipped: bool = True):
        self.sources: dict[str, tuple[str, object]] = {}
        if engine:
            self.sources[f"bundle: {Path(engine).name}"] = ("bundle", Path(engine))
        if pretrained:
            self.sources[f"saved: {Path(pretrained).name}"] = ("pretrained", Path(pretrained))
        if shipped or not self.sources:
            for name in assets.MODELS:
                self.sources[name] = ("shipped", name)
        self.backend = backend
        self._pipes: dict[str, tuple[Pipeline, defaults.DefaultRun | None]] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def get(self, name: str) -> tuple[Pipeline, defaults.DefaultRun | None]:
        if name not in self.sources:
            raise ConfigError(f"unknown model {name!r}; choose from {', '.join(self.sources)}")
        with self._lock:
            if name not in self._pipes:
                kind, src = self.sources[name]
                if kind == "bundle":
                    pipe, run = Pipeline.from_bundle(src, backend=self.backend), defaults.for_bundle(src)
                elif kind == "pretrained":
                    pipe, run = Pipeline.from_pretrained(src, backend=self.backend), None
                else:
                    # by name: the torch backend, on the GPU where there is one
                    pipe, run = Pipeline.from_pretrained(src), defaults.default_run(src)
                # one short run, so the first click's times are not the first calls' (allocation, kernels)
                pipe.generate_tokens(cond=pipe.example_conditions(1), steps=2, budget=1 if pipe.has_shortcut else None)
                self._pipes[name] = (pipe, run)
            return self._pipes[name]


def default_inputs(pipe: Pipeline, run: defaults.DefaultRun | None) -> dict:
    """What the page's fields start at for a model: its default run, a class or prompt it knows."""
    steps = run.steps if run else pipe.defaults.steps
    budget = run.budget if run else max(1, steps // 4)
    cond, hint = pipe.family.input_help(pipe.spec, pipe.class_names)
    return {"cond": cond, "hint": hint, "steps": min(steps, MAX_STEPS), "budget": min(budget, steps),
            "strategy": run.strategy if run else ("shortcut" if pipe.has_shortcut else "reuse"),
            "guidance": pipe.defaults.guidance}


def _int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not low <= int(value) <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {int(value)}")
    return int(value)


def _conditions(pipe: Pipeline, given: list[str]) -> torch.Tensor:
    for text in given:
        if len(text) > MAX_TEXT:
            raise ConfigError(f"a class or prompt is at most {MAX_TEXT} characters")
    return pipe.encode_conditions(given)  # class names or indices, or prompts


def _checked(pipe: Pipeline, steps, budget, strategy: str, guidance, seed) -> dict:
    steps = _int("N (steps)", steps, 1, MAX_STEPS)
    budget = _int("B (base calls)", budget, 1, MAX_STEPS)
    if budget > steps:
        raise ConfigError(f"B={budget} is more than N={steps}: the base model runs on B of the N steps")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    seed = _int("seed", seed, 0, 2**31 - 1)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ConfigError(f"guidance must be a number, got {guidance!r}")
    budget = budget if get_strategy(strategy).hybrid else None  # vanilla ignores B
    cfg, _, _ = pipe.resolve(steps=steps, guidance=float(guidance), strategy=strategy, budget=budget)
    return {"sampler": cfg, "budget": budget, "strategy": strategy, "seed": seed}


def _sample(pipe: Pipeline, cond: torch.Tensor, run: dict, progress: Progress | None, share: tuple[float, float],
            what: str) -> tuple[torch.Tensor, torch.Tensor, float, HybridStats]:
    """(tokens, images, seconds, stats) of one call; progress over the share (start, width) of the bar."""
    stats = HybridStats()
    start, width = share
    cb = (lambda i, n: progress(start + width * i / max(n, 1), what)) if progress else None
    t0 = time.perf_counter()
    tokens = pipe.generate_tokens(cond=cond, sampler=run["sampler"], seed=run["seed"], strategy=run["strategy"],
                                  budget=run["budget"], stats=stats, progress=cb, batch_size=MAX_BATCH)
    images = pipe.decode(tokens)
    return tokens, images, time.perf_counter() - t0, stats


def enlarge(image: torch.Tensor) -> Image.Image:
    """[C, H, W] -> a PIL image about DISPLAY pixels wide, enlarged by nearest neighbour."""
    return to_pil(image, max(1, DISPLAY // image.shape[-1])).convert("RGB")


@dataclass
class Comparison:
    vanilla: Image.Image
    fast: Image.Image
    vanilla_info: str
    fast_info: str
    agreement: float
    speedup: float  # measured wall time, vanilla over the strategy

    @property
    def summary(self) -> str:
        return f"token agreement {self.agreement:.3f} (share of the 256 tokens equal in both images)"


def compare(models: Models, model: str, cond: str, seed, steps, budget, strategy: str, guidance,
            progress: Progress | None = None) -> Comparison:
    pipe, _ = models.get(model)
    run = _checked(pipe, steps, budget, strategy, guidance, seed)
    text = (cond or "").strip()
    if not text:
        raise ConfigError("give a class or a prompt")
    c = _conditions(pipe, [text])
    full = dict(run, strategy="vanilla", budget=None)
    n = run["sampler"].steps
    tok_v, img_v, t_v, s_v = _sample(pipe, c, full, progress, (0.0, 0.5), f"vanilla N={n}")
    tok_f, img_f, t_f, s_f = _sample(pipe, c, run, progress, (0.5, 0.5), f"{strategy}")
    agreement = (tok_v == tok_f).float().mean().item()
    cost_f = s_f.cost(pipe.spec.num_tokens)
    label = f"{strategy} N={n}, B={run['budget'] or n}"
    return Comparison(
        vanilla=enlarge(img_v[0]), fast=enlarge(img_f[0]),
        vanilla_info=f"vanilla N={n}: {t_v:.2f} s, {s_v.cost(pipe.spec.num_tokens):g} base calls, speedup 1.00x",
        fast_info=f"{label}: {t_f:.2f} s, {cost_f:g} base calls, speedup {t_v / t_f:.2f}x "
                  f"({n / cost_f:.1f}x fewer base calls)",
        agreement=agreement, speedup=t_v / t_f)


def batch(models: Models, model: str, conds: str, per, seed, steps, budget, strategy: str, guidance,
          progress: Progress | None = None) -> tuple[Image.Image, str]:
    """A labelled grid: `per` images (seeds seed, seed+1, ...) of each class or prompt, with `strategy`."""
    pipe, _ = models.get(model)
    run = _checked(pipe, steps, budget, strategy, guidance, seed)
    given = pipe.family.split_conditions(conds)  # prompts one a line; classes by commas or lines
    per = _int("images per class or prompt", per, 1, MAX_BATCH)
    if not given:
        raise ConfigError("give classes (comma-separated) or prompts (one a line)")
    if len(given) * per > MAX_BATCH:
        raise ConfigError(f"{len(given)} x {per} = {len(given) * per} images is more than this page makes at once "
                          f"({MAX_BATCH}); use migm-run or migm-generate for large batches")
    cond = _conditions(pipe, given)
    rows = [i for i in range(len(given)) for _ in range(per)]
    seeds = [run["seed"] + k for _ in given for k in range(per)]
    stats = HybridStats()
    cb = (lambda i, n: progress(i / max(n, 1), strategy)) if progress else None
    t0 = time.perf_counter()
    tokens = pipe.generate_tokens(cond=cond[rows], sampler=run["sampler"], seed=seeds, strategy=strategy,
                                  budget=run["budget"], stats=stats, progress=cb, batch_size=MAX_BATCH)
    images = pipe.decode(tokens)
    seconds = time.perf_counter() - t0
    labels = [given[i] for i in rows]
    grid = labelled_grid(images, labels, ncol=min(per, 8) if len(given) > 1 else min(len(rows), 8),
                         scale=max(1, 128 // images.shape[-1]))
    n = run["sampler"].steps
    return grid, (f"{len(rows)} images, {strategy} N={n}, B={run['budget'] or n}: {seconds:.2f} s "
                  f"({seconds / len(rows) * 1000:.0f} ms an image)")


def speed_curve(models: Models, model: str, steps, images: int = 2, progress: Progress | None = None):
    """Measured here: the shortcut's speedup over vanilla N at several B (batch `images`), beside the
    cost model N / (B + (N - B) c) with c timed here. Returns (figure, text)."""
    pipe, run = models.get(model)
    n = _int("N (steps)", steps, 2, MAX_STEPS)
    if not pipe.has_shortcut:
        raise ConfigError("this model has no shortcut to time")
    cond = pipe.example_conditions(images)
    budgets = sorted({b for b in (1, 2, 4, 6, 8, 12, 16, 24) if b < n} | ({run.budget} if run and run.budget < n
                                                                           else set()))[:7]
    sampler = pipe.sampler(steps=n)
    c = components(pipe, images, n, repeats=3, warmup=1)["c"]
    times = {}
    for k, b in enumerate([n] + budgets):
        if progress:
            progress(k / (len(budgets) + 1), f"B={b}")
        spec = {"sampler": sampler, "seed": 0, "strategy": "vanilla" if b == n else "shortcut",
                "budget": None if b == n else b}
        _sample(pipe, cond, spec, None, (0, 0), "")  # once untimed: first calls pay for allocation
        times[b] = min(_sample(pipe, cond, spec, None, (0, 0), "")[2] for _ in range(2))
    measured = [times[n] / times[b] for b in budgets]
    ideal = [n / (b + (n - b) * c) for b in budgets]
    fig = _speed_figure(budgets, measured, ideal, n, pipe, images)
    rows = ", ".join(f"B={b}: {m:.2f}x (model {i:.2f}x)" for b, m, i in zip(budgets, measured, ideal))
    return fig, f"vanilla N={n}: {times[n] / images * 1000:.0f} ms an image; c = {c:.3f}; {rows}"


def _speed_figure(budgets, measured, ideal, n, pipe, images):
    import matplotlib  # optional heavy dependency: only the page's plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional heavy dependency (see above)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(budgets, measured, marker="o", label="measured here")
    ax.plot(budgets, ideal, linestyle="--", marker="x", label="cost model N / (B + (N - B) c)")
    ax.set_xlabel("B (base-model calls of N)")
    ax.set_ylabel(f"speedup over vanilla N={n}")
    ax.set_title(f"shortcut, {pipe.backend.name} on {pipe.device}, {images} images a call")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def placeholder(text: str = "press Generate") -> Image.Image:
    img = Image.new("RGB", (DISPLAY, DISPLAY), (236, 236, 236))
    ImageDraw.Draw(img).text((DISPLAY // 2, DISPLAY // 2), text, fill=(120, 120, 120),
                             font=ImageFont.load_default(), anchor="mm")
    return img


def _message(e: Exception) -> str:
    """The page's one line for an error: the message of one the user can fix; a bug is logged in full on
    the server and named on the page, never shown as a traceback."""
    if isinstance(e, MigmError):
        return f"Error: {e}"
    traceback.print_exc(file=sys.stderr)
    return f"Error: the server failed on this input ({type(e).__name__}); the log has the details"


def build(models: Models, results_dir: str | Path | None = None, max_queue: int = 8):
    """The Gradio Blocks app (not launched): one queue, `max_queue` waiting events at most, one run at a time."""
    import gradio as gr  # optional extra (migm[demo]): only the page needs it

    tables = results.load_tables(results_dir) if results_dir else []
    # the table with every strategy at the shipped default's N first, where there is one
    tables.sort(key=lambda t: not t.name.startswith("quality_lowbudget_n32"))
    by_name = {t.name: t for t in tables}
    first = models.names[0]
    start = default_inputs(*models.get(first))

    def guarded(work, n_out):
        """work()'s outputs plus an empty status line; on an error, unchanged outputs and the message."""
        try:
            return (*work(), "")
        except Exception as e:  # every error becomes a message on the page; the server keeps serving
            msg = _message(e)
            gr.Warning(msg)
            return (*([gr.skip()] * n_out), msg)

    def bar(progress):
        return lambda f, d: progress(f, desc=d)

    def on_compare(model, cond, seed, steps, budget, strategy, guidance, progress=gr.Progress()):
        def work():
            r = compare(models, model, cond, seed, steps, budget, strategy, guidance, bar(progress))
            return r.vanilla, r.fast, r.vanilla_info, r.fast_info, r.summary
        return guarded(work, 5)

    def on_batch(model, conds, per, seed, steps, budget, strategy, guidance, progress=gr.Progress()):
        return guarded(lambda: batch(models, model, conds, per, seed, steps, budget, strategy, guidance,
                                     bar(progress)), 2)

    def on_speed(model, steps, progress=gr.Progress()):
        return guarded(lambda: speed_curve(models, model, steps, progress=bar(progress)), 2)

    def on_model(model, progress=gr.Progress()):
        def work():
            d = default_inputs(*models.get(model))
            return (gr.update(value=d["cond"], info=d["hint"]), d["steps"], d["budget"], d["strategy"],
                    d["guidance"], "\n".join([d["cond"]] * 2))
        return guarded(work, 6)

    with gr.Blocks(title="migm: the MIGM-Shortcut, side by side") as demo:
        gr.Markdown("## migm: the full N-step sample beside a faster one, same seed\n"
                    "The base model runs on B of the N steps; the strategy fills the others "
                    "(the shortcut predicts the features). Shipped models start at their default run.")
        with gr.Tab("Compare"):
            with gr.Row():
                model = gr.Dropdown(models.names, value=first, label="model", elem_id="model")
                strategy = gr.Dropdown(list(STRATEGIES), value=start["strategy"], label="strategy",
                                       elem_id="strategy")
                guidance = gr.Number(start["guidance"], label="guidance w", elem_id="guidance")
            with gr.Row():
                cond = gr.Textbox(start["cond"], label="class or prompt", info=start["hint"], max_lines=1,
                                  max_length=MAX_TEXT, elem_id="cond")
                seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                steps = gr.Number(start["steps"], label=f"N steps (≤ {MAX_STEPS})", precision=0, elem_id="steps")
                budget = gr.Number(start["budget"], label="B base calls", precision=0, elem_id="budget")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Textbox("", label="status", interactive=False, elem_id="status")
            with gr.Row():
                with gr.Column():
                    img_v = gr.Image(placeholder("vanilla: press Generate"), label="vanilla N steps", type="pil",
                                     format="png", interactive=False, elem_id="vanilla-image")
                    info_v = gr.Textbox("", label="vanilla", interactive=False, elem_id="vanilla-info")
                with gr.Column():
                    img_f = gr.Image(placeholder("strategy: press Generate"), label="chosen strategy", type="pil",
                                     format="png", interactive=False, elem_id="fast-image")
                    info_f = gr.Textbox("", label="chosen strategy", interactive=False, elem_id="fast-info")
            agree = gr.Textbox("", label="agreement", interactive=False, elem_id="agreement")
            with gr.Accordion("Batch: a labelled grid", open=False):
                conds = gr.Textbox("\n".join([start["cond"]] * 2), lines=3, max_length=20 * MAX_TEXT,
                                   label="classes (comma-separated) or prompts (one a line)", elem_id="batch-conds")
                per = gr.Number(4, label=f"images of each (≤ {MAX_BATCH} in all)", precision=0, elem_id="batch-per")
                go_batch = gr.Button("Generate grid", elem_id="generate-batch")
                grid = gr.Image(None, label="grid (the chosen strategy)", type="pil", format="png",
                                interactive=False, elem_id="batch-grid")
                grid_info = gr.Textbox("", label="batch", interactive=False, elem_id="batch-info")
        with gr.Tab("Cost and quality"):
            gr.Markdown("Committed results (`benchmarks/results/`): FD and token agreement against base-model "
                        "calls, a line per strategy." + ("" if tables else " **No result files found.**"))
            table = gr.Dropdown(list(by_name), value=tables[0].name if tables else None, label="table",
                                elem_id="table")
            table_plot = gr.Plot(results.plot(tables[0]) if tables else None, label="cost against quality")
            gr.Markdown("Speed against B, measured now on the machine serving this page (shortcut vs vanilla N).")
            with gr.Row():
                speed_steps = gr.Number(start["steps"], label="N", precision=0, elem_id="speed-steps")
                go_speed = gr.Button("Measure", elem_id="measure")
            speed_plot = gr.Plot(None, label="speed against B")
            speed_info = gr.Textbox("", label="measured", interactive=False, elem_id="speed-info")

        inputs = [model, cond, seed, steps, budget, strategy, guidance]
        go.click(on_compare, inputs, [img_v, img_f, info_v, info_f, agree, status],
                 concurrency_id="sampling")
        go_batch.click(on_batch, [model, conds, per, seed, steps, budget, strategy, guidance],
                       [grid, grid_info, status], concurrency_id="sampling")
        go_speed.click(on_speed, [model, speed_steps], [speed_plot, speed_info, status],
                       concurrency_id="sampling")
        model.change(on_model, [model], [cond, steps, budget, strategy, guidance, conds, status],
                     concurrency_id="sampling")
        table.change(lambda name: results.plot(by_name[name]) if name in by_name else None, [table], [table_plot])
    # one queue, bounded: a full queue turns new clicks away with a message instead of piling up work
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo
