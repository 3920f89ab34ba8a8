"""Mask schedules: how many tokens each of the N steps reveals, computed as the reference samplers
compute them (float32 arithmetic, the same rounding), so a seed gives the reference's tokens.

Halton-MaskGIT v1.0 (arccos, cosine, linear, square, root): with r = linspace(1, 0, N) in float32,
a curve gives each step's share; the shares are normalised to the L tokens, **rounded** (half to
even), every zero raised to one, and the remainder (positive or negative) added to the last step.

Lumina-DiMOO (dimoo): after step i < N-1, floor(L · cos(π/2 · (i+1)/N)) tokens stay masked (at least
one), none after the last; the cosine is taken in float32.

Edge cases: N = 1 reveals all L tokens in one step (the reference's formula divides by zero there).
When the reference's counts would give a step no token to reveal (Halton: the remainder makes the
last step ≤ 0, which happens from N = 98 at 256 tokens and N = 261 at 1,024; DiMOO: two steps leave
the same number masked, from N = 256 at 4,096 tokens), the reference sampler silently runs fewer
steps; here the schedule is refused with an error naming the step, so N always means N steps.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

SCHEDULES = ("arccos", "cosine", "linear", "square", "root", "dimoo")


def _curve(name: str, r: torch.Tensor) -> torch.Tensor:
    if name == "arccos":
        return torch.arccos(r) / (math.pi * 0.5)
    if name == "cosine":
        return torch.cos(r * math.pi * 0.5)
    if name == "linear":
        return 1 - r
    if name == "square":
        return 1 - r**2
    if name == "root":
        return 1 - r**0.5
    raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def mask_schedule(name: str, steps: int, num_tokens: int) -> list[int]:
    """Tokens revealed at each step: `steps` ints, each >= 1, summing to `num_tokens`."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if steps > num_tokens:
        raise ConfigError(f"steps ({steps}) cannot exceed the number of tokens ({num_tokens})")
    if name == "dimoo":
        return dimoo_schedule(steps, num_tokens)
    r = torch.linspace(1, 0, steps)  # float32, as the reference
    shares = _curve(name, r)
    if steps == 1:
        return [num_tokens]
    counts = (shares / shares.sum() * num_tokens).round()  # round half to even
    counts[counts == 0] = 1
    counts[-1] += num_tokens - counts.sum()
    out = [int(c) for c in counts.int()]
    _check_positive(name, out, num_tokens)
    return out


def cosine_remaining(steps: int, num_tokens: int) -> list[int]:
    """Lumina-DiMOO: tokens left masked after step i, floor(L cos(pi/2 (i+1)/N)) (at least 1), 0 at
    the end; float32 arithmetic, as the reference computes it."""
    left = []
    for i in range(steps - 1):
        frac = torch.cos(0.5 * math.pi * torch.tensor([(i + 1) / steps]))  # float32
        left.append(max(1, int(torch.floor(torch.tensor([float(num_tokens)]) * frac))))
    return left + [0]


def dimoo_schedule(steps: int, num_tokens: int) -> list[int]:
    """Lumina-DiMOO's counts: what each step reveals, from the tokens left masked after it."""
    prev, out = num_tokens, []
    for left in cosine_remaining(steps, num_tokens):
        out.append(prev - left)
        prev = left
    _check_positive("dimoo", out, num_tokens)
    return out


def _check_positive(name: str, counts: list[int], num_tokens: int) -> None:
    for i, c in enumerate(counts):
        if c < 1:
            raise ConfigError(f"the {name} schedule with {len(counts)} steps over {num_tokens} tokens reveals "
                              f"{c} tokens at step {i} (the reference's rounding); use fewer steps")
