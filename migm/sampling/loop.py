"""The generation loop: vanilla MaskGIT sampling, and hybrid MIGM-Shortcut sampling with
the base model on the B full steps, a cheaper feature predictor on the others and the
unchanged sampling kernel on every step.

The strategies (how the features of a step that is not a full step are obtained: vanilla, fewer,
reuse, extrapolate, mlcache, shortcut) are objects: sampling/strategies.py says what each needs of
the models and how it treats N and B, sampling/predictors.py holds its tensor code. The loop asks
them and never tests a strategy's name.

Pure sampling code: the models are whatever has the `StepModels` methods (a runtime
backend, or `Fns` around plain callables). With CFG both branches are carried through the
same predictor, batched: rows [all conditional; all unconditional].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .config import SamplerConfig, step_ratio
from .kernel import Generators, guide, sample_step
from .plan import full_step_plan
from .predictors import Run, Step
from .predictors import predictor as make_predictor
from .schedules import mask_schedule
from .strategies import NEEDS, check_strategy

BaseFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (step, predicted features, token sequence, conditions) -> None: sees every predicted step
ProbeFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class CachedBase(Protocol):
    """What the mlcache strategy needs of a base model: the full forward with every block's
    keys/values at full steps, and a partial forward at the others."""

    def full(self, tokens, cond) -> tuple[torch.Tensor, torch.Tensor, list]: ...

    def subset(self, tokens, cond, positions, cache) -> torch.Tensor: ...


class StepModels(Protocol):
    """The model calls the loop makes (runtime backends have exactly these)."""

    cached: CachedBase | None  # None: no cached forward (no mlcache)
    provides: frozenset[str]  # what of the strategies' needs these models have (sampling/strategies.py NEEDS)

    def base(self, tokens: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [b, L] (mask_id where unknown), conditions [b, ...] -> features [b, L, d], logits [b, L, K]"""

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """features -> logits (reuse / extrapolate / mlcache steps)"""

    def shortcut(self, features, new_pos, new_tok, key_mask, mask_ratio,
                 cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """next features, and their logits where the shortcut computes them (else None)"""


@dataclass
class Fns:
    """StepModels from plain callables (trajectory recording, tests)."""
    base: BaseFn
    head: Callable[[torch.Tensor], torch.Tensor] | None = None
    shortcut: Callable | None = None
    cached: CachedBase | None = None

    @property
    def provides(self) -> frozenset[str]:
        """The callables given, by the names the strategies' needs use (head, shortcut, cached)."""
        return frozenset(n.name for n in NEEDS if getattr(self, n.name) is not None)


@dataclass
class HybridStats:
    base_calls: int = 0
    predicted_steps: int = 0
    full_steps: list[int] = field(default_factory=list)
    recomputed_tokens: int = 0  # mlcache: grid positions recomputed on predicted steps (per row)

    def cost(self, num_tokens: int) -> float:
        """Base-model cost in full-call equivalents (mlcache's partial calls count by their share)."""
        return self.base_calls + self.recomputed_tokens / num_tokens

    def add(self, other: "HybridStats") -> None:
        self.base_calls += other.base_calls
        self.predicted_steps += other.predicted_steps
        self.recomputed_tokens += other.recomputed_tokens
        self.full_steps = other.full_steps


@torch.no_grad()
def generate_tokens(models: StepModels, cond: torch.Tensor, uncond: torch.Tensor, sampler: SamplerConfig, *,
                    num_tokens: int, mask_id: int, budget: int | None = None, strategy: str = "vanilla",
                    generator: Generators = None, stats: HybridStats | None = None,
                    on_step: Callable[[int, int], None] | None = None, probe: ProbeFn | None = None,
                    recompute: float = 0.1) -> torch.Tensor:
    """Sample token grids [b, num_tokens] for conditions `cond` [b, ...] (class ids, or prompt ids).

    The unconditional branch (guidance != 0) gets `uncond` (one row, broadcast). `strategy`
    and `budget` (B full steps) choose hybrid sampling; `recompute` is mlcache's least-confident
    share; `probe` is called on every predicted step (evaluation of feature error).
    `generator`: one for the batch, or one per row (a row's tokens then depend on its seed alone).
    """
    sampler.validate(num_tokens)
    strat = check_strategy(strategy, models.provides)
    steps, budget = strat.steps_and_budget(sampler.steps, budget)
    if steps != sampler.steps:  # fewer: vanilla sampling with N = B, its schedule and ramp over B steps
        sampler = sampler.replace(steps=steps)
    plan = set(full_step_plan(steps, budget))
    stats = stats if stats is not None else HybridStats()
    stats.full_steps = sorted(plan)

    b = cond.shape[0]
    guided = sampler.guidance != 0
    tokens = torch.full((b, num_tokens), mask_id, dtype=torch.long, device=cond.device)
    both = torch.cat([cond, uncond.expand_as(cond)]) if guided else cond
    predictor = make_predictor(strat, Run(models, both, guided, num_tokens, mask_id, recompute, stats))
    feats = logits = new_pos = None  # the last step's features and guided logits, the positions it unmasked
    remaining = num_tokens
    for i, reveal in enumerate(mask_schedule(sampler.schedule, steps, num_tokens)):
        # the token grid for both CFG branches: needed by full steps, strategies that read it and the probe
        needs_seq = i in plan or strat.reads_tokens or probe is not None
        seq = (torch.cat([tokens, tokens]) if guided else tokens) if needs_seq else None
        if i in plan:
            feats, logits = predictor.full(i, seq)
            stats.base_calls += 1
        else:
            feats, logits = predictor.advance(Step(i, feats, tokens, seq, new_pos, remaining / num_tokens, logits))
            if probe is not None:
                probe(i, feats, seq, both)
            if logits is None:  # the strategy predicted features only: the base head reads them
                logits = models.head(feats)
            stats.predicted_steps += 1
        logits = guide(logits[:b], logits[b:], sampler.guidance_at(i)) if guided else logits
        tokens, new_pos = sample_step(logits, tokens, mask_id, reveal, step_ratio(i, steps), sampler.temperature,
                                      sampler.tau, generator, anneal=sampler.anneal)
        remaining -= reveal
        if on_step:
            on_step(i + 1, steps)
    return tokens
