"""The MIGM-Shortcut model, DiMOO variant (for the `llada` base family).

The same computation as the MaskGIT variant (models/shortcut.py): bottleneck d -> d/r,
cross-attention from the features to the newly sampled tokens, MLP, self-attention, MLP,
a final norm with FiLM on the mask ratio, proj_out and the residual f + delta, with:

  - RMSNorm and SwiGLU MLPs, as the base;
  - RoPE at absolute sequence positions, in the self-attention and the cross-attention
    (queries at the image tokens' positions, keys at the new tokens' and the prompt's);
  - the prompt's tokens as extra cross-attention keys/values: the conditional branch sees
    its prompt, the unconditional branch (an empty, all-padding prompt) sees none.

    forward(features [B, L, d], new_pos [B, M], new_tok [B, M], key_mask [B, M],
            mask_ratio [B], prompt [B, max_text]) -> next features [B, L, d]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .llada import LLaDAConfig, RMSNorm, SwiGLU, apply_rope, rope_tables
from .shortcut import timestep_embedding


@dataclass
class LLaDAShortcutConfig:
    base: dict  # the base model's LLaDAConfig fields (vocab, layout, RoPE)
    ratio: int = 2
    n_block: int = 1
    heads: int = 16
    mlp_ratio: float = 2.75  # SwiGLU hidden = ratio * inner (LLaMA's 8/3, rounded)

    @property
    def base_cfg(self) -> LLaDAConfig:
        return LLaDAConfig(**self.base)

    @property
    def inner(self) -> int:
        return self.base_cfg.width // self.ratio

    @property
    def num_tokens(self) -> int:
        return self.base_cfg.num_tokens

    @property
    def codebook_size(self) -> int:
        return self.base_cfg.codebook_size

    def to_dict(self) -> dict:
        return asdict(self)


class RopeAttention(nn.Module):
    def __init__(self, dim: int, heads: int, theta: float):
        super().__init__()
        self.heads, self.theta = heads, theta
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x, x_pos, ctx, ctx_pos, key_mask=None):
        """x [B, N, D] at sequence positions x_pos [N] attends to ctx [B, M, D] at ctx_pos [B, M] or [M]."""
        b, n, d = x.shape
        h, hd = self.heads, d // self.heads
        q = self.q(x).view(b, n, h, hd).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, hd).permute(2, 0, 3, 1, 4)
        qc, qs = rope_tables(x_pos, hd, self.theta)
        kc, ks = rope_tables(ctx_pos, hd, self.theta)
        if kc.dim() == 3:  # per-row key positions [B, M, hd] -> [B, 1, M, hd]
            kc, ks = kc[:, None], ks[:, None]
        q, k = apply_rope(q, qc, qs), apply_rope(k, kc, ks)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class LLaDAShortcutBlock(nn.Module):
    def __init__(self, cfg: LLaDAShortcutConfig):
        super().__init__()
        d, eps, theta = cfg.inner, cfg.base_cfg.norm_eps, cfg.base_cfg.rope_theta
        hidden = int(cfg.mlp_ratio * d)
        self.norm_q, self.norm_kv = RMSNorm(d, eps), RMSNorm(d, eps)
        self.cross = RopeAttention(d, cfg.heads, theta)
        self.norm_mlp1 = RMSNorm(d, eps)
        self.mlp1 = SwiGLU(d, hidden)
        self.norm_self = RMSNorm(d, eps)
        self.attn = RopeAttention(d, cfg.heads, theta)
        self.norm_mlp2 = RMSNorm(d, eps)
        self.mlp2 = SwiGLU(d, hidden)

    def forward(self, x, x_pos, ctx, ctx_pos, ctx_mask):
        x = x + self.cross(self.norm_q(x), x_pos, self.norm_kv(ctx), ctx_pos, ctx_mask)
        x = x + self.mlp1(self.norm_mlp1(x))
        h = self.norm_self(x)
        x = x + self.attn(h, x_pos, h, x_pos)
        return x + self.mlp2(self.norm_mlp2(x))


class LLaDAShortcut(nn.Module):
    def __init__(self, cfg: LLaDAShortcutConfig):
        super().__init__()
        self.cfg = cfg
        bc = cfg.base_cfg
        d, di = bc.width, cfg.inner
        # frozen copy of the base's token embedding (a buffer: exported with the shortcut,
        # never trained); positions come from RoPE, so there is no position table
        self.register_buffer("tok_emb", torch.zeros(bc.vocab, d))
        self.init_buffers()
        self.proj_in = nn.Linear(d, di)
        self.proj_tok = nn.Linear(d, di)
        self.blocks = nn.ModuleList(LLaDAShortcutBlock(cfg) for _ in range(cfg.n_block))
        self.norm_out = RMSNorm(di, bc.norm_eps)
        self.film = nn.Sequential(nn.Linear(di, di), nn.SiLU(), nn.Linear(di, 2 * di))
        self.proj_out = nn.Linear(di, d)
        for layer in (self.proj_out, self.film[-1]):  # start as feature reuse
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def init_buffers(self, device=None) -> None:
        self.register_buffer("slots", self.cfg.base_cfg.image_slots.to(device), persistent=False)

    @torch.no_grad()
    def load_base_embeddings(self, base) -> None:
        self.tok_emb.copy_(base.tok_emb.weight)

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt):
        bc = self.cfg.base_cfg
        b = features.shape[0]
        x = self.proj_in(features)
        # context: the new image tokens (ids shifted into the code rows) and the prompt's tokens
        ids = torch.cat([new_tok + bc.text_vocab, prompt], 1)
        ctx = self.proj_tok(self.tok_emb[ids].to(x.dtype))
        text_pos = torch.arange(bc.max_text, device=prompt.device).expand(b, -1)
        ctx_pos = torch.cat([self.slots[new_pos], text_pos], 1)
        ctx_mask = torch.cat([key_mask, prompt != bc.pad_id], 1)
        for block in self.blocks:
            x = block(x, self.slots, ctx, ctx_pos, ctx_mask)
        t = timestep_embedding(mask_ratio * 1000, self.cfg.inner).to(x.dtype)
        scale, shift = self.film(t).unsqueeze(1).chunk(2, -1)
        x = self.norm_out(x) * (1 + scale) + shift
        return features + self.proj_out(x)
