"""The MIGM-Shortcut model, DiMOO variant (for the `llada` base family), in the layout of the
released DiMOO-Shortcut weights (models/loaders.py maps their keys).

Over the WHOLE sequence the base sees (prompt, special tokens, image tokens, newlines), with
the base's own block design at a bottleneck width d/r (RMSNorm, SwiGLU, RoPE at absolute
sequence positions):

    x = proj_in(f)                                  d -> d/r, every sequence position
    t = proj_tok(tok_emb[keys])                     keys: the image tokens just sampled and, on the
                                                    conditional branch, every prompt token
    block: x += CrossAttn(q=N(x), k=v=N(t))         one RMSNorm N for both, RoPE at each key's position
           x += SwiGLU(N(x))
           x = SelfBlock(x)                         the base's block: RMSNorm, RoPE self-attention, SwiGLU
    x = RMSNorm(x); scale, shift = adaLN(TimeMLP(sinusoid_256(mask_ratio * 1000)))
    f_next = f + proj_out(x * (1 + scale) + shift)

Prompts are left-padded: padding is no key anywhere, which equals Lumina-DiMOO's unpadded
sequences (RoPE depends on relative positions only). The unconditional branch (the row equal to
the model's unconditional prompt) keys on its new image tokens only, as upstream.
`layout="migm"` is this project's first design (image positions only, separate norms, FiLM),
kept to compare the two trained from scratch. The base's token embedding is referenced, never
copied or saved (`load_base_embeddings`).

    forward(features [B, T, d], new_pos [B, M] grid positions, new_tok [B, M] codes, key_mask [B, M],
            mask_ratio [B], prompt [B, max_text]) -> next features [B, T, d]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .llada import Attention, Block, LLaDAConfig, RMSNorm, SwiGLU, rope_tables
from .shortcut import timestep_embedding


@dataclass
class LLaDAShortcutConfig:
    base: dict  # the base model's LLaDAConfig fields (vocab, layout, RoPE)
    ratio: int = 2
    n_block: int = 1
    heads: int = 0  # 0: the base's (upstream keeps it, halving the head width)
    mlp: int = 0  # SwiGLU hidden size; 0: the base's (upstream keeps it)
    layout: str = "upstream"
    mlp_ratio: float = 2.75  # the migm layout's SwiGLU hidden size over its inner width

    @property
    def base_cfg(self) -> LLaDAConfig:
        return LLaDAConfig(**self.base)

    @property
    def inner(self) -> int:
        return round(self.base_cfg.width / self.ratio)

    @property
    def block_cfg(self) -> LLaDAConfig:
        """The base's config at the bottleneck width (its blocks are the shortcut's)."""
        b = self.base_cfg
        mlp = self.mlp or (b.mlp if self.layout == "upstream" else int(self.mlp_ratio * self.inner))
        return LLaDAConfig(**{**self.base, "width": self.inner, "heads": self.heads or b.heads, "mlp": mlp})

    @property
    def num_tokens(self) -> int:
        return self.base_cfg.num_tokens

    @property
    def codebook_size(self) -> int:
        return self.base_cfg.codebook_size

    def to_dict(self) -> dict:
        return asdict(self)


class CrossBlock(nn.Module):
    """The base block with keys/values from the sampled tokens: RMSNorm on both sides (one norm)."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.block = Block(cfg)

    def forward(self, x, cos, sin, ctx, ctx_cos, ctx_sin, ctx_mask):
        b = self.block
        x = x + b.attn(b.attn_norm(x), cos, sin, ctx_mask, b.attn_norm(ctx), ctx_cos, ctx_sin)
        return x + b.mlp(b.mlp_norm(x))


