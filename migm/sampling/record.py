"""Recording the sampler: what the shortcut learns from, and what INT8 calibration draws on.

A trajectory is one image sampled with the base model on every step. As the official
MIGM-Shortcut code does, it keeps every step's features, the final tokens and the step at
which each token was unmasked; with guidance the conditional and unconditional branches share
the tokens and each has its own features ("branches"):

    f[i]         features the base model computes at the start of step i (i = 0..N-1)
    reveal[p]    the step that unmasked position p; the tokens unmasked at step i are
                 final[reveal == i], and the mask ratio after step i is
                 (number of p with reveal > i) / L
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SamplerConfig
from .loop import BaseFn, Fns, generate_tokens


@dataclass
class Recording:
    features: torch.Tensor  # [n, branches, N, L, d] float16
    tokens: torch.Tensor  # [n, L] final tokens
    reveal: torch.Tensor  # [n, L] step that unmasked each position


def autocast_bf16(base: BaseFn) -> BaseFn:
    """`base` under bfloat16 autocast on its inputs' device (how trajectories are recorded)."""
    def fn(tokens, cond):
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
            return base(tokens, cond)
    return fn


@torch.no_grad()
def record_sampling(base: BaseFn, cond: torch.Tensor, uncond: torch.Tensor, sampler: SamplerConfig, *,
                    num_tokens: int, mask_id: int, generator: torch.Generator, head=None, shortcut=None,
                    budget: int | None = None) -> Recording:
    """Sample conditions `cond` [n, ...] and record the trajectories (on the CPU): the features the base
    model computes at every step.

    With a `shortcut` (and the base `head`) and a budget B < N, the tokens follow the hybrid sampler
    (the shortcut's predictions pick them on its steps, chained as at inference) while the base still
    runs on every step to record what it would have computed there: the states the hybrid sampler
    visits, with the features a shortcut should predict on them."""
    n = len(cond)
    inputs, feats = [], []

    def record(tokens, f):
        inputs.append(tokens[:n].clone())
        feats.append(f.to(torch.float16).view(-1, n, *f.shape[1:]).transpose(0, 1))  # [n, branches, T, d]

    def recording(tokens, both):
        f, logits = base(tokens, both)
        record(tokens, f)
        return f, logits

    models = Fns(recording, head, shortcut)
    probe = (lambda step, predicted, tokens, both: record(tokens, base(tokens, both)[0])) if shortcut else None
    final = generate_tokens(models, cond, uncond, sampler, num_tokens=num_tokens, mask_id=mask_id,
                            generator=generator, strategy="shortcut" if shortcut else "vanilla", budget=budget,
                            probe=probe)
    # a position masked in the inputs of steps 0..i was unmasked at step i
    reveal = torch.stack([t == mask_id for t in inputs]).sum(0) - 1
    return Recording(torch.stack(feats, dim=2).cpu(), final.cpu(), reveal.cpu())
