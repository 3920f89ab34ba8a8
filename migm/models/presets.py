"""Named model configurations."""

from __future__ import annotations

from dataclasses import replace

import torch

from .llada import LLaDA, LLaDAConfig
from .maskgit import MaskGIT, MaskGITConfig
from .shortcut import Shortcut, ShortcutConfig
from .shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
from .vqvae import VQVAE, VQConfig

BASE_PRESETS: dict[str, MaskGITConfig] = {
    # The shipped model: 16x16 tokens over 32x32 animal-mnist silhouettes.
    "tiny-animals": MaskGITConfig(codebook_size=64, num_classes=10, grid=16, width=256, depth=4, heads=4, mlp=1024),
    # Halton-MaskGIT v1.0 ImageNet-512: VQGAN f16 -> 32x32 tokens, 1024 codes (random init).
    "maskgit-imagenet512": MaskGITConfig(
        codebook_size=1024, num_classes=1000, grid=32, width=768, depth=24, heads=16, mlp=3072
    ),
}

LLADA_PRESETS: dict[str, LLaDAConfig] = {
    # the tiny text-to-image model: 16x16 tokens of scenes, 64 codes, a byte-level-size vocabulary
    "tiny-scenes": LLaDAConfig(text_vocab=256, codebook_size=64, grid=16, width=256, depth=4, heads=4, mlp=688,
                               max_text=16),
    # Lumina-DiMOO (LLaDA-8B): 1024^2 images -> 64x64 aMUSEd-VQ tokens, 8192 codes after 126,356 text ids
    "dimoo-8b": LLaDAConfig(text_vocab=126356, codebook_size=8192, grid=64, width=4096, depth=32, heads=32,
                            mlp=12288, max_text=64, rope_theta=500000.0, pad_id=126081, mask_token=126336,
                            boi_id=126349, eoi_id=126350, boa_id=126354, eoa_id=126355, eol_id=126084),
}

VQ_PRESETS: dict[str, VQConfig] = {
    "tiny-animals": VQConfig(n_down=1, codebook_size=64),
    # f16 decoder to 512x512 RGB (a stand-in for VQGAN's, of a similar per-pixel cost class)
    "maskgit-imagenet512": VQConfig(image_size=512, channels=3, n_down=4, width=128, codebook_size=1024,
                                    code_dim=256),
    "tiny-scenes": VQConfig(image_size=64, channels=1, n_down=2, codebook_size=64),
    # f16 decoder to 1024x1024 RGB, 8192 codes (a stand-in for aMUSEd's VQ-GAN)
    "dimoo-8b": VQConfig(image_size=1024, channels=3, n_down=4, width=128, codebook_size=8192, code_dim=64),
}

SHORTCUT_HEADS = {"tiny-animals": 4, "maskgit-imagenet512": 8, "tiny-scenes": 4, "dimoo-8b": 32}
# the DiMOO shortcut's SwiGLU hidden size over its inner width (12288 / 2048 for dimoo-8b)
SHORTCUT_MLP = {"tiny-scenes": 2.75, "dimoo-8b": 6.0}


def base_config(name: str) -> MaskGITConfig:
    if name not in BASE_PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(BASE_PRESETS)}")
    return BASE_PRESETS[name]


def random_models(name: str, seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, depth: int | None = None, grid: int | None = None) -> tuple:
    """A preset's base, VQ-VAE and shortcut (r=2, one block) with random weights, for benchmarks
    and export tests. The shortcut's output projection is randomised too (trained ones start at
    zero), so it computes what a trained one would. Large models are built on the meta device
    and materialised directly on `device` in `dtype` (dimoo-8b never exists in fp32 on a CPU)."""
    torch.manual_seed(seed)
    sampling = {"steps": 32, "cfg": 3.0, "tau": 4.5, "temperature": 1.0, "schedule": "arccos", "sampler": "halton"}
    if name in LLADA_PRESETS:
        cfg = LLADA_PRESETS[name]
        cfg = replace(cfg, depth=depth or cfg.depth, grid=grid or cfg.grid)
        with torch.device("meta"):
            base = LLaDA(cfg)
            sc = LLaDAShortcut(LLaDAShortcutConfig(base=cfg.to_dict(), heads=SHORTCUT_HEADS[name],
                                                   mlp_ratio=SHORTCUT_MLP[name]))
        base, sc = _materialise(base, device, dtype), _materialise(sc, device, dtype)
        sc.load_base_embeddings(base)
        sampling = {"steps": 64, "cfg": 4.0, "tau": 1.0, "temperature": 1.0, "schedule": "dimoo", "sampler": "dimoo"}
    else:
        cfg = base_config(name)
        cfg = replace(cfg, depth=depth or cfg.depth, grid=grid or cfg.grid)
        base = MaskGIT(cfg)
        sc = Shortcut(ShortcutConfig(width=cfg.width, codebook_size=cfg.codebook_size, vocab=cfg.vocab,
                                     num_tokens=cfg.num_tokens, heads=SHORTCUT_HEADS[name]))
        sc.load_base_embeddings(base)
        torch.nn.init.normal_(sc.proj_out.weight, std=0.02)
        base, sc = base.to(device, dtype), sc.to(device, dtype)
    base.meta = {"sampling": sampling}
    vq_cfg = VQ_PRESETS[name]
    if grid is not None:  # keep the decoder's downsampling, change the image size
        vq_cfg = replace(vq_cfg, image_size=grid * 2**vq_cfg.n_down)
    vq = VQVAE(vq_cfg).to(device)
    return base.eval(), vq.eval(), sc.eval()


@torch.no_grad()
def _materialise(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """Allocate a meta-device model on `device` and fill it: N(0, 0.02) matrices, unit norms, zero biases."""
    model = model.to(dtype).to_empty(device=device)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() == 1:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)
    for name, b in model.named_buffers():
        b.zero_()
    model.init_buffers(device)
    return model
