"""The sampler's settings, in one place: every caller (runtime, training, trajectories, CLIs,
benchmarks) takes a `SamplerConfig`, so training targets and the runtime sample alike.

    steps          N, the number of sampling steps
    schedule       how many tokens each step reveals (sampling/schedules.py)
    sampler        "halton": Halton-MaskGIT v1.0 (confidence noise annealed to 0 over the steps);
                   "dimoo": Lumina-DiMOO (the same noise at every step)
    temperature    logits are divided by it before sampling a token (1 = the model's distribution)
    tau            scale of the Gumbel noise added to the confidence (the sampler's randomness)
    guidance       classifier-free guidance weight w: (1 + w) * cond - w * uncond; 0 = no guidance
    guidance_ramp  "linear": w * i / (N - 1) at step i (Halton-MaskGIT); "constant": w (Lumina-DiMOO);
                   default: the sampler's own
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ConfigError
from .schedules import SCHEDULES, mask_schedule

SAMPLERS = ("halton", "dimoo")
RAMPS = ("linear", "constant")
_DEFAULT_RAMP = {"halton": "linear", "dimoo": "constant"}
# sane upper bounds: beyond them a value is a typo, not a setting
MAX_STEPS = 4096
MAX_GUIDANCE = 100.0
MAX_TAU = 100.0


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 16
    schedule: str = "arccos"
    sampler: str = "halton"
    temperature: float = 1.0
    tau: float = 4.5
    guidance: float = 0.0
    guidance_ramp: str = ""  # "": the sampler's own (see module doc)

    def __post_init__(self):
        if not self.guidance_ramp and self.sampler in _DEFAULT_RAMP:
            object.__setattr__(self, "guidance_ramp", _DEFAULT_RAMP[self.sampler])

    def validate(self, num_tokens: int | None = None) -> "SamplerConfig":
        """Raise ConfigError naming the first bad setting; return self (for chaining)."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps must be an integer between 1 and {MAX_STEPS}, got {self.steps!r}")
        if num_tokens is not None and self.steps > num_tokens:
            raise ConfigError(f"steps ({self.steps}) cannot exceed the number of tokens ({num_tokens})")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if num_tokens is not None:  # some N the schedule cannot split L into (a step revealing <= 0 tokens)
            mask_schedule(self.schedule, self.steps, num_tokens)
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.guidance_ramp not in RAMPS:
            raise ConfigError(f"unknown guidance ramp {self.guidance_ramp!r}; choose from {', '.join(RAMPS)}")
        _finite("temperature", self.temperature, low=0.0, high=100.0, open_low=True)
        _finite("tau", self.tau, low=0.0, high=MAX_TAU)
        _finite("guidance", self.guidance, low=0.0, high=MAX_GUIDANCE)
        return self

    def guidance_at(self, step: int) -> float:
        """The CFG weight at `step` (0-based): the ramp's value."""
        if self.guidance_ramp == "constant":
            return self.guidance
        return self.guidance * step_ratio(step, self.steps)

    @property
    def anneal(self) -> bool:
        """Whether the confidence noise decays over the steps (Halton-MaskGIT) or stays (Lumina-DiMOO)."""
        return self.sampler == "halton"

    def replace(self, **changes) -> "SamplerConfig":
        """A copy with `changes`; None values are ignored (so CLI options can pass through unset)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "sampler" in changes and "guidance_ramp" not in changes:
            changes["guidance_ramp"] = ""  # follow the new sampler's own ramp
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict | None, default: "SamplerConfig | None" = None) -> "SamplerConfig":
        """From a checkpoint's or manifest's `sampling` entry; unknown keys are an error. Older
        files name the guidance weight `cfg`."""
        if doc is not None and not isinstance(doc, dict):  # "ab" or [] from a file: the user's to fix, not a default
            raise ConfigError(f"sampling settings must be a JSON object, not {type(doc).__name__} {str(doc)[:60]!r}")
        doc = dict(doc or {})
        if "cfg" in doc:
            doc.setdefault("guidance", doc.pop("cfg"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown sampling settings {unknown}; known: {sorted(known)}")
        base = default or cls()
        if "sampler" in doc and "guidance_ramp" not in doc:
            doc["guidance_ramp"] = ""
        try:
            return replace(base, **doc)
        except TypeError as e:
            raise ConfigError(f"bad sampling settings {doc}: {e}") from None


def step_ratio(step: int, steps: int) -> float:
    """i / (N - 1): 0 at the first step, 1 at the last (1 for a single step)."""
    return step / (steps - 1) if steps > 1 else 1.0


def _finite(name: str, value, low: float, high: float, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        bound = f"> {low}" if open_low else f">= {low}"
        raise ConfigError(f"{name} must be {bound} and <= {high}, got {value}")
