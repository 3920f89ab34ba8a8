"""The llada family: text-to-image over one bidirectional sequence (Lumina-DiMOO layout), with the
DiMOO variant of the shortcut (which also reads the prompt)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..choices import BUILD_PRECISIONS
from ..errors import ConfigError
from ..models.llada import LLaDA, LLaDAConfig
from ..models.shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
from ..models.text import encode_prompts
from ..sampling.config import SamplerConfig
from .family import Family, ModelSpec


class LLaDAShortcutStep(nn.Module):
    """The DiMOO shortcut plus the image-code rows of the base LM head, in one graph."""

    def __init__(self, shortcut: LLaDAShortcut, base: LLaDA):
        super().__init__()
        self.shortcut = shortcut
        self.register_buffer("code_rows", base.lm_head.weight[base.cfg.text_vocab:].detach().clone())

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt):
        nxt = self.shortcut(features, new_pos, new_tok, key_mask, mask_ratio, prompt)
        return nxt, nxt[:, self.shortcut.slots] @ self.code_rows.T  # the image positions


class LLaDAFamily(Family):
    name = "llada"
    base_kind, shortcut_kind = "llada", "llada-shortcut"
    base_config_cls, base_cls = LLaDAConfig, LLaDA
    shortcut_config_cls, shortcut_cls = LLaDAShortcutConfig, LLaDAShortcut
    condition = "prompt"
    needs_tokenizer = True
    condition_kind, conditions_keyword, call_keyword = "prompt", "prompts", "prompt"
    task, pipeline_tag, call_example = "text-to-image", "text-to-image", 'prompt="a small cat on the left"'
    precisions = BUILD_PRECISIONS
    sampler = SamplerConfig(steps=64, schedule="dimoo", sampler="dimoo", tau=1.0)

    def spec(self, cfg: LLaDAConfig) -> ModelSpec:
        return ModelSpec(self.name, cfg.num_tokens, cfg.grid, cfg.codebook_size, cfg.width, max_text=cfg.max_text,
                         pad_id=cfg.pad_id, text_vocab=cfg.text_vocab, feature_rows=cfg.seq_len,
                         prompt_template=cfg.prompt_template, uncond_ids=tuple(cfg.uncond_ids))

    def uncond(self, spec: ModelSpec, device=None) -> torch.Tensor:
        """The model's unconditional prompt, left-padded (all padding where it has none)."""
        row = torch.full((1, spec.max_text), spec.pad_id, dtype=torch.long)
        if spec.uncond_ids:
            row[0, -len(spec.uncond_ids):] = torch.tensor(spec.uncond_ids)
        return row.to(device)

    def image_rows(self, spec: ModelSpec) -> torch.Tensor:
        """The image slots of the sequence: after the prompt, <boa> and <boi>, row by row (a newline
        token after each row where the layout has them)."""
        newline = spec.feature_rows - spec.max_text - 4 - spec.num_tokens == spec.grid
        r, c = torch.meshgrid(torch.arange(spec.grid), torch.arange(spec.grid), indexing="ij")
        return (spec.max_text + 2 + r * (spec.grid + newline) + c).reshape(-1)

    def loss_rows(self, spec, still_masked, cond) -> torch.Tensor:
        """Every position of the sequence but the prompt's padding (upstream trains on all)."""
        rows = torch.ones(len(cond), spec.feature_rows, dtype=torch.bool, device=cond.device)
        rows[:, : spec.max_text] = cond != spec.pad_id
        return rows

    def encode(self, spec, conditions, *, class_names=(), tokenizer=None) -> torch.Tensor:
        """Text prompts (read by the tokenizer) or prompt ids [n, max_text], left-padded with the pad
        id (so the prompt ends right before the image, as in Lumina-DiMOO) -> prompt ids."""
        if isinstance(conditions, str):
            conditions = [conditions]
        if conditions is None or len(conditions) == 0:
            raise ConfigError("no prompts given")
        if isinstance(conditions, torch.Tensor):
            if conditions.dim() != 2 or conditions.shape[1] != spec.max_text:
                raise ConfigError(f"prompt ids must be [n, {spec.max_text}] with n >= 1, got {list(conditions.shape)}")
            if conditions.min() < 0 or conditions.max() >= spec.text_vocab:
                raise ConfigError(f"prompt ids must be text tokens in 0..{spec.text_vocab - 1}")
            return conditions.long()
        if not all(isinstance(p, str) for p in conditions):
            raise ConfigError("this is a text-to-image model: give prompts as text (or ids), not classes")
        if tokenizer is None:
            raise ConfigError("this model has no tokenizer: give prompt token ids ([n, max_text] LongTensor, "
                              "left-padded with the pad id)")
        return encode_prompts(tokenizer, list(conditions), spec.max_text, spec.text_vocab, spec.prompt_template,
                              spec.pad_id)

    def example_conditions(self, spec, n, generator=None) -> torch.Tensor:
        """Random prompts of half the prompt length (left-padded), from ids below the special tokens."""
        ids = torch.randint(0, max(spec.pad_id - 16, 1), (n, spec.max_text), generator=generator)
        ids[:, : spec.max_text // 2] = spec.pad_id
        return ids

    def split_conditions(self, text: str) -> list[str]:
        """Prompts one a line."""
        return [p.strip() for p in (text or "").splitlines() if p.strip()]

    def input_help(self, spec, class_names=()) -> tuple[str, str]:
        return "a small cat on the left", "a prompt, e.g. a small cat on the left / a large zebra at the top"

    def describe(self, cfg_doc: dict) -> str:
        return (f"prompts of {cfg_doc['max_text']} tokens ({cfg_doc['text_vocab']} text ids), "
                f"{cfg_doc['depth']} x {cfg_doc['width']}")

    def shortcut_config(self, base_cfg: LLaDAConfig, *, ratio=2, n_block=1, heads=0, cross_attention=True,
                        mlp_ratio=None, layout="upstream") -> LLaDAShortcutConfig:
        if not cross_attention:
            raise ConfigError("the DiMOO shortcut has no self-attention-only ablation")
        return LLaDAShortcutConfig(base=base_cfg.to_dict(), ratio=ratio, n_block=n_block, heads=heads,
                                   mlp_ratio=mlp_ratio or 2.75, layout=layout)

    def run_shortcut(self, model, features, new_pos, new_tok, key_mask, mask_ratio, cond):
        return model(features, new_pos, new_tok, key_mask, mask_ratio, cond)  # cond: the prompts' ids

    def shortcut_step(self, shortcut, base) -> nn.Module:
        return LLaDAShortcutStep(shortcut, base)

    def shortcut_takes_condition(self) -> bool:
        return True

    def read_head(self, handle, spec, device):
        v, k = spec.text_vocab, spec.codebook_size
        w = handle.get_slice("lm_head.weight")[v:v + k].float().T.contiguous().to(device)  # the image-code rows
        slots = self.image_rows(spec).to(device)
        return lambda f: f[:, slots].float() @ w


LLADA = LLaDAFamily()
