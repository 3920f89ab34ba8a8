"""The MIGM-Shortcut model, MaskGIT variant (docs/design.md).

Predicts the base model's next-step features from the current ones and the tokens
sampled at this step:

    f[i+1] = f[i] + S(f[i], new_tokens[i], r[i])

    x = proj_in(f)                                 d -> d/r bottleneck
    t = proj_tok(tok_emb[new] + pos_emb[new])      frozen base embeddings, d -> d/r
    block: x += CrossAttn(x, t); x += MLP(x); x += SelfAttn(x); x += MLP(x)   (pre-norm)
    x = FiLM(norm(x), timestep(mask_ratio * 1000))
    f_next = f + proj_out(x)                       proj_out starts at zero: S starts as feature reuse

The new tokens are passed as a padded index tensor with a key mask, so every shape is
static for a given step (ONNX/TensorRT export and CUDA graphs depend on it). With
`cross_attention=False` (the paper's ablation) the cross-attention becomes a second
self-attention and the sampled tokens are not used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ShortcutConfig:
    width: int = 256  # the base model's feature width d
    codebook_size: int = 64
    vocab: int = 76  # rows of the base embedding table (codes, mask, classes, no-class)
    num_tokens: int = 256
    ratio: int = 2  # bottleneck d -> d / ratio
    n_block: int = 1
    heads: int = 4
    mlp_ratio: int = 4
    cross_attention: bool = True

    @property
    def inner(self) -> int:
        return self.width // self.ratio

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT-style sinusoidal embedding of t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context, key_mask=None):
        """x [B, N, D] attends to context [B, M, D]; key_mask [B, M] True where a key is real."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


def _mlp(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


class ShortcutBlock(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        d = cfg.inner
        self.cross = cfg.cross_attention
        self.norm_q, self.norm_kv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn1 = MultiHeadAttention(d, cfg.heads)
        self.norm_mlp1 = nn.LayerNorm(d)
        self.mlp1 = _mlp(d, cfg.mlp_ratio)
        self.norm_self = nn.LayerNorm(d)
        self.attn2 = MultiHeadAttention(d, cfg.heads)
        self.norm_mlp2 = nn.LayerNorm(d)
        self.mlp2 = _mlp(d, cfg.mlp_ratio)

    def forward(self, x, tok, key_mask):
        if self.cross:
            x = x + self.attn1(self.norm_q(x), self.norm_kv(tok), key_mask)
        else:  # ablation: no access to the sampled tokens
            h = self.norm_q(x)
            x = x + self.attn1(h, h)
        x = x + self.mlp1(self.norm_mlp1(x))
        h = self.norm_self(x)
        x = x + self.attn2(h, h)
        return x + self.mlp2(self.norm_mlp2(x))


class Shortcut(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        self.cfg = cfg
        d, di = cfg.width, cfg.inner
        # Frozen copies of the base model's token and position embeddings (buffers, so
        # the shortcut exports on its own and the optimizer never sees them).
        self.register_buffer("tok_emb", torch.zeros(cfg.vocab, d))
        self.register_buffer("pos_emb", torch.zeros(cfg.num_tokens, d))
        self.proj_in = nn.Linear(d, di)
        self.proj_tok = nn.Linear(d, di)
        self.blocks = nn.ModuleList(ShortcutBlock(cfg) for _ in range(cfg.n_block))
        self.norm_out = nn.LayerNorm(di, elementwise_affine=False)
        self.film = nn.Sequential(nn.Linear(di, di), nn.SiLU(), nn.Linear(di, 2 * di))
        self.proj_out = nn.Linear(di, d)
        # Start as the identity map on features: f[i+1] = f[i], i.e. feature reuse.
        for layer in (self.proj_out, self.film[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def load_base_embeddings(self, base) -> None:
        """Copy the frozen embeddings from a MaskGIT base (position rows after the class token)."""
        self.tok_emb.copy_(base.tok_emb.weight)
        self.pos_emb.copy_(base.pos_emb[0, 1:])

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio):
        """features [B, L, d]; new_pos / new_tok [B, M] (padded); key_mask [B, M]; mask_ratio [B].

        Returns the predicted next features [B, L, d].
        """
        x = self.proj_in(features)
        tok = self.proj_tok(self.tok_emb[new_tok] + self.pos_emb[new_pos])
        for block in self.blocks:
            x = block(x, tok, key_mask)
        t = timestep_embedding(mask_ratio * 1000, self.cfg.inner).to(x.dtype)  # bf16 models on a GPU
        scale, shift = self.film(t).unsqueeze(1).chunk(2, -1)
        x = self.norm_out(x) * (1 + scale) + shift
        return features + self.proj_out(x)
