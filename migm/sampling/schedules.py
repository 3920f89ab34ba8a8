"""Mask schedules: how many tokens each of the N steps reveals.

Halton-MaskGIT v1.0 style: with r running 1 -> 0 over the steps, a curve gives the
share to reveal at each step; it is normalised to the grid size, floored, every step
reveals at least one token, and the total is made exactly `num_tokens`.
"""

from __future__ import annotations

import math

from ..errors import ConfigError

SCHEDULES = ("arccos", "cosine", "linear", "square", "root", "dimoo")


def _curve(name: str, r: float) -> float:
    if name == "arccos":
        return math.acos(r) / (math.pi / 2)
    if name == "cosine":
        return math.cos(r * math.pi / 2)
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
    rs = [1.0 - i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    vals = [_curve(name, r) for r in rs]
    total = sum(vals)
    counts = [max(1, int(v / total * num_tokens)) if total > 0 else 1 for v in vals]
    # Flooring leaves a remainder; the last step takes it, as in the reference.
    counts[-1] += num_tokens - sum(counts)
    # The minimum of one per step can overshoot: take the excess from the largest steps.
    while counts[-1] < 1 or sum(counts) > num_tokens:
        i = max(range(steps), key=lambda j: counts[j])
        counts[i] -= 1
        counts[-1] = num_tokens - sum(counts[:-1])
    return counts


def cosine_remaining(steps: int, num_tokens: int) -> list[int]:
    """Google MaskGIT / Lumina-DiMOO: tokens left masked after step i, floor(L cos(pi/2 (i+1)/N))."""
    return [int(math.floor(num_tokens * math.cos(math.pi / 2 * (i + 1) / steps))) for i in range(steps)]


def dimoo_schedule(steps: int, num_tokens: int) -> list[int]:
    """Lumina-DiMOO's counts: after step i, floor(L cos(pi/2 (i+1)/N)) tokens stay masked, at
    least one until the last step (so every step reveals at least one token)."""
    left = [max(r, steps - 1 - i) for i, r in enumerate(cosine_remaining(steps, num_tokens))]
    left[-1] = 0
    left = [min(r, num_tokens - 1 - i) for i, r in enumerate(left)]  # at least one revealed per step
    prev, out = num_tokens, []
    for r in left:
        out.append(prev - r)
        prev = r
    return out
