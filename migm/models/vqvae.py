"""A small convolutional VQ-VAE: images <-> a grid of discrete tokens.

The encoder downsamples by `2**n_down` (x2 -> a 16x16 grid for 32x32 images, x4 -> 8x8).
The decoder is its own module because it is exported on its own (tokens -> image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQConfig:
    image_size: int = 32
    channels: int = 1
    n_down: int = 1  # grid = image_size / 2**n_down
    width: int = 32
    codebook_size: int = 64
    code_dim: int = 16
    commitment: float = 0.25

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.n_down

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x):
        return x + self.net(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        w = cfg.width
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, w, 3, padding=1), ResBlock(w)]
        for _ in range(cfg.n_down):
            layers += [nn.Conv2d(w, w, 4, stride=2, padding=1), ResBlock(w)]
        layers += [ResBlock(w), nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x * 2 - 1)


class Decoder(nn.Module):
    """tokens [B, grid, grid] (int) -> images [B, C, H, W] in [0, 1]."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, w, 3, padding=1), ResBlock(w), ResBlock(w)]
        for _ in range(cfg.n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1), ResBlock(w)]
        layers += [nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, cfg.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def decode_latents(self, z):
        return torch.sigmoid(self.net(z))

    def forward(self, tokens):
        z = self.codebook(tokens).permute(0, 3, 1, 2)
        return self.decode_latents(z)


class VQVAE(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)  # owns the codebook, so it exports alone

    @property
    def codebook(self) -> nn.Embedding:
        return self.decoder.codebook

    def quantize(self, z):
        """z [B, D, h, w] -> (tokens [B, h, w], quantized z, distances)."""
        # fp32 even under autocast: bf16 distances pick the wrong nearest code
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.codebook.weight.float()
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)[None]
        idx = d.argmin(1)
        q = F.embedding(idx, e).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return idx.view(z.shape[0], z.shape[2], z.shape[3]), q

    @torch.no_grad()
    def encode(self, images):
        """images [B, C, H, W] in [0, 1] -> tokens [B, grid, grid] int64."""
        return self.quantize(self.encoder(images))[0]

    @torch.no_grad()
    def decode(self, tokens):
        return self.decoder(tokens)

    def forward(self, images):
        """Training pass: returns (reconstruction, vq loss, tokens, encoder latents)."""
        z = self.encoder(images).float()
        tokens, q = self.quantize(z)
        vq_loss = F.mse_loss(q, z.detach()) + self.cfg.commitment * F.mse_loss(z, q.detach())
        q = z + (q - z).detach()  # straight-through
        return self.decoder.decode_latents(q), vq_loss, tokens, z
