"""The generation loop: vanilla MaskGIT sampling, and hybrid MIGM-Shortcut sampling with
the base model on the B full steps, a cheaper feature predictor on the others and the
unchanged sampling kernel on every step.

Strategies (how features are obtained on a step that is not a full step):
  vanilla       every step is full (B is ignored)
  fewer         vanilla sampling with N = B steps
  reuse         f[i+1] = f[i]                          (feature caching)
  extrapolate   first-order extrapolation from the last two full steps (TaylorSeer-like)
  shortcut      f[i+1] = S(f[i], tokens sampled at i, mask ratio after i)
  mlcache       ML-Cache-style: recompute only the tokens just sampled plus the ~10%
                least-confident masked tokens against the cached keys/values of the
                last full step; every other position keeps its cached features

Pure sampling code: the models are whatever has the `StepModels` methods (a runtime
backend, or `Fns` around plain callables). With CFG both branches are carried through the
same predictor, batched: rows [all conditional; all unconditional].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from ..errors import ConfigError
from .config import SamplerConfig, step_ratio
from .kernel import Generators, guide, sample_step
from .plan import full_step_plan
from .schedules import mask_schedule
from .strategies import STRATEGIES

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

    cached: CachedBase | None  # None: no mlcache

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


def check_strategy(strategy: str, steps: int, budget: int | None, models: StepModels) -> tuple[str, int, int]:
    """(strategy, N actually sampled, B) after checking the strategy has what it needs."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    budget = steps if budget is None or strategy == "vanilla" else budget
    if not 1 <= budget <= steps:
        raise ConfigError(f"budget B={budget} must be between 1 and the number of steps N={steps}")
    if strategy == "fewer":
        steps = budget
    if budget < steps:
        if models.head is None:
            raise ConfigError(f"the {strategy} strategy needs the base model's head")
        if strategy == "shortcut" and models.shortcut is None:
            raise ConfigError("the shortcut strategy needs a shortcut model, and none is loaded")
        if strategy == "mlcache" and models.cached is None:
            raise ConfigError("the mlcache strategy needs the base model's cached forward (maskgit on torch)")
    return strategy, steps, budget


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
    strategy, steps, budget = check_strategy(strategy, sampler.steps, budget, models)
    if steps != sampler.steps:  # fewer: vanilla sampling with N = B, its schedule and ramp over B steps
        sampler = sampler.replace(steps=steps)
    plan = set(full_step_plan(steps, budget))
    stats = stats if stats is not None else HybridStats()
    stats.full_steps = sorted(plan)

    b = cond.shape[0]
    guided = sampler.guidance != 0
    tokens = torch.full((b, num_tokens), mask_id, dtype=torch.long, device=cond.device)
    both = torch.cat([cond, uncond.expand_as(cond)]) if guided else cond
    feats = None  # features of the current step (computed or predicted)
    anchors: list[tuple[int, torch.Tensor]] = []  # (step, features) of the last two full steps
    new_pos = None
    cache = None  # mlcache: per-block keys/values, refreshed at full steps
    logits = prev_logits = None  # prev_logits: the last step's guided logits (mlcache)
    remaining = num_tokens
    for i, reveal in enumerate(mask_schedule(sampler.schedule, steps, num_tokens)):
        # the token grid for both CFG branches: needed by full steps, mlcache and the probe only
        needs_seq = i in plan or strategy == "mlcache" or probe is not None
        seq = (torch.cat([tokens, tokens]) if guided else tokens) if needs_seq else None
        if i in plan:
            if strategy == "mlcache":
                feats, logits, cache = models.cached.full(seq, both)
            else:
                feats, logits = models.base(seq, both)
            anchors = (anchors + [(i, feats)])[-2:]
            stats.base_calls += 1
        else:
            logits = None
            if strategy == "reuse":
                pass  # feats stays the last full step's
            elif strategy == "extrapolate" and len(anchors) == 2:
                (s0, f0), (s1, f1) = anchors
                feats = f1 + (f1 - f0) * ((i - s1) / (s1 - s0))
            elif strategy == "shortcut":
                feats, logits = _shortcut_step(models, feats, tokens, new_pos, remaining / num_tokens, both, guided)
            elif strategy == "mlcache":
                pos = _least_confident(prev_logits, tokens, mask_id, new_pos, math.ceil(recompute * num_tokens))
                pos2 = torch.cat([pos, pos]) if guided else pos
                sub = models.cached.subset(seq, both, pos2, cache)
                feats = feats.scatter(1, pos2[..., None].expand(-1, -1, feats.shape[-1]), sub.to(feats.dtype))
                stats.recomputed_tokens += pos.shape[1]
            if probe is not None:
                probe(i, feats, seq, both)
            if logits is None:
                logits = models.head(feats)
            stats.predicted_steps += 1
        logits = guide(logits[:b], logits[b:], sampler.guidance_at(i)) if guided else logits
        prev_logits = logits
        tokens, new_pos = sample_step(logits, tokens, mask_id, reveal, step_ratio(i, steps), sampler.temperature,
                                      sampler.tau, generator, anneal=sampler.anneal)
        remaining -= reveal
        if on_step:
            on_step(i + 1, steps)
    return tokens


def _least_confident(logits, tokens, mask_id, new_pos, count):
    """The positions just unmasked plus the `count` masked positions whose previous-step
    distribution was least peaked: the tokens ML-Cache recomputes. [B, len(new) + count]"""
    masked = tokens == mask_id
    count = min(count, int(masked.sum(1).min()))
    conf = torch.softmax(logits.float(), -1).amax(-1).masked_fill(~masked, float("inf"))
    low = conf.topk(count, dim=-1, largest=False).indices
    return torch.cat([new_pos, low], 1)


def _shortcut_step(models, feats, tokens, new_pos, mask_ratio, cond, guided):
    """Advance features by one step from the tokens sampled at the previous step."""
    tok = tokens.gather(1, new_pos)
    pos = torch.cat([new_pos, new_pos]) if guided else new_pos
    tok = torch.cat([tok, tok]) if guided else tok
    keys = torch.ones_like(pos, dtype=torch.bool)  # the count per step is static: no padding
    r = torch.full((feats.shape[0],), mask_ratio, device=feats.device)
    return models.shortcut(feats, pos, tok, keys, r, cond)
