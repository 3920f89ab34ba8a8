"""The MaskGIT base model (Halton-MaskGIT v1.0 layout), a bidirectional transformer.

Embedding table rows: [0, K) image codes, K the [MASK] token, K+1 .. K+C the classes,
K+C+1 the "no class" token used for classifier-free guidance. The class token is
prepended to the token grid, so the position embedding has L+1 rows.

    forward(tokens [B, L], labels [B]) -> features [B, L+1, d], logits [B, L, K]

`features` is the output of the final LayerNorm/Linear/GELU/LayerNorm block at every position,
the quantity the MIGM-Shortcut model predicts: the L grid positions, then the class token (the
order of Halton-MaskGIT's sequence, which the released shortcut is trained on; inside the model
the class token comes first). `logits = head(features)` reads the grid rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MaskGITConfig:
    codebook_size: int = 64
    num_classes: int = 10
    grid: int = 16  # tokens per side; L = grid * grid
    width: int = 256
    depth: int = 4
    heads: int = 8
    mlp: int = 1024
    dropout: float = 0.0
    io_norm_eps: float = 1e-5  # the input/output blocks' LayerNorms (Halton-MaskGIT's checkpoints: 1e-12)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def no_class_id(self) -> int:
        return self.num_classes  # label value meaning "unconditional"

    @property
    def vocab(self) -> int:
        return self.codebook_size + 1 + self.num_classes + 1

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def split(self, x):
        """q, k, v as [B, heads, N, d/heads]."""
        b, n, d = x.shape
        return self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def attend(self, q, k, v):
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = q.shape
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))

    def forward(self, x):
        return self.attend(*self.split(x))


class Block(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.mlp, cfg.width)
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward_kv(self, x):
        """forward, also returning this block's keys and values (for ML-Cache)."""
        q, k, v = self.attn.split(self.ln1(x))
        x = x + self.attn.attend(q, k, v)
        return x + self.mlp(self.ln2(x)), (k, v)

    def forward_subset(self, x, idx, kv):
        """x [B, m, d] at sequence positions idx [B, m]; the cached (k, v) are updated there in place
        and the rest of the sequence is taken from the cache as it is."""
        q, k_new, v_new = self.attn.split(self.ln1(x))
        k, v = kv
        at = idx[:, None, :, None].expand_as(k_new)
        k.scatter_(2, at, k_new.to(k.dtype))
        v.scatter_(2, at, v_new.to(v.dtype))
        x = x + self.attn.attend(q, k, v)
        return x + self.mlp(self.ln2(x))


class MaskGIT(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.tok_emb = nn.Embedding(cfg.vocab, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.num_tokens + 1, d))
        eps = cfg.io_norm_eps
        self.first_layer = nn.Sequential(
            nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=eps), nn.Dropout(cfg.dropout),
            nn.Linear(d, d)
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.last_layer = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=eps))
        self.bias = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.codebook_size))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        nn.init.trunc_normal_(self.tok_emb.weight, std=0.02)

    def embed(self, tokens, labels):
        """Input sequence [B, L+1, d]: the class token, then the grid."""
        cls = (labels + self.cfg.codebook_size + 1).unsqueeze(1)
        seq = torch.cat([cls, tokens], dim=1)
        return self.tok_emb(seq) + self.pos_emb

    def head(self, features):
        """Logits over the K image codes at the grid rows: features @ code embeddings.T + per-position bias."""
        w = self.tok_emb.weight[: self.cfg.codebook_size]
        return features[:, : self.cfg.num_tokens] @ w.T + self.bias

    @staticmethod
    def _grid_first(x):
        """The model's sequence (class token first) in Halton-MaskGIT's order: the grid, then the class."""
        return torch.cat([x[:, 1:], x[:, :1]], 1)

    def forward(self, tokens, labels):
        x = self.first_layer(self.embed(tokens, labels))
        for block in self.blocks:
            x = block(x)
        features = self._grid_first(self.last_layer(x))
        return features, self.head(features)

    def forward_cached(self, tokens, labels):
        """forward, plus every block's keys and values: the cache ML-Cache-style sampling reuses."""
        x = self.first_layer(self.embed(tokens, labels))
        cache = []
        for block in self.blocks:
            x, kv = block.forward_kv(x)
            cache.append(kv)
        features = self._grid_first(self.last_layer(x))
        return features, self.head(features), cache

    def forward_subset(self, tokens, labels, positions, cache):
        """Features [B, m, d] at grid positions [B, m], recomputed against the cached keys and
        values of every other position (updated in place at these positions). The class
        token, which attends to the whole grid, is recomputed too."""
        b = tokens.shape[0]
        seq = torch.cat([torch.zeros(b, 1, dtype=positions.dtype, device=positions.device), positions + 1], 1)
        x = self.embed(tokens, labels)
        x = self.first_layer(x.gather(1, seq[..., None].expand(-1, -1, x.shape[-1])))
        for block, kv in zip(self.blocks, cache):
            x = block.forward_subset(x, seq, kv)
        return self.last_layer(x)[:, 1:]
