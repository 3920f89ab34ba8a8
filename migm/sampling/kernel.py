"""The token-sampling kernel (Halton-MaskGIT v1.0 sampler), pure tensors.

One step, given the (already guided) logits at every position:
  1. categorical sample at temperature T (Gumbel-max: argmax(logits / T + Gumbel))
  2. confidence = log p(sample) + tau * Gumbel * (1 - i / (N - 1))
  3. already-known positions get -inf; the top-k masked positions (k from the
     schedule) take their sampled token, the rest stay masked.

Lumina-DiMOO's sampler is the same kernel with `anneal=False` (confidence noise tau * Gumbel
at every step, tau = temperature = 1), a constant guidance weight and the "dimoo" schedule.
Guidance is `guide()`: (1 + w) * cond - w * uncond, with w from `SamplerConfig.guidance_at`.

All randomness comes from an explicit `torch.Generator`, so a seed fixes the tokens. A sequence
of generators, one per row, makes each row draw exactly the numbers a batch of one seeded alike
draws: a row's tokens then depend on its own seed, never on its batch mates (serving).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

# one generator for the batch, one per row, or None (torch's global one)
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance on logits: (1 + w) * cond - w * uncond."""
    return torch.lerp(uncond, cond, 1.0 + w) if w != 0 else cond


def gumbel(shape, generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} row generators for {shape[0]} rows")
        # row r consumes its own stream in the order a batch of one would: the same numbers
        u = torch.stack([torch.rand(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])
    else:
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    # clamp keeps -log(-log(u)) finite at u = 0 or 1
    eps = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp(eps, 1 - torch.finfo(dtype).eps)))


def sample_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, reveal: int, ratio: float,
                temperature: float = 1.0, tau: float = 4.5, generator: Generators = None,
                anneal: bool = True):
    """Reveal `reveal` masked positions per row.

    logits [B, L, K] (already guided), tokens [B, L] with `mask_id` at unknown positions,
    `ratio` = i / (N - 1). Returns (new tokens [B, L], positions [B, reveal]: the positions
    unmasked by this step). The count per step is fixed by the schedule, so the shapes are static.
    """
    b, n, k = logits.shape
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    sample = (logp + gumbel((b, n, k), generator, logits.device)).argmax(-1)
    conf = logp.gather(-1, sample.unsqueeze(-1)).squeeze(-1)
    if anneal and tau != 0 and ratio < 1:
        conf = conf + tau * (1.0 - ratio) * gumbel((b, n), generator, logits.device)
    elif not anneal and tau != 0:  # Lumina-DiMOO: the same noise at every step
        conf = conf + tau * gumbel((b, n), generator, logits.device)
    masked = tokens == mask_id
    conf = conf.masked_fill(~masked, float("-inf"))
    top = conf.topk(reveal, dim=-1).indices
    # `reveal` never exceeds the masked count (the schedule sums to L), so every top-k
    # position is a masked one and known tokens are never overwritten.
    return tokens.scatter(1, top, sample.gather(1, top)), top
