"""The strategies for the steps that do not run the base model, written once: what each needs of the
models, how it treats N and B, and one line on how it gets the features of a predicted step. The
loop (sampling/loop.py), the pipeline, the command lines and the docs read them from here.

No torch in this module, so that the command lines can offer the names before importing it; the
tensor code (how each strategy advances the features) is sampling/predictors.py, keyed by these
objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

from ..errors import ConfigError


@dataclass(frozen=True)
class Need:
    """Something a strategy needs of the models besides the base model's forward. `name` is what
    the models list in their `provides` (sampling/loop.py `StepModels`, runtime `Capabilities`)."""
    name: str
    what: str  # for messages: "the X strategy needs <what>"
    remedy: str  # what to do where the models lack it


HEAD = Need("head", "the base model's head (logits from predicted features)", "give the models one")
SHORTCUT_MODEL = Need("shortcut", "a shortcut model, and none is loaded",
                "load one (a shortcut checkpoint, or a bundle built with one)")
CACHED_FORWARD = Need("cached", "the torch backend and a maskgit model, for the base model's cached forward",
              "run a maskgit model on the torch backend")
NEEDS = (HEAD, SHORTCUT_MODEL, CACHED_FORWARD)


@dataclass(frozen=True)
class Strategy:
    name: str
    doc: str  # how the features of a step that is not a full step are obtained
    needs: tuple[Need, ...] = ()
    hybrid: bool = True  # False: every step is a full step and the budget B is ignored (vanilla)
    budget_steps: bool = False  # N becomes B: vanilla sampling over fewer steps (fewer)
    cached_full: bool = False  # full steps run the cached forward and keep its keys/values
    reads_tokens: bool = False  # predicted steps read the token grid of both CFG branches
    graphable: bool = True  # capturable with the whole loop into one CUDA graph (no host sync)
    fallback: Strategy | None = None  # what a predicted step does where this strategy cannot predict yet

    def runs_on(self, provides: Collection[str]) -> bool:
        """Whether models that provide `provides` (need names) have all this strategy needs."""
        return all(n.name in provides for n in self.needs)

    def steps_and_budget(self, steps: int, budget: int | None) -> tuple[int, int]:
        """(N the loop runs, B of them full steps) for N steps asked and a budget B (None: every step)."""
        budget = steps if budget is None or not self.hybrid else budget
        if not 1 <= budget <= steps:
            raise ConfigError(f"budget B={budget} must be between 1 and the number of steps N={steps}")
        return (budget if self.budget_steps else steps), budget


VANILLA = Strategy("vanilla", "every step is full (B is ignored)", hybrid=False)
FEWER = Strategy("fewer", "vanilla sampling with N = B steps", budget_steps=True)
REUSE = Strategy("reuse", "f[i+1] = f[i] (feature caching)", needs=(HEAD,))
EXTRAPOLATE = Strategy(
    "extrapolate", "first-order extrapolation from the last two full steps (TaylorSeer-like); until the "
    "second full step there is no slope, and it reuses the last full step's features", needs=(HEAD,),
    fallback=REUSE)
MLCACHE = Strategy(
    "mlcache", "ML-Cache-style: recompute only the tokens just sampled plus the ~10% least-confident masked "
    "tokens against the cached keys/values of the last full step; every other position keeps its cached "
    "features", needs=(HEAD, CACHED_FORWARD), cached_full=True, reads_tokens=True,
    graphable=False)  # its per-step count of still-masked tokens is read on the host
SHORTCUT = Strategy("shortcut", "f[i+1] = S(f[i], tokens sampled at i, mask ratio after i)",
                    needs=(HEAD, SHORTCUT_MODEL))

ALL = (VANILLA, FEWER, REUSE, EXTRAPOLATE, MLCACHE, SHORTCUT)
STRATEGIES = tuple(s.name for s in ALL)  # the names, in the command lines' order
_BY_NAME = {s.name: s for s in ALL}


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; ConfigError listing the names otherwise."""
    if name not in _BY_NAME:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return _BY_NAME[name]


def check_strategy(name: str, provides: Collection[str], where: str = "") -> Strategy:
    """Can the strategy `name` run on models that provide `provides`? The strategy if so; else a
    ConfigError naming what is missing and what to do (`where` says which models, for the message).
    The one answer to this question: the loop, the pipeline and the command lines all ask here."""
    s = get_strategy(name)
    missing = [n for n in s.needs if n.name not in provides]
    if missing:
        can = ", ".join(t.name for t in ALL if t.runs_on(provides))
        raise ConfigError(f"the {s.name} strategy needs {missing[0].what}{f' ({where})' if where else ''}: "
                          f"{missing[0].remedy}, or choose one these models run ({can})")
    return s
