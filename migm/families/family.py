"""What the rest of migm needs to know about a model family, in one object per family (in the
spirit of TensorRT's diffusion demo, which has one class per model): export, engines, runtime,
training and the CLIs ask the family instead of testing which model they hold.

A family says
  - what the base model is conditioned on (the condition input's name, how user input is
    encoded into it, and the unconditional input for classifier-free guidance);
  - the `ModelSpec` the loop and the runtime need (grid, codebook, condition shape);
  - its shortcut variant (config and model classes, how to call it);
  - its exportable modules (the shortcut with the base head folded in) and example inputs;
  - how to read the base head from a checkpoint without loading all of it;
  - its default sampler, what its models offer the strategies (`provides`: a cached forward for
    mlcache, say; sampling/strategies.py), and which precisions it supports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.checkpoint import config_from_dict
from ..sampling.config import SamplerConfig
from ..sampling.strategies import HEAD, SHORTCUT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    """What the loop and the runtime need to know of a model, whatever runs it."""
    family: str
    num_tokens: int
    grid: int
    codebook_size: int
    width: int
    num_classes: int = 0  # class-conditional families
    max_text: int = 0  # text-to-image families: prompt length (left-padded)
    pad_id: int = -1  # text: the padding id (an all-padding prompt is the unconditional input)
    text_vocab: int = 0  # text: prompt ids are 0..text_vocab-1
    feature_rows: int = 0  # T: the rows of the base's features (every position it sees), >= num_tokens
    prompt_template: str = "{prompt}"  # text: how a prompt is written before tokenizing
    uncond_ids: tuple = ()  # text: the unconditional prompt's ids (empty: all padding)

    @property
    def mask_id(self) -> int:
        """[MASK] in the loop's token convention: codes 0..K-1, K = mask."""
        return self.codebook_size

    def validate(self) -> "ModelSpec":
        """Raise ConfigError unless every field is in a sane range (configs come from files)."""
        for name, low, high in (("grid", 1, 512), ("codebook_size", 2, 1 << 20), ("width", 1, 1 << 16),
                                ("num_classes", 0, 1 << 20), ("max_text", 0, 1 << 13), ("text_vocab", 0, 1 << 22),
                                ("pad_id", -1, 1 << 22)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ConfigError(f"{name} must be an integer in {low}..{high}, got {v!r}")
        if self.num_tokens != self.grid * self.grid:
            raise ConfigError(f"num_tokens {self.num_tokens} is not grid x grid ({self.grid})")
        if not self.num_tokens <= self.feature_rows <= (1 << 20):
            raise ConfigError(f"feature_rows must be in {self.num_tokens}..{1 << 20}, got {self.feature_rows}")
        if "{prompt}" not in self.prompt_template or len(self.prompt_template) > 4096:
            raise ConfigError("prompt_template must hold {prompt} (and be under 4096 characters)")
        if len(self.uncond_ids) > self.max_text or not all(
                isinstance(i, int) and 0 <= i < max(self.text_vocab, 1) for i in self.uncond_ids):
            raise ConfigError(f"uncond_ids must be at most {self.max_text} text ids")
        return self

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["uncond_ids"] = list(self.uncond_ids)  # as JSON holds it
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> "ModelSpec":
        doc = {f.name: doc[f.name] for f in fields(cls) if f.name in doc}
        if "uncond_ids" in doc:
            doc["uncond_ids"] = tuple(doc["uncond_ids"])
        return cls(**doc)


class Family:
    """The interface; `families/maskgit.py` and `families/llada.py` fill it in."""

    name: str
    base_kind: str  # checkpoint kinds (models/checkpoint.py)
    shortcut_kind: str
    base_config_cls: type
    base_cls: type
    shortcut_config_cls: type
    shortcut_cls: type
    condition: str  # the base graph's condition input: "labels" or "prompt"
    # what users condition on, as the rest of migm asks it (none of it tests which family it holds):
    needs_tokenizer: bool  # conditions are text, read by the model's tokenizer (shipped beside the base)
    condition_kind: str  # one word for a condition: "class" or "prompt" (messages, a served row's input)
    conditions_keyword: str  # `Pipeline.generate`'s keyword for them: "classes" or "prompts"
    call_keyword: str  # diffusers' keyword (`Pipeline.__call__`): "class_labels" or "prompt"
    task: str  # for messages: "class-conditional" or "text-to-image"
    pipeline_tag: str  # the Hugging Face Hub's task tag for its models
    call_example: str  # a diffusers-style call's condition argument, for model cards
    # what of the strategies' needs (sampling/strategies.py) its models can have on some backend: a
    # family whose `cached_forward` gives one adds CACHED_FORWARD (mlcache)
    provides: frozenset[str] = frozenset({HEAD.name, SHORTCUT_MODEL.name})
    precisions: tuple[str, ...]
    sampler: SamplerConfig  # default sampling

    # ---- the model ----

    def spec(self, cfg) -> ModelSpec:
        raise NotImplementedError

    def spec_from_config(self, doc: dict) -> ModelSpec:
        """The spec from a base config as stored in a manifest or checkpoint (a dict)."""
        return self.spec(config_from_dict(self.base_config_cls, doc))

    def uncond(self, spec: ModelSpec, device=None) -> torch.Tensor:
        """The unconditional input, one row ([1] or [1, max_text]): broadcast over a batch."""
        raise NotImplementedError

    def image_rows(self, spec: ModelSpec) -> torch.Tensor:
        """Which rows of the base's features are the L image positions (grid order)."""
        raise NotImplementedError

    def loss_rows(self, spec: ModelSpec, still_masked: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The feature rows [b, T] a shortcut's MSE is taken over, given the grid positions still
        masked [b, L] and the rows' conditions."""
        raise NotImplementedError

    def encode(self, spec: ModelSpec, conditions: Sequence | torch.Tensor, *, class_names: Sequence[str] = (),
               tokenizer: Any = None) -> torch.Tensor:
        """User conditions (class names/indices, or prompts as text or ids) -> the base model's
        condition tensor; ConfigError/PromptError naming what is wrong."""
        raise NotImplementedError

    def example_conditions(self, spec: ModelSpec, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n valid conditions (benchmarks, export examples)."""
        raise NotImplementedError

    def split_conditions(self, text: str) -> list[str]:
        """Conditions typed into one text field, stripped, empty ones dropped."""
        raise NotImplementedError

    def input_help(self, spec: ModelSpec, class_names: Sequence[str] = ()) -> tuple[str, str]:
        """A condition a user might type, and a line saying what to type (a form's start and hint)."""
        raise NotImplementedError

    @property
    def text(self) -> bool:
        """Conditioned on text prompts: `needs_tokenizer` (what engines/build.py still asks)."""
        return self.needs_tokenizer

    def describe(self, cfg_doc: dict) -> str:
        """One line for `migm-export inspect`."""
        raise NotImplementedError

    # ---- the shortcut ----

    def shortcut_config(self, base_cfg, *, ratio: int = 2, n_block: int = 1, heads: int = 4,
                        cross_attention: bool = True, mlp_ratio: float | None = None, layout: str = "upstream"):
        raise NotImplementedError

    def new_shortcut(self, base, cfg) -> nn.Module:
        """A fresh shortcut for `base` (frozen copies of its embeddings loaded)."""
        model = self.shortcut_cls(cfg)
        model.load_base_embeddings(base)
        return model

    def run_shortcut(self, model, features, new_pos, new_tok, key_mask, mask_ratio, cond) -> torch.Tensor:
        """Next features; `cond` holds every row's condition (both CFG branches)."""
        raise NotImplementedError

    # ---- export and runtime ----

    def shortcut_step(self, shortcut: nn.Module, base: nn.Module) -> nn.Module:
        """The exported shortcut: next features and their logits (the base head folded in)."""
        raise NotImplementedError

    def shortcut_takes_condition(self) -> bool:
        """Whether the exported shortcut has the condition as an input."""
        raise NotImplementedError

    def read_head(self, handle, spec: ModelSpec, device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The base head from an open safetensors checkpoint (`safe_open` handle), reading only its rows."""
        raise NotImplementedError

    def cached_forward(self, base: nn.Module, autocast: bool):
        """The base model's cached/partial forward for mlcache, or None where the family has none."""
        return None
