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

Pure sampling code: the base model, its head and the shortcut are callables.
With CFG both branches are carried through the same predictor, batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .kernel import guide, sample_step, step_ratio
from .plan import full_step_plan
from .schedules import mask_schedule

STRATEGIES = ("vanilla", "fewer", "reuse", "extrapolate", "mlcache", "shortcut")
SAMPLERS = ("halton", "dimoo")

BaseFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
HeadFn = Callable[[torch.Tensor], torch.Tensor]
# (features, new_pos, new_tok, key_mask, mask_ratio) -> next features, or (next features, their logits)
ShortcutFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (step, predicted features, token sequence, labels) -> None: sees every predicted step
ProbeFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class CachedBase:
    """What the mlcache strategy needs of a base model: `forward_cached` at full steps
    (features, logits, per-block keys/values) and `forward_subset` at the others."""

    def __init__(self, model, autocast: bool = True):
        self.model = model
        self.autocast = autocast

    def _ctx(self, t):
        return torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=self.autocast and t.device.type == "cpu")

    def full(self, tokens, labels):
        with self._ctx(tokens):
            features, logits, cache = self.model.forward_cached(tokens, labels)
        return features.float(), logits.float(), cache

    def subset(self, tokens, labels, positions, cache):
        with self._ctx(tokens):
            return self.model.forward_subset(tokens, labels, positions, cache).float()


@dataclass
class HybridStats:
    base_calls: int = 0
    predicted_steps: int = 0
    full_steps: list[int] = field(default_factory=list)
    recomputed_tokens: int = 0  # mlcache: grid positions recomputed on predicted steps (per row)

    def cost(self, num_tokens: int) -> float:
        """Base-model cost in full-call equivalents (mlcache's partial calls count by their share)."""
        return self.base_calls + self.recomputed_tokens / num_tokens


@torch.no_grad()
def generate_tokens(base: BaseFn, labels: torch.Tensor, *, num_tokens: int, mask_id: int, no_class_id: int,
                    steps: int, budget: int | None = None, strategy: str = "vanilla", head: HeadFn | None = None,
                    shortcut: ShortcutFn | None = None, cfg: float = 0.0, tau: float = 4.5,
                    temperature: float = 1.0, schedule: str = "arccos",
                    generator: torch.Generator | None = None, stats: HybridStats | None = None,
                    on_step: Callable[[int, int], None] | None = None, cached: CachedBase | None = None,
                    recompute: float = 0.1, probe: ProbeFn | None = None, sampler: str = "halton",
                    uncond: torch.Tensor | None = None) -> torch.Tensor:
    """Sample token grids [B, num_tokens] for class `labels` [B] in `steps` steps.

    `strategy` and `budget` (B full steps) choose hybrid sampling; `head` maps features
    to logits on predicted steps, `shortcut` is the learned predictor, `cached` the base
    model's cached/partial forward for mlcache (with `recompute` the least-confident share).
    `probe` is called on every predicted step (evaluation of feature error).

    `labels` is the conditioning the base model takes (class ids, or prompt token ids for
    the llada family); the unconditional branch gets `uncond` (one row, broadcast), or
    `no_class_id`. `sampler` "halton" ramps CFG linearly and anneals the confidence noise
    (Halton-MaskGIT); "dimoo" keeps both constant (Lumina-DiMOO).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    budget = steps if budget is None or strategy == "vanilla" else budget
    if strategy == "fewer":
        steps = budget
    plan = set(full_step_plan(steps, budget))
    if len(plan) < steps and head is None:
        raise ValueError(f"the {strategy} strategy needs the base model's head")
    if strategy == "shortcut" and shortcut is None and len(plan) < steps:
        raise ValueError("the shortcut strategy needs a shortcut model")
    if strategy == "mlcache" and cached is None and len(plan) < steps:
        raise ValueError("the mlcache strategy needs the base model's cached forward (CachedBase)")
    stats = stats if stats is not None else HybridStats()
    stats.full_steps = sorted(plan)

    b = labels.shape[0]
    guided = cfg != 0
    tokens = torch.full((b, num_tokens), mask_id, dtype=torch.long, device=labels.device)
    if uncond is None:
        uncond = torch.full_like(labels, no_class_id)
    labs = torch.cat([labels, uncond.expand_as(labels)]) if guided else labels
    feats = None  # features of the current step (computed or predicted)
    anchors: list[tuple[int, torch.Tensor]] = []  # (step, features) of the last two full steps
    new_pos = None
    cache = None  # mlcache: per-block keys/values, refreshed at full steps
    logits = None
    remaining = num_tokens
    for i, reveal in enumerate(mask_schedule(schedule, steps, num_tokens)):
        # the token grid for both CFG branches: needed by full steps, mlcache and the probe only
        needs_seq = i in plan or strategy == "mlcache" or probe is not None
        seq = (torch.cat([tokens, tokens]) if guided else tokens) if needs_seq else None
        if i in plan:
            if strategy == "mlcache":
                feats, logits, cache = cached.full(seq, labs)
            else:
                feats, logits = base(seq, labs)
            anchors = (anchors + [(i, feats)])[-2:]
            stats.base_calls += 1
        else:
            if strategy == "reuse":
                pass  # feats stays the last full step's
            elif strategy == "extrapolate" and len(anchors) == 2:
                (s0, f0), (s1, f1) = anchors
                feats = f1 + (f1 - f0) * ((i - s1) / (s1 - s0))
            elif strategy == "shortcut":
                out = _shortcut_step(shortcut, feats, tokens, new_pos, remaining / num_tokens, guided)
                # an exported shortcut step has the base head folded in and returns the logits too
                feats, logits = out if isinstance(out, tuple) else (out, None)
            elif strategy == "mlcache":
                pos = _least_confident(logits[:b], tokens, mask_id, new_pos, math.ceil(recompute * num_tokens))
                pos2 = torch.cat([pos, pos]) if guided else pos
                sub = cached.subset(seq, labs, pos2, cache)
                feats = feats.scatter(1, pos2[..., None].expand(-1, -1, feats.shape[-1]), sub.to(feats.dtype))
                stats.recomputed_tokens += pos.shape[1]
            if probe is not None:
                probe(i, feats, seq, labs)
            if not (strategy == "shortcut" and logits is not None):
                logits = head(feats)
            stats.predicted_steps += 1
        ratio = step_ratio(i, steps)
        w = cfg * ratio if sampler == "halton" else cfg
        logits = guide(logits[:b], logits[b:], w) if guided else logits
        tokens, new_pos = sample_step(logits, tokens, mask_id, reveal, ratio, temperature, tau, generator,
                                      anneal=sampler == "halton")
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


def _shortcut_step(shortcut, feats, tokens, new_pos, mask_ratio, guided):
    """Advance features by one step from the tokens sampled at the previous step."""
    tok = tokens.gather(1, new_pos)
    pos = torch.cat([new_pos, new_pos]) if guided else new_pos
    tok = torch.cat([tok, tok]) if guided else tok
    keys = torch.ones_like(pos, dtype=torch.bool)  # the count per step is static: no padding
    r = torch.full((feats.shape[0],), mask_ratio, device=feats.device)
    return shortcut(feats, pos, tok, keys, r)
