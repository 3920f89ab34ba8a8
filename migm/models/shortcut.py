"""The MIGM-Shortcut model, MaskGIT variant (docs/design.md), in the layout of the released
MaskGIT-Shortcut weights (models/loaders.py maps their keys).

Predicts the base model's next-step features from the current ones and the tokens sampled at
this step:

    f[i+1] = f[i] + S(f[i], new_tokens[i], r[i])

    x = proj_in(f)                                   d -> d/r bottleneck, every position (grid and class row)
    t = proj_tok(tok_emb[new] + pos_emb[new])        the base's frozen embeddings, d -> d/r
    block: x += CrossAttn(q=LN(x), k=v=t) ; x += MLP(LN(x))
           x += SelfAttn(q=LN(x), k=v=x)  ; x += MLP(LN(x))    (only the queries are normalised)
    x = LN -> Linear -> GELU -> LN (x)               eps 1e-12
    scale, shift = adaLN(TimeMLP(sinusoid_256(mask_ratio * 1000)))
    f_next = f + proj_out(x * (1 + scale) + shift)

`layout="migm"` is this project's first design, kept to compare the two trained from scratch:
keys/values normalised too, a plain LayerNorm and a FiLM MLP on a sinusoid of the inner width.

The new tokens are passed as a padded index tensor with a key mask, so every shape is static for
a given step (ONNX/TensorRT export and CUDA graphs depend on it). `proj_out` and the modulation
start at zero, so a fresh shortcut is feature reuse. With `cross_attention=False` (the paper's
ablation) the cross-attention becomes a second self-attention and the sampled tokens are unused.
The base embeddings are buffers that are not saved: `load_base_embeddings` takes them from the
base the shortcut runs with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYOUTS = ("upstream", "migm")


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
    layout: str = "upstream"
    dropout: float = 0.0

    @property
    def inner(self) -> int:
        return round(self.width / self.ratio)

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT-style sinusoidal embedding of t [B] -> [B, dim], cos first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
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
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


def _mlp(dim: int, ratio: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ratio * dim, dim))


class ShortcutBlock(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        d = cfg.inner
        self.cross, self.upstream = cfg.cross_attention, cfg.layout == "upstream"
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = None if self.upstream else nn.LayerNorm(d)
        self.attn1 = MultiHeadAttention(d, cfg.heads, cfg.dropout)
        self.norm_mlp1 = nn.LayerNorm(d)
        self.mlp1 = _mlp(d, cfg.mlp_ratio, cfg.dropout)
        self.norm_self = nn.LayerNorm(d)
        self.attn2 = MultiHeadAttention(d, cfg.heads, cfg.dropout)
        self.norm_mlp2 = nn.LayerNorm(d)
        self.mlp2 = _mlp(d, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x, tok, key_mask):
        if self.cross:
            kv = tok if self.upstream else self.norm_kv(tok)
            x = x + self.attn1(self.norm_q(x), kv, key_mask)
        else:  # ablation: no access to the sampled tokens
            h = self.norm_q(x)
            x = x + self.attn1(h, x if self.upstream else h)
        x = x + self.mlp1(self.norm_mlp1(x))
        h = self.norm_self(x)
        x = x + self.attn2(h, x if self.upstream else h)
        return x + self.mlp2(self.norm_mlp2(x))


class Shortcut(nn.Module):
    def __init__(self, cfg: ShortcutConfig):
        super().__init__()
        self.cfg = cfg
        d, di = cfg.width, cfg.inner
        # the base's token and position embeddings (grid rows): set by load_base_embeddings, never saved
        self.register_buffer("tok_emb", torch.zeros(cfg.vocab, d), persistent=False)
        self.register_buffer("pos_emb", torch.zeros(cfg.num_tokens, d), persistent=False)
        self.proj_in = nn.Linear(d, di)
        self.proj_tok = nn.Linear(d, di)
        self.blocks = nn.ModuleList(ShortcutBlock(cfg) for _ in range(cfg.n_block))
        if cfg.layout == "upstream":
            self.out = nn.Sequential(nn.LayerNorm(di, eps=1e-12), nn.Linear(di, di), nn.GELU(),
                                     nn.LayerNorm(di, eps=1e-12))
            mid = round(math.sqrt(di * 256))
            self.time_dim = 256
            self.time = nn.Sequential(nn.Linear(256, mid), nn.SiLU(), nn.Linear(mid, di))
            self.modulation = nn.Linear(di, 2 * di)
        else:
            self.out = nn.LayerNorm(di, elementwise_affine=False)
            self.time_dim = di
            self.time = nn.Identity()
            self.modulation = nn.Sequential(nn.Linear(di, di), nn.SiLU(), nn.Linear(di, 2 * di))
        self.proj_out = nn.Linear(di, d)
        # start as the identity map on features: f[i+1] = f[i], i.e. feature reuse
        last = self.modulation if cfg.layout == "upstream" else self.modulation[-1]
        for layer in (self.proj_out, last):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def load_base_embeddings(self, base) -> None:
        """The frozen embeddings from a MaskGIT base (position rows of the grid, after its class token)."""
        self.tok_emb = base.tok_emb.weight.detach()
        self.pos_emb = base.pos_emb[0, 1:].detach()

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio):
        """features [B, T, d] (grid rows, then the class row); new_pos / new_tok [B, M] (padded);
        key_mask [B, M]; mask_ratio [B] (still masked, 0..1). Returns the next features [B, T, d]."""
        x = self.proj_in(features)
        tok = self.proj_tok(self.tok_emb[new_tok] + self.pos_emb[new_pos])
        for block in self.blocks:
            x = block(x, tok, key_mask)
        t = self.time(timestep_embedding(mask_ratio * 1000, self.time_dim).to(x.dtype))  # bf16 models on a GPU
        scale, shift = self.modulation(t).unsqueeze(1).chunk(2, -1)
        x = self.out(x) * (1 + scale) + shift
        return features + self.proj_out(x)
