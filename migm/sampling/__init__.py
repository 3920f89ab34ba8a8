"""Sampling, pure tensors (no model imports): the sampler's settings, mask schedules, full-step
plans, the token-sampling kernel and the generation loop.

The names below are imported on first use (PEP 562), so that importing one torch-free module of
the package (strategies.py, for the command lines' --help) does not import torch."""

import importlib

__all__ = ["SamplerConfig", "full_step_plan", "mask_schedule"]
_WHERE = {"SamplerConfig": "config", "full_step_plan": "plan", "mask_schedule": "schedules"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
