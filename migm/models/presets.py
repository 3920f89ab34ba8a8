"""Named model configurations."""

from __future__ import annotations

from .maskgit import MaskGITConfig
from .vqvae import VQConfig

BASE_PRESETS: dict[str, MaskGITConfig] = {
    # The shipped model: 16x16 tokens over 32x32 animal-mnist silhouettes.
    "tiny-animals": MaskGITConfig(codebook_size=64, num_classes=10, grid=16, width=256, depth=4, heads=4, mlp=1024),
    # Halton-MaskGIT v1.0 ImageNet-512: VQGAN f16 -> 32x32 tokens, 1024 codes (random init).
    "maskgit-imagenet512": MaskGITConfig(
        codebook_size=1024, num_classes=1000, grid=32, width=768, depth=24, heads=16, mlp=3072
    ),
}

VQ_PRESETS: dict[str, VQConfig] = {
    "tiny-animals": VQConfig(n_down=1, codebook_size=64),
}


def base_config(name: str) -> MaskGITConfig:
    if name not in BASE_PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(BASE_PRESETS)}")
    return BASE_PRESETS[name]
