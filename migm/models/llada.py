"""The `llada` base family (Lumina-DiMOO layout): a bidirectional LLaMA-style transformer over
one sequence holding the prompt's text tokens and the image tokens.

    sequence   [prompt (text ids, left-padded to max_text)] <boa> <boi> [row 0 codes] <eol> ...
               [row g-1 codes] <eol> <eoi> <eoa>
    vocabulary [0, text_vocab) text and special tokens; [text_vocab, text_vocab + K) image codes
    blocks     RMSNorm -> attention with RoPE (no bias) -> residual; RMSNorm -> SwiGLU -> residual
    features   the final RMSNorm's output at the L = grid * grid image positions
    logits     the LM head's K image-code rows only: [B, L, K]

Padding in the prompt is masked out of attention (keys). Prompts are left-padded: the prompt
ends right before <boa>, and as RoPE scores depend on relative positions only, the result
equals Lumina-DiMOO's unpadded sequence. The newline token after every row carries the 2-D
layout, as in Lumina-DiMOO. A model says how its prompts are written (`prompt_template`, e.g.
Lumina-DiMOO's system/user wrapper) and what its unconditional input is (`uncond_ids`, e.g. its
`<uncondition>` prompt; none: an all-padding prompt, as the tiny model was trained).

    forward(tokens [B, L] image codes or mask_id, prompt [B, max_text] text ids)
        -> features [B, T, d] (every sequence position), logits [B, L, K] (the image positions)

`tokens` use the same convention as the maskgit family: codes 0..K-1 and K for [MASK].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LLaDAConfig:
    text_vocab: int = 256  # text tokens incl. the special ones below (at its end)
    codebook_size: int = 64  # image codes K, appended after the text vocabulary
    grid: int = 16  # image tokens per side
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp: int = 688  # SwiGLU hidden size
    max_text: int = 16  # prompt tokens (left-padded)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    newline: bool = True  # an <eol> token after every image row
    # special token ids; -1: the last ids of the text vocabulary (Lumina-DiMOO: mask 126336,
    # eol 126084, boi 126349, eoi 126350, boa 126354, eoa 126355; padding: eos 126081)
    pad_id: int = -1
    mask_token: int = -1
    boi_id: int = -1
    eoi_id: int = -1
    boa_id: int = -1
    eoa_id: int = -1
    eol_id: int = -1
    prompt_template: str = "{prompt}"  # how a prompt is written before tokenizing
    uncond_ids: list = field(default_factory=list)  # the unconditional prompt's ids; empty: all padding

    def __post_init__(self):
        names = ("pad_id", "mask_token", "boi_id", "eoi_id", "boa_id", "eoa_id", "eol_id")
        for i, name in enumerate(names):
            if getattr(self, name) < 0:
                setattr(self, name, self.text_vocab - 1 - i)

    @property
    def vocab(self) -> int:
        return self.text_vocab + self.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def mask_id(self) -> int:
        """[MASK] in the image-token convention the sampling loop uses (codes 0..K-1, K = mask)."""
        return self.codebook_size

    @property
    def seq_len(self) -> int:
        return self.max_text + 4 + self.num_tokens + (self.grid if self.newline else 0)

    @property
    def image_slots(self) -> torch.Tensor:
        """Sequence positions of the L image tokens, row-major."""
        row = self.grid + (1 if self.newline else 0)
        start = self.max_text + 2
        # on the CPU, also under torch.device("meta"): meta meshgrid goes through torch._refs, which imports
        # torch._dynamo (seconds) the first time
        r, c = torch.meshgrid(torch.arange(self.grid, device="cpu"), torch.arange(self.grid, device="cpu"),
                              indexing="ij")
        return (start + r * row + c).reshape(-1)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # in fp32 (bf16 variance underflows), back to the input's dtype
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., dim] for rotary embeddings at integer positions (rotate-half layout)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    ang = positions.float()[..., None] * inv
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, hd]; cos/sin [T, hd] or [B, 1, T, hd]."""
    a, b = x.chunk(2, -1)
    return (x * cos + torch.cat([-b, a], -1) * sin).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Attention(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, key_mask, ctx=None, ctx_cos=None, ctx_sin=None):
        """x [B, T, d] attends to itself, or (cross-attention) to ctx [B, M, d] rotated at its own
        positions (ctx_cos/ctx_sin); key_mask broadcasts to [B, 1, 1, keys]."""
        b, t, d = x.shape
        src, kc, ks = (x, cos, sin) if ctx is None else (ctx, ctx_cos, ctx_sin)
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = (p(src).view(b, src.shape[1], self.heads, -1).transpose(1, 2) for p in (self.k, self.v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, kc, ks)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.width, cfg.mlp)

    def forward(self, x, cos, sin, key_mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, key_mask)
        return x + self.mlp(self.mlp_norm(x))


class LLaDA(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.init_buffers()
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def init_buffers(self, device=None) -> None:
        """The index buffers (image slots, fixed layout); again after `to_empty` from the meta device."""
        self.register_buffer("slots", self.cfg.image_slots.to(device), persistent=False)
        self.register_buffer("layout", self._layout().to(device), persistent=False)

    def _layout(self) -> torch.Tensor:
        """The fixed part of the sequence (special tokens); prompt and image slots are filled per call."""
        c = self.cfg
        seq = torch.full((c.seq_len,), c.pad_id, dtype=torch.long, device="cpu")  # (as image_slots)
        seq[c.max_text], seq[c.max_text + 1] = c.boa_id, c.boi_id
        if c.newline:
            row = c.grid + 1
            seq[c.max_text + 2 + torch.arange(c.grid, device="cpu") * row + c.grid] = c.eol_id
        seq[-2], seq[-1] = c.eoi_id, c.eoa_id
        return seq

    def sequence(self, tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """The model's input ids [B, T] for image tokens [B, L] (K = mask) and prompts [B, max_text]."""
        c = self.cfg
        b = tokens.shape[0]
        seq = self.layout.expand(b, -1).clone()
        seq[:, : c.max_text] = prompt
        codes = torch.where(tokens == c.mask_id, torch.full_like(tokens, c.mask_token), tokens + c.text_vocab)
        seq[:, self.slots] = codes
        return seq

    def head(self, features):
        """Logits over the K image codes at the image positions: the LM head's image-code rows."""
        return features[:, self.slots] @ self.lm_head.weight[self.cfg.text_vocab:].T

    def forward(self, tokens, prompt):
        seq = self.sequence(tokens, prompt)
        # padding in the prompt is no key for anyone; everything else attends both ways
        keys = (seq != self.cfg.pad_id)[:, None, None, :]
        x = self.tok_emb(seq)
        # RoPE tables in fp32 (bf16 angles lose whole radians at thousands of positions)
        cos, sin = rope_tables(torch.arange(seq.shape[1], device=seq.device), self.cfg.width // self.cfg.heads,
                               self.cfg.rope_theta)
        for block in self.blocks:
            x = block(x, cos, sin, keys)
        features = self.norm(x)
        return features, self.head(features)