class LLaDAShortcut(nn.Module):
    def __init__(self, cfg: LLaDAShortcutConfig):
        super().__init__()
        self.cfg = cfg
        bc, ic = cfg.base_cfg, cfg.block_cfg
        d, di = bc.width, cfg.inner
        # the base's token embedding: referenced by load_base_embeddings, never saved
        self.register_buffer("tok_emb", torch.zeros(bc.vocab, d), persistent=False)
        self.init_buffers()
        self.proj_in = nn.Linear(d, di)
        self.proj_tok = nn.Linear(d, di)
        self.upstream = cfg.layout == "upstream"
        if self.upstream:
            self.cross = nn.ModuleList(CrossBlock(ic) for _ in range(cfg.n_block))
            self.blocks = nn.ModuleList(Block(ic) for _ in range(cfg.n_block))
            self.norm_out = RMSNorm(di, bc.norm_eps)
            mid = round(math.sqrt(di * 256))
            self.time_dim = 256
            self.time = nn.Sequential(nn.Linear(256, mid), nn.SiLU(), nn.Linear(mid, di))
            self.modulation = nn.Linear(di, 2 * di)
            last = self.modulation
        else:
            self.blocks = nn.ModuleList(_MigmBlock(ic) for _ in range(cfg.n_block))
            self.norm_out = RMSNorm(di, bc.norm_eps)
            self.time_dim = di
            self.time = nn.Identity()
            self.modulation = nn.Sequential(nn.Linear(di, di), nn.SiLU(), nn.Linear(di, 2 * di))
            last = self.modulation[-1]
        self.proj_out = nn.Linear(di, d)
        for layer in (self.proj_out, last):  # start as feature reuse
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def init_buffers(self, device=None) -> None:
        """Index buffers (the image slots, the unconditional prompt); again after `to_empty` from meta."""
        bc = self.cfg.base_cfg
        self.register_buffer("slots", bc.image_slots.to(device), persistent=False)
        uncond = torch.full((bc.max_text,), bc.pad_id, dtype=torch.long)
        if bc.uncond_ids:
            uncond[-len(bc.uncond_ids):] = torch.tensor(bc.uncond_ids)
        self.register_buffer("uncond", uncond.to(device), persistent=False)

    @torch.no_grad()
    def load_base_embeddings(self, base) -> None:
        self.tok_emb = base.tok_emb.weight.detach()

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt):
        bc = self.cfg.base_cfg
        b, t, _ = features.shape
        text = torch.arange(bc.max_text, device=prompt.device).expand(b, -1)
        conditional = (prompt != self.uncond).any(-1, keepdim=True)  # upstream: no prompt keys when unconditional
        ids = torch.cat([new_tok + bc.text_vocab, prompt], 1)
        ctx_pos = torch.cat([self.slots[new_pos], text], 1)
        ctx_mask = torch.cat([key_mask, (prompt != bc.pad_id) & conditional], 1)
        ctx = self.proj_tok(self.tok_emb[ids].to(features.dtype))
        hd = self.cfg.block_cfg.width // self.cfg.block_cfg.heads
        # RoPE tables in fp32: bf16 angles lose whole radians at thousands of positions
        kc, ks = rope_tables(ctx_pos, hd, bc.rope_theta)
        kc, ks = kc[:, None], ks[:, None]
        if self.upstream:
            x = self.proj_in(features)
            cos, sin = rope_tables(torch.arange(t, device=features.device), hd, bc.rope_theta)
            real = torch.ones(b, t, dtype=torch.bool, device=features.device)
            real[:, : bc.max_text] = prompt != bc.pad_id  # padding is no key for anyone
            for cross, block in zip(self.cross, self.blocks):
                x = cross(x, cos, sin, ctx, kc, ks, ctx_mask[:, None, None, :])
                x = block(x, cos, sin, real[:, None, None, :])
            out = features
        else:  # the image positions only
            x = self.proj_in(features[:, self.slots])
            cos, sin = rope_tables(self.slots, hd, bc.rope_theta)
            for block in self.blocks:
                x = block(x, cos, sin, ctx, kc, ks, ctx_mask[:, None, None, :])
            out = features[:, self.slots]
        tm = self.time(timestep_embedding(mask_ratio * 1000, self.time_dim).to(x.dtype))
        scale, shift = self.modulation(tm).unsqueeze(1).chunk(2, -1)
        delta = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        if self.upstream:
            return out + delta
        return features.index_copy(1, self.slots, out + delta)


class _MigmBlock(nn.Module):
    """The migm layout's block: cross-attention with separate query/key norms, SwiGLU, self-attention, SwiGLU."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, eps = cfg.width, cfg.norm_eps
        self.norm_q, self.norm_kv = RMSNorm(d, eps), RMSNorm(d, eps)
        self.cross = Attention(cfg)
        self.norm_mlp1 = RMSNorm(d, eps)
        self.mlp1 = SwiGLU(d, cfg.mlp)
        self.norm_self = RMSNorm(d, eps)
        self.attn = Attention(cfg)
        self.norm_mlp2 = RMSNorm(d, eps)
        self.mlp2 = SwiGLU(d, cfg.mlp)

    def forward(self, x, cos, sin, ctx, kc, ks, ctx_mask):
        x = x + self.cross(self.norm_q(x), cos, sin, ctx_mask, self.norm_kv(ctx), kc, ks)
        x = x + self.mlp1(self.norm_mlp1(x))
        h = self.norm_self(x)
        x = x + self.attn(h, cos, sin, None)
        return x + self.mlp2(self.norm_mlp2(x))
