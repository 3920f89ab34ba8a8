"""Resumable training state: weights (+EMA) as a safetensors checkpoint, optimizer beside it.

`OUT.safetensors/.json` is always a usable model (the EMA weights where there are any);
`OUT.train.pt` holds what resuming needs (raw weights, optimizer, step, RNG).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from ..fileio import atomic_path
from ..models.checkpoint import save_checkpoint

Progress = Callable[[int, int, dict], None]  # (step, total, metrics)


def _state_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".train.pt")


def save_train_state(out, model, opt, step: int, ema=None, meta: dict | None = None) -> None:
    export = ema.module if ema is not None else model
    save_checkpoint(export, out, meta={**(meta or {}), "step": step})
    payload = {
        "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(_state_path(out)) as tmp:
        torch.save(payload, tmp)


def load_train_state(out, model, opt, ema=None) -> int:
    """Restore a previous run of the same output; return the step to continue from (0 if none)."""
    path = _state_path(out)
    if not path.exists():
        return 0
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["opt"])
    if ema is not None and payload["ema"] is not None:
        ema.load_state_dict(payload["ema"])
    torch.set_rng_state(payload["rng"])
    return int(payload["step"])


class EMA:
    """Exponential moving average of a model's weights (`module` holds the averages)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # warm-up so early averages are not dominated by the random init
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, sd):
        self.module.load_state_dict(sd)
