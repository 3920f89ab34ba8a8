"""What the server and the batch job share: rows (one image each: a condition, a seed and
sampling settings), read and checked one at a time, then generated in groups.

A row that fails its checks (unknown class or word, steps 0, B > N, ...) carries its error
and is left out of the work, so it never fails the rows beside it. Rows with equal settings
run together in one `generate_tokens` call with one seed per row, padded to the next of a few
fixed batch sizes (so ORT buffers and CUDA graphs are made once per size, not per group
size): each row's image then depends on its own condition, seed and settings only, never on
its batch mates, the padding or its position (tested against the same row run alone).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import MigmError
from ..fileio import clip
from ..runtime.pipeline import Pipeline
from ..sampling.config import SamplerConfig
from ..sampling.loop import HybridStats
from ..sampling.strategies import get_strategy

MAX_SEED = 2**63 - 1  # seeds travel as int64
MAX_ERROR = 400  # a row error quotes at most ~200 characters of the request (a 1 MiB class echoed whole)


@dataclass(frozen=True)
class Settings:
    """What a group of rows shares: the sampler, the strategy and the budget (None: every step full)."""
    sampler: SamplerConfig
    strategy: str
    budget: int | None

    def describe(self) -> str:
        return f"N={self.sampler.steps} B={self.budget or self.sampler.steps} {self.strategy} " \
               f"w={self.sampler.guidance:g}"

    def as_dict(self) -> dict:
        return {"steps": self.sampler.steps, "budget": self.budget or self.sampler.steps,
                "strategy": self.strategy, "guidance": self.sampler.guidance}


@dataclass
class Row:
    condition: str  # as given: a class name or index, or a prompt
    seed: int
    settings: Settings | None = None
    cond: torch.Tensor | None = None  # the encoded condition, [1, ...]
    error: str | None = None


@dataclass
class Result:
    image: torch.Tensor | None = None  # [C, H, W] in [0, 1]
    tokens: torch.Tensor | None = None  # [L]
    error: str | None = None
    stats: dict = field(default_factory=dict)


def read_row(pipe: Pipeline, condition: str | bytes, seed: int, *, steps: int | None = None,
             budget: int | None = None, strategy: str | None = None, guidance: float | None = None) -> Row:
    """A checked row; never raises for bad input, the row carries the error instead.

    None means the model's default; `budget` None runs every step on the base model, `strategy`
    None picks the shortcut when B < N.
    """
    row = Row(condition="", seed=0)
    try:
        row.condition = condition.decode("utf-8") if isinstance(condition, bytes) else str(condition)
    except UnicodeDecodeError:
        row.error = f"the {pipe.family.condition_kind} is not UTF-8 text"
        return row
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        row.error = f"seed must be an integer between 0 and {MAX_SEED}, got {seed!r}"
        return row
    row.seed = seed
    if not row.condition.strip():
        row.error = f"empty {pipe.family.condition_kind}"
        return row
    try:
        row.cond = pipe.encode_conditions([row.condition])
        cfg, strategy, budget = pipe.resolve(steps=steps, guidance=guidance, strategy=strategy, budget=budget)
    except MigmError as e:
        row.error = clip(" ".join(str(e).split()), MAX_ERROR)
        return row
    # vanilla ignores B: rows asking for it with and without a budget are one group
    row.settings = Settings(cfg, strategy, budget if get_strategy(strategy).hybrid else None)
    return row


def padded_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest of `sizes` that holds n rows (n never exceeds the largest)."""
    return min(s for s in sizes if s >= n)


def generate_rows(pipe: Pipeline, rows: Sequence[Row], sizes: Sequence[int] = (1, 2, 4, 8),
                  log: Callable[[str], None] | None = None) -> list[Result]:
    """Images for checked rows, one `Result` per row in order; rows with an error keep it.

    Groups of equal settings run in chunks of at most max(sizes) rows, each padded (with copies
    of its first row, dropped afterwards) to the next of `sizes`. A group that fails (a bug, a
    backend error) marks its own rows and leaves the other groups alone.
    """
    results = [Result(error=r.error) for r in rows]
    groups: dict[Settings, list[int]] = {}
    for i, r in enumerate(rows):
        if r.error is None:
            groups.setdefault(r.settings, []).append(i)
    biggest = max(sizes)
    for settings, members in groups.items():
        for start in range(0, len(members), biggest):
            part = members[start:start + biggest]
            _run_group(pipe, settings, [rows[i] for i in part], padded_size(len(part), sizes),
                       [results[i] for i in part], log)
    return results


def _run_group(pipe, settings: Settings, rows: list[Row], size: int, out: list[Result], log) -> None:
    pad = [rows[0]] * (size - len(rows))
    cond = torch.cat([r.cond for r in rows + pad])
    seeds = [r.seed for r in rows + pad]
    stats = HybridStats()
    t0 = time.perf_counter()
    try:
        tokens = pipe.generate_tokens(cond=cond, sampler=settings.sampler, strategy=settings.strategy,
                                      budget=settings.budget, seed=seeds, batch_size=size, stats=stats)
        images = pipe.decode(tokens, batch_size=size)
    except MigmError as e:
        for res in out:
            res.error = clip(" ".join(str(e).split()), MAX_ERROR)
        return
    except Exception as e:  # a bug or a backend failure: this group's rows fail, the others go on
        if log:
            log(f"group {settings.describe()} failed:\n{traceback.format_exc()}")
        for res in out:
            res.error = clip(f"internal error: {type(e).__name__}: {e}", MAX_ERROR)
        return
    ms = (time.perf_counter() - t0) * 1000
    for i, res in enumerate(out):
        res.tokens, res.image = tokens[i], images[i]
        res.stats = {**settings.as_dict(), "base_calls": stats.base_calls, "rows": len(rows), "padded_to": size,
                     "ms": round(ms, 1)}


def preferred_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch (which ends the list even when it is no power of two)."""
    sizes = [2**k for k in range(int(math.log2(max_batch)) + 1)]
    return sizes if sizes[-1] == max_batch else sizes + [max_batch]
