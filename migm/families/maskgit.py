"""The maskgit family: class-conditional MaskGIT (Halton-MaskGIT v1.0 layout) with the MaskGIT
variant of the shortcut."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..choices import BUILD_PRECISIONS
from ..errors import ConfigError
from ..fileio import clip
from ..models.maskgit import MaskGIT, MaskGITConfig
from ..models.shortcut import Shortcut, ShortcutConfig
from ..sampling.config import SamplerConfig
from ..sampling.strategies import NEEDS
from .family import Family, ModelSpec


class ShortcutStep(nn.Module):
    """The shortcut plus the base head: next features and their logits in one graph."""

    def __init__(self, shortcut: Shortcut, base: MaskGIT):
        super().__init__()
        self.shortcut = shortcut
        self.register_buffer("code_emb", base.tok_emb.weight[: base.cfg.codebook_size].detach().clone())
        self.register_buffer("bias", base.bias.detach().clone())

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio):
        nxt = self.shortcut(features, new_pos, new_tok, key_mask, mask_ratio)
        return nxt, nxt[:, : self.bias.shape[0]] @ self.code_emb.T + self.bias  # the grid rows


class CachedMaskGIT:
    """ML-Cache's view of a MaskGIT: `forward_cached` at full steps (features, logits, per-block
    keys/values) and `forward_subset` at the others; bf16 autocast on a CPU as the backend runs."""

    def __init__(self, model: MaskGIT, autocast: bool = True):
        self.model = model
        self.autocast = autocast

    def _ctx(self, t):
        return torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=self.autocast and t.device.type == "cpu")

    def full(self, tokens, labels):
        with self._ctx(tokens):
            features, logits, cache = self.model.forward_cached(tokens, labels)
        return features.float(), logits.float(), cache

    def subset(self, tokens, labels, positions, cache):
        with self._ctx(tokens):
            return self.model.forward_subset(tokens, labels, positions, cache).float()


class MaskGITFamily(Family):
    name = "maskgit"
    base_kind, shortcut_kind = "maskgit", "shortcut"
    base_config_cls, base_cls = MaskGITConfig, MaskGIT
    shortcut_config_cls, shortcut_cls = ShortcutConfig, Shortcut
    condition = "labels"
    needs_tokenizer = False
    condition_kind, conditions_keyword, call_keyword = "class", "classes", "class_labels"
    task, pipeline_tag, call_example = "class-conditional", "unconditional-image-generation", "class_labels=[0]"
    provides = frozenset(n.name for n in NEEDS)  # its cached forward too (mlcache, on the torch backend)
    precisions = BUILD_PRECISIONS
    sampler = SamplerConfig(steps=16, schedule="arccos", sampler="halton", tau=4.5)

    def spec(self, cfg: MaskGITConfig) -> ModelSpec:
        return ModelSpec(self.name, cfg.num_tokens, cfg.grid, cfg.codebook_size, cfg.width,
                         num_classes=cfg.num_classes, feature_rows=cfg.num_tokens + 1)

    def uncond(self, spec: ModelSpec, device=None) -> torch.Tensor:
        return torch.full((1,), spec.num_classes, dtype=torch.long, device=device)  # the "no class" label

    def image_rows(self, spec: ModelSpec) -> torch.Tensor:
        return torch.arange(spec.num_tokens)  # the grid rows come first, then the class row

    def loss_rows(self, spec, still_masked, cond) -> torch.Tensor:
        """The grid positions still masked (their logits are the ones the sampler uses), not the class row."""
        return torch.cat([still_masked, torch.zeros_like(still_masked[:, :1])], 1)

    def encode(self, spec, conditions, *, class_names=(), tokenizer=None) -> torch.Tensor:
        """Class names or indices -> class ids [n]."""
        if isinstance(conditions, (str, bytes)):
            conditions = [conditions]
        if conditions is None or len(conditions) == 0:
            raise ConfigError("no classes given")
        if isinstance(conditions, torch.Tensor):
            conditions = conditions.tolist()
        return torch.tensor([class_index(c, spec.num_classes, class_names) for c in conditions], dtype=torch.long)

    def example_conditions(self, spec, n, generator=None) -> torch.Tensor:
        return torch.arange(n) % spec.num_classes  # every class in turn

    def split_conditions(self, text: str) -> list[str]:
        """Classes by commas or lines."""
        return [c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip()]

    def input_help(self, spec, class_names=()) -> tuple[str, str]:
        """The third class (or the last), and all of them."""
        names = list(class_names) or [str(i) for i in range(spec.num_classes)]
        return names[min(2, len(names) - 1)], "a class: " + ", ".join(names)

    def describe(self, cfg_doc: dict) -> str:
        return f"{cfg_doc['num_classes']} classes, {cfg_doc['depth']} x {cfg_doc['width']}"

    def shortcut_config(self, base_cfg: MaskGITConfig, *, ratio=2, n_block=1, heads=4, cross_attention=True,
                        mlp_ratio=None, layout="upstream") -> ShortcutConfig:
        return ShortcutConfig(width=base_cfg.width, codebook_size=base_cfg.codebook_size, vocab=base_cfg.vocab,
                              num_tokens=base_cfg.num_tokens, ratio=ratio, n_block=n_block, heads=heads or 4,
                              mlp_ratio=int(mlp_ratio or 4), cross_attention=cross_attention, layout=layout)

    def run_shortcut(self, model, features, new_pos, new_tok, key_mask, mask_ratio, cond):
        return model(features, new_pos, new_tok, key_mask, mask_ratio)  # the class is not an input

    def shortcut_step(self, shortcut, base) -> nn.Module:
        return ShortcutStep(shortcut, base)

    def shortcut_takes_condition(self) -> bool:
        return False

    def read_head(self, handle, spec, device):
        w = handle.get_slice("tok_emb.weight")[: spec.codebook_size].float().T.contiguous().to(device)
        bias = handle.get_tensor("bias").float().to(device)
        return lambda f: f[:, : spec.num_tokens].float() @ w + bias

    def cached_forward(self, base, autocast):
        return CachedMaskGIT(base, autocast)


def class_index(name_or_index, num_classes: int, class_names: Sequence[str] = ()) -> int:
    """A class given by index or name -> index; ConfigError naming the valid choices."""
    s = str(name_or_index).strip()
    if s.lstrip("-").isdigit():
        i = int(s)
        if not 0 <= i < num_classes:
            raise ConfigError(f"class {i} is out of range 0..{num_classes - 1}")
        return i
    if s in class_names:
        return list(class_names).index(s)
    choices = ", ".join(class_names) if class_names else f"0..{num_classes - 1}"
    raise ConfigError(f"unknown class {clip(s)!r}; choose from {clip(choices)}")


MASKGIT = MaskGITFamily()
