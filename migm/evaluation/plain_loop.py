"""The plain-PyTorch baseline: the eager loop a user would write from the reference code.

Eager bf16 (autocast on CPU, bf16 weights on a GPU), cond and uncond branches batched as the
Halton-MaskGIT reference does, softmax + multinomial sampling, and the reveal bookkeeping done
with boolean indexing (a host synchronisation per step). No CUDA graphs, no buffer reuse.
Its hybrid variant calls the shortcut on the steps the plan leaves to it. Benchmarks compare
the runtime against it at the same N and B; its tokens are not meant to match ours.
"""

from __future__ import annotations

import math

import torch

from ..families import family_of
from ..sampling.config import SamplerConfig
from ..sampling.plan import full_step_plan
from ..sampling.schedules import mask_schedule


@torch.no_grad()
def plain_generate(base, cond: torch.Tensor, sampler: SamplerConfig, *, budget: int | None = None, shortcut=None,
                   generator=None) -> torch.Tensor:
    """`cond`: class ids, or prompt ids; the unconditional branch gets the family's empty condition."""
    fam = family_of(base)
    spec = fam.spec(base.cfg)
    b, n, steps = cond.shape[0], spec.num_tokens, sampler.steps
    dev = cond.device
    plan = set(full_step_plan(steps, budget or steps))
    code = torch.full((b, n), spec.mask_id, dtype=torch.long, device=dev)
    mask = torch.ones(b, n, dtype=torch.bool, device=dev)
    both = torch.cat([cond, fam.uncond(spec, dev).expand_as(cond)])
    feats, new_code = None, None
    auto = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dev.type == "cpu")
    for i, t in enumerate(mask_schedule(sampler.schedule, steps, n)):
        with auto:
            if i in plan or shortcut is None:
                feats, logit = base(torch.cat([code, code]), both)
            else:
                pos = new_code.nonzero()[:, 1].view(b, -1)  # host sync: the positions revealed last step
                tok = code.gather(1, pos)
                ratio = torch.full((2 * b,), mask.float().mean().item(), device=dev)  # host sync
                feats = fam.run_shortcut(shortcut, feats, torch.cat([pos, pos]), torch.cat([tok, tok]),
                                         torch.ones(2 * b, pos.shape[1], dtype=torch.bool, device=dev),
                                         ratio.to(feats.dtype), both)
                logit = base.head(feats)
        w = sampler.guidance_at(i)
        logit = ((1 + w) * logit[:b] - w * logit[b:]).float()
        prob = torch.softmax(logit, -1)
        pred = torch.multinomial(prob.view(-1, prob.shape[-1]), 1, generator=generator).view(b, n)
        conf = torch.gather(prob, 2, pred.unsqueeze(-1)).squeeze(-1).log()
        u = torch.rand(conf.shape, generator=generator, device=dev).clamp(1e-20, 1 - 1e-7)
        noise = 1 if not sampler.anneal else 1 - i / max(steps - 1, 1)
        conf = conf + sampler.tau * noise * -torch.log(-torch.log(u))
        conf[~mask] = -math.inf
        top = torch.topk(conf, k=t, dim=-1).indices
        new_code = torch.zeros_like(mask).scatter_(1, top, True)
        code[new_code] = pred[new_code]  # boolean indexing: a host sync per step
        mask[new_code] = False
    return code
