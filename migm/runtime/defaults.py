"""The run a shipped model starts from (strategy, N, B: `assets.DEFAULT_RUNS`), recognised by its
base and shortcut checkpoints' digests wherever they are loaded from: the shipped files, or a
bundle built from them (its manifest's `sources`, so the default bundle too). And the speedup of
a run against the full sampler (vanilla, N base calls per image), which the CLIs report.

    run = default_run("tiny-animals")                 # DefaultRun(steps=32, budget=6, strategy="shortcut")
    steps, budget, strategy = fill(run, None, None, None)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .. import assets
from ..errors import BundleError, ConfigError
from ..models.checkpoint import checkpoint_digest

MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists files and settings; more is not one


@dataclass(frozen=True)
class DefaultRun:
    model: str
    steps: int
    budget: int
    strategy: str

    def describe(self) -> str:
        return f"{self.strategy}, N={self.steps}, B={self.budget}"


def default_run(model: str) -> DefaultRun:
    if model not in assets.DEFAULT_RUNS:
        raise ConfigError(f"unknown shipped model {model!r}; choose from {', '.join(assets.DEFAULT_RUNS)}")
    return DefaultRun(model=model, **assets.DEFAULT_RUNS[model])


@functools.lru_cache(maxsize=None)
def _shipped() -> dict[tuple[str, str], str]:
    """(base digest, shortcut digest) -> shipped model name."""
    out = {}
    for name in assets.DEFAULT_RUNS:
        d = assets.model_dir(name)
        if assets.has_checkpoint(d / "base") and assets.has_checkpoint(d / "shortcut"):
            out[(checkpoint_digest(d / "base"), checkpoint_digest(d / "shortcut"))] = name
    return out


def for_digests(base: str | None, shortcut: str | None) -> DefaultRun | None:
    """The default run of the shipped model with these base and shortcut weights, if one is."""
    name = _shipped().get((base, shortcut))
    return default_run(name) if name else None


def for_checkpoints(base: str | Path, shortcut: str | Path | None) -> DefaultRun | None:
    if shortcut is None:
        return None
    return for_digests(checkpoint_digest(base), checkpoint_digest(shortcut))


def for_bundle(path: str | Path) -> DefaultRun | None:
    """From the bundle's manifest (only read here: the pipeline that runs it verifies it)."""
    manifest = Path(path) / "manifest.json"
    try:
        with open(manifest, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise BundleError(f"cannot read {manifest}: {e.strerror or e}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        sources = json.loads(raw).get("sources") or {}
    except (ValueError, AttributeError):
        raise BundleError(f"{manifest} is not a JSON object") from None
    if not isinstance(sources, dict):
        return None
    return for_digests(sources.get("base"), sources.get("shortcut"))


def fill(run: DefaultRun | None, steps: int | None, budget: int | None,
         strategy: str | None) -> tuple[int | None, int | None, str | None]:
    """The N, B and strategy a run uses: the user's where given; a shipped model's default run fills
    the rest: its N when no N is given, and its B and strategy at that N unless a budget is given or
    the strategy is vanilla (`--strategy vanilla` or `--budget N`: the full sampler). At another N
    without a budget the sampler is the full one (a budget is chosen for its N)."""
    if run is None:
        return steps, budget, strategy
    steps = run.steps if steps is None else steps
    if budget is None and strategy != "vanilla" and steps == run.steps:
        budget, strategy = run.budget, strategy or run.strategy
    return steps, budget, strategy


def speedups(steps: int, base_cost: float, predicted: float, strategy: str,
             c: float | None) -> tuple[float, float | None]:
    """Against the full sampler (N base calls per image): (in base calls, N / base_cost; in time by the
    cost model, N / (base_cost + predicted * c) where a predicted step costs c base steps for the
    shortcut and about nothing for the training-free strategies; None without c for the shortcut).
    `base_cost` and `predicted` are per image (HybridStats.cost, .predicted_steps)."""
    calls = steps / base_cost if base_cost > 0 else float("inf")
    if strategy != "shortcut" or predicted == 0:
        return calls, calls
    if c is None:
        return calls, None
    return calls, steps / (base_cost + predicted * c)
