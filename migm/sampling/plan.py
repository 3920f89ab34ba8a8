"""Full-step plans: which of the N steps run the base model in hybrid (MIGM-Shortcut) sampling."""

from __future__ import annotations

from ..errors import ConfigError


def full_step_plan(steps: int, budget: int) -> list[int]:
    """The B full steps out of N, sorted: step 0, then max(prev + 1, round(N * (k / B))) for k = 1..B-1.

    As the reference computes it: k / B first, then the product, then Python's round (half to
    even); the order decides floating-point ties for 68 (N, B) pairs up to N = 128 (N = 45, B = 10:
    step 31 at k = 7, where round(N * k / B) gives 32). B = N gives every step (vanilla sampling).
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not 1 <= budget <= steps:
        raise ConfigError(f"budget B must be between 1 and the number of steps N={steps}, got {budget}")
    plan = [0]
    for k in range(1, budget):
        plan.append(max(plan[-1] + 1, round(steps * (k / budget))))
    return plan
