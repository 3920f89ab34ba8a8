"""Throughput measurement: component steps, end-to-end loops, the cost model, the plain baseline.

Times are the median of `repeats` runs after `warmup` runs (which also capture CUDA graphs):
CUDA events on a GPU, a monotonic clock on a CPU. On a GPU each component is timed as a CUDA
graph replay, the way the loop runs it. For each batch size:

  components   base step, shortcut step (head included), sampling kernel, VQ decode (ms)
  c            shortcut step / base step: the cost model's ratio
  loops        vanilla N, then for each B: every strategy asked for, and the plain-PyTorch
               loop (vanilla N and hybrid B) the runtime is compared against

Rows hold images/s end to end (loop + decode), the loop's speedup over our vanilla N, the
cost model's ideal N / (B + (N - B) c), and the ratio against the plain loop at the same N, B.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..runtime.pipeline import Pipeline
from ..sampling.kernel import guide, sample_step
from .plain_loop import plain_generate


@dataclass
class SpeedSettings:
    batches: list[int] = field(default_factory=lambda: [1, 32])
    steps: int = 32
    budgets: list[int] = field(default_factory=lambda: [12])
    strategies: list[str] = field(default_factory=lambda: ["shortcut"])
    plain: bool = True  # also time the plain-PyTorch loop (torch models needed)
    repeats: int = 3
    warmup: int = 1
    guidance: float | None = None  # default: the model's


def _timer(device: torch.device) -> Callable[[Callable[[], object], int, int], float]:
    """Median milliseconds of fn() over `repeats` runs after `warmup` runs."""

    def run(fn, repeats, warmup):
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                out.append(1000 * (time.perf_counter() - t))
        return statistics.median(out)

    return run


def _graphed(fn: Callable[[], object], pipe: Pipeline, generator: torch.Generator | None = None):
    """On a GPU with graphs on, fn captured into a CUDA graph (as the loop runs it); else fn."""
    if not pipe.backend.caps.whole_loop_graphs or not pipe.use_graphs:
        return fn
    side = torch.cuda.Stream(pipe.device)
    side.wait_stream(torch.cuda.current_stream(pipe.device))
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream(pipe.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (Linux: KiB)


@torch.no_grad()
def components(pipe: Pipeline, batch: int, steps: int, repeats: int, warmup: int,
               guidance: float | None = None) -> dict:
    """ms per call of each component at `batch` images (the base and shortcut see 2x with CFG)."""
    s, be, dev = pipe.spec, pipe.backend, pipe.device
    timed = _timer(dev)
    guided = (pipe.defaults.guidance if guidance is None else guidance) != 0
    rows = 2 * batch if guided else batch
    g = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.randint(0, s.codebook_size, (rows, s.num_tokens), device=dev, generator=g)
    tokens[:, ::2] = s.mask_id
    labels = pipe.example_conditions(rows).to(dev)
    feats, logits = be.base(tokens, labels)
    feats, logits = feats.clone(), logits.clone()
    out = {"base": timed(_graphed(lambda: be.base(tokens, labels), pipe), repeats, warmup)}
    m = max(1, s.num_tokens // steps)  # the mean number of tokens a step reveals
    if be.caps.shortcut:
        pos = torch.stack([torch.randperm(s.num_tokens, device=dev)[:m] for _ in range(rows)])
        tok = torch.randint(0, s.codebook_size, pos.shape, device=dev)
        keys = torch.ones(pos.shape, dtype=torch.bool, device=dev)
        ratio = torch.full((rows,), 0.5, device=dev)
        out["shortcut"] = timed(_graphed(lambda: be.shortcut(feats, pos, tok, keys, ratio, labels), pipe),
                                repeats, warmup)
    mask_tokens = tokens[:batch]

    def kernel():
        lg = guide(logits[:batch], logits[batch:], 1.0) if guided else logits
        sample_step(lg, mask_tokens, s.mask_id, m, 0.5, generator=g, anneal=pipe.defaults.anneal)

    out["kernel"] = timed(_graphed(kernel, pipe, g), repeats, warmup)
    grid_tokens = tokens[:batch].clamp(max=s.codebook_size - 1)
    out["decode"] = timed(_graphed(lambda: be.decode(grid_tokens), pipe), repeats, warmup)
    out["c"] = out["shortcut"] / out["base"] if "shortcut" in out else None
    return out


@torch.no_grad()
def measure(pipe: Pipeline, settings: SpeedSettings, info: dict, say: Callable[[str], None] = lambda m: None,
            plain_models: tuple | None = None) -> list[dict]:
    """Rows for every batch size and loop (see module doc). `info` is copied into each row
    (preset, backend, device name); `plain_models` = (base, shortcut) torch modules for the baseline."""
    st, dev = settings, pipe.device
    timed = _timer(dev)
    n = st.steps
    guidance = pipe.defaults.guidance if st.guidance is None else st.guidance
    sampler = pipe.sampler(steps=n, guidance=guidance)
    rows = []
    for batch in st.batches:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        comp = components(pipe, batch, n, st.repeats, st.warmup, guidance)
        say(f"batch {batch}: " + ", ".join(f"{k} {v:.3g}" + ("" if k == "c" else " ms")
                                           for k, v in comp.items() if v is not None))
        cond = pipe.example_conditions(batch)

        def ours(strategy, budget):
            return lambda: pipe.generate_tokens(cond=cond, sampler=sampler, budget=budget, strategy=strategy, seed=0,
                                                batch_size=batch)

        loops = [("vanilla", n, ours("vanilla", None))]
        for b in st.budgets:
            loops += [(s, b, ours(s, b)) for s in st.strategies]
        if st.plain and plain_models is not None:
            base_m, sc_m = plain_models
            lab = cond.to(dev)
            gen = torch.Generator(device=dev).manual_seed(0)
            loops.append(("plain-vanilla", n, lambda: plain_generate(base_m, lab, sampler, generator=gen)))
            for b in st.budgets:
                if sc_m is not None:
                    loops.append(("plain-shortcut", b, lambda b=b: plain_generate(base_m, lab, sampler, budget=b,
                                                                                  shortcut=sc_m, generator=gen)))
        times = {}
        for name, b, fn in loops:
            times[(name, b)] = timed(fn, st.repeats, st.warmup)
            say(f"  {name} N={n} B={b}: {times[(name, b)]:.1f} ms")
        peak = peak_memory_mb(dev)
        for (name, b), ms in times.items():
            # the cost model: a predicted step costs c base steps for the shortcut, ~0 for
            # reuse / extrapolate (a head and a kernel), and fewer simply runs B steps
            ideal = None
            if b < n and name in ("shortcut", "plain-shortcut") and comp["c"] is not None:
                ideal = n / (b + (n - b) * comp["c"])
            elif b < n:
                ideal = n / b
            # the plain loop exists as vanilla and shortcut: compare like with like only
            plain_ref = (times.get(("plain-vanilla", n)) if name == "vanilla" else
                         times.get(("plain-shortcut", b)) if name == "shortcut" else None)
            total = ms + comp["decode"]
            rows.append({**info, "device": info.get("device", str(dev)), "batch": batch, "strategy": name,
                         "steps": n, "budget": b, "guidance": guidance, "loop_ms": ms, "decode_ms": comp["decode"],
                         "images_per_s": 1000 * batch / total, "ms_per_image": total / batch,
                         "peak_mem_mb": peak,
                         "speedup": (times[("plain-vanilla", n)] if name.startswith("plain") else
                                     times[("vanilla", n)]) / ms,
                         "ideal_speedup": ideal,
                         "vs_plain": (plain_ref / ms) if plain_ref and not name.startswith("plain") else None,
                         "base_ms": comp["base"], "shortcut_ms": comp.get("shortcut"), "kernel_ms": comp["kernel"],
                         "kernel_share": comp["kernel"] / (comp["base"] + comp["kernel"]), "c": comp["c"]})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| preset | backend | device | batch | loop | N | B | images/s | ms/image | speedup | ideal | "
            "vs plain | c | kernel share |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['preset']} | {r['backend']} | {r['device']} | {r['batch']} | {r['strategy']} | "
                     f"{r['steps']} | {r['budget']} | {f(r['images_per_s'], '.3g')} | {f(r['ms_per_image'], '.3g')} | "
                     f"{f(r['speedup'], '.2f')} | {f(r['ideal_speedup'], '.2f')} | {f(r['vs_plain'], '.2f')} | "
                     f"{f(r['c'], '.3f')} | {f(r['kernel_share'], '.3f')} |")
    return "\n".join(lines) + "\n"
