"""The tensor side of the strategies (sampling/strategies.py says what each needs and how it treats N
and B): how a strategy gets the features of a step. `full` runs on the base model's B steps,
`advance` on the others. The loop makes one predictor per run; it keeps what its strategy carries
from step to step (the last two full steps' features, the cached keys/values).

With CFG both branches go through the same predictor, batched: rows [all conditional; all
unconditional].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .strategies import EXTRAPOLATE, FEWER, MLCACHE, REUSE, SHORTCUT, VANILLA, Strategy


@dataclass
class Run:
    """What a predictor knows of its loop run."""
    models: Any  # the loop's StepModels
    both: torch.Tensor  # every row's condition: [conditional; unconditional] with CFG
    guided: bool
    num_tokens: int
    mask_id: int
    recompute: float  # mlcache: the share of least-confident masked tokens recomputed
    stats: Any  # the loop's HybridStats


@dataclass
class Step:
    """The loop at a step the base model skips: what the last step left."""
    index: int
    features: torch.Tensor  # the last step's features (computed or predicted)
    tokens: torch.Tensor  # [b, L] the token grid
    seq: torch.Tensor | None  # the grid of both CFG branches, where the strategy reads it (`reads_tokens`)
    new_pos: torch.Tensor  # [b, n] the positions the last step unmasked
    mask_ratio: float  # the share of positions still masked
    logits: torch.Tensor  # the last step's guided logits


class Predictor:
    """Full steps only: what vanilla and fewer are (every one of their steps is a full step)."""

    def __init__(self, strategy: Strategy, run: Run):
        self.strategy, self.run = strategy, run
        self.cache = None  # the base model's keys/values of the last full step (`cached_full`)
        # a fallback sees no full steps: it must carry nothing between steps (reuse does not)
        self.fallback = predictor(strategy.fallback, run) if strategy.fallback else None

    def full(self, i: int, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A full step: the base model's features and logits (its cached forward where the strategy
        keeps the keys/values)."""
        models, both = self.run.models, self.run.both
        if self.strategy.cached_full:
            features, logits, self.cache = models.cached.full(seq, both)
            return features, logits
        return models.base(seq, both)

    def advance(self, step: Step) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The features of a step the base model skips, and their logits where the strategy computes
        them (None: the loop runs the base head)."""
        raise AssertionError(f"the {self.strategy.name} strategy has full steps only")


class Reuse(Predictor):
    def advance(self, step):
        return step.features, None  # the last full step's features, unchanged


class Extrapolate(Predictor):
    def __init__(self, strategy, run):
        super().__init__(strategy, run)
        self.anchors: list[tuple[int, torch.Tensor]] = []  # (step, features) of the last two full steps

    def full(self, i, seq):
        features, logits = super().full(i, seq)
        self.anchors = (self.anchors + [(i, features)])[-2:]
        return features, logits

    def advance(self, step):
        if len(self.anchors) < 2:  # no slope before the second full step: the strategy's fallback (reuse)
            return self.fallback.advance(step)
        (s0, f0), (s1, f1) = self.anchors
        return f1 + (f1 - f0) * ((step.index - s1) / (s1 - s0)), None


class MLCache(Predictor):
    def advance(self, step):
        run, feats = self.run, step.features
        pos = _least_confident(step.logits, step.tokens, run.mask_id, step.new_pos,
                               math.ceil(run.recompute * run.num_tokens))
        pos2 = torch.cat([pos, pos]) if run.guided else pos
        sub = run.models.cached.subset(step.seq, run.both, pos2, self.cache)
        run.stats.recomputed_tokens += pos.shape[1]
        return feats.scatter(1, pos2[..., None].expand(-1, -1, feats.shape[-1]), sub.to(feats.dtype)), None


class Shortcut(Predictor):
    def advance(self, step):
        """Advance the features by one step from the tokens sampled at the previous step."""
        run = self.run
        tok = step.tokens.gather(1, step.new_pos)
        pos = torch.cat([step.new_pos, step.new_pos]) if run.guided else step.new_pos
        tok = torch.cat([tok, tok]) if run.guided else tok
        keys = torch.ones_like(pos, dtype=torch.bool)  # the count per step is static: no padding
        r = torch.full((step.features.shape[0],), step.mask_ratio, device=step.features.device)
        return run.models.shortcut(step.features, pos, tok, keys, r, run.both)


# every strategy's tensor code (tests/test_hybrid.py checks that none is missing)
PREDICTORS: dict[Strategy, type[Predictor]] = {
    VANILLA: Predictor, FEWER: Predictor, REUSE: Reuse, EXTRAPOLATE: Extrapolate, MLCACHE: MLCache,
    SHORTCUT: Shortcut,
}


def predictor(strategy: Strategy, run: Run) -> Predictor:
    """A fresh predictor for one loop run with `strategy`."""
    return PREDICTORS[strategy](strategy, run)


def _least_confident(logits, tokens, mask_id, new_pos, count):
    """The positions just unmasked plus the `count` masked positions whose previous-step
    distribution was least peaked: the tokens ML-Cache recomputes. [B, len(new) + count]"""
    masked = tokens == mask_id
    count = min(count, int(masked.sum(1).min()))
    conf = torch.softmax(logits.float(), -1).amax(-1).masked_fill(~masked, float("inf"))
    low = conf.topk(count, dim=-1, largest=False).indices
    return torch.cat([new_pos, low], 1)
