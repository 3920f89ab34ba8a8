"""Sampling: mask schedules, the token-sampling kernel, the generation loop."""

from .schedules import mask_schedule

__all__ = ["mask_schedule"]
