"""Named model configurations."""

from __future__ import annotations

import torch

from .maskgit import MaskGIT, MaskGITConfig
from .shortcut import Shortcut, ShortcutConfig
from .vqvae import VQVAE, VQConfig

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
    # f16 decoder to 512x512 RGB (a stand-in for VQGAN's, of a similar per-pixel cost class)
    "maskgit-imagenet512": VQConfig(image_size=512, channels=3, n_down=4, width=128, codebook_size=1024,
                                    code_dim=256),
}

SHORTCUT_HEADS = {"tiny-animals": 4, "maskgit-imagenet512": 8}


def base_config(name: str) -> MaskGITConfig:
    if name not in BASE_PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(BASE_PRESETS)}")
    return BASE_PRESETS[name]


def random_models(name: str, seed: int = 0) -> tuple[MaskGIT, VQVAE, Shortcut]:
    """A preset's base, VQ-VAE and shortcut (r=2, one block) with random weights, for benchmarks
    and export tests. The shortcut's output projection is randomised too (trained ones start at
    zero), so it computes what a trained one would."""
    cfg = base_config(name)
    torch.manual_seed(seed)
    base = MaskGIT(cfg).eval()
    base.meta = {"sampling": {"steps": 32, "cfg": 3.0, "tau": 4.5, "temperature": 1.0, "schedule": "arccos"}}
    vq = VQVAE(VQ_PRESETS[name]).eval()
    sc = Shortcut(ShortcutConfig(width=cfg.width, codebook_size=cfg.codebook_size, vocab=cfg.vocab,
                                 num_tokens=cfg.num_tokens, heads=SHORTCUT_HEADS[name])).eval()
    sc.load_base_embeddings(base)
    torch.nn.init.normal_(sc.proj_out.weight, std=0.02)
    return base, vq, sc
