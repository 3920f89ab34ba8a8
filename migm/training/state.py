"""Resumable training state: weights (+EMA) as a safetensors checkpoint, optimizer beside it.

`OUT.safetensors/.json` is always a usable model (the EMA weights where there are any);
`OUT.train.pt` holds what resuming needs (raw weights, optimizer, step, RNG) and the settings of
the run. It is tensors, dicts, lists and numbers only, and is read with `weights_only=True`: a
crafted file in a shared run folder cannot run code. A resume with other settings is refused
(training on would silently mix two runs).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError, ConfigError, first_line
from ..fileio import atomic_path, check_writable
from ..models.checkpoint import save_checkpoint

Progress = Callable[[int, int, dict], None]  # (step, total, metrics)


def _state_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".train.pt")


def check_run(out, steps: int) -> None:
    """Before any work: a positive number of steps, and an output folder that takes files."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000_000:
        raise ConfigError(f"steps must be an integer in 1..10000000, got {steps!r}")
    check_writable(Path(out).parent)


def save_train_state(out, model, opt, step: int, ema=None, meta: dict | None = None,
                     settings: dict | None = None) -> None:
    export = ema.module if ema is not None else model
    save_checkpoint(export, out, meta={**(meta or {}), "step": step})
    payload = {
        "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": torch.get_rng_state(), "settings": json.dumps(settings or {}, sort_keys=True),
    }
    with atomic_path(_state_path(out)) as tmp:
        torch.save(payload, tmp)


def load_train_state(out, model, opt, ema=None, settings: dict | None = None) -> int:
    """Restore a previous run of the same output; return the step to continue from (0 if none).

    `settings` (JSON-able) must equal the ones the run was saved with; the number of steps is not
    among them (a resume may train longer)."""
    path = _state_path(out)
    if not path.exists():
        return 0
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(payload.get("settings", "{}"))
        step = int(payload["step"])
    except Exception as e:  # a truncated zip, a pickle with code in it (refused), a foreign file
        raise CheckpointError(f"cannot resume from {path}: not a migm training state ({first_line(e)}); "
                              "delete it to start over") from None
    want = json.loads(json.dumps(settings or {}, sort_keys=True))
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        shown = ", ".join(f"{k} {saved.get(k)!r} then, {want.get(k)!r} now" for k in diff[:4])
        raise ConfigError(f"{path} was saved by a run with other settings ({shown}): resume with the same "
                          "settings, or choose another --out")
    try:
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["opt"])
        if ema is not None and payload["ema"] is not None:
            ema.load_state_dict(payload["ema"])
        torch.set_rng_state(payload["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this model ({first_line(e)}); "
                              "delete it to start over") from None
    return step


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
