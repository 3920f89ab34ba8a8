"""Sampling, pure tensors (no model imports): the sampler's settings, mask schedules, full-step
plans, the token-sampling kernel and the generation loop."""

from .config import SamplerConfig
from .plan import full_step_plan
from .schedules import mask_schedule

__all__ = ["SamplerConfig", "full_step_plan", "mask_schedule"]
