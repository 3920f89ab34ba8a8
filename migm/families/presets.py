"""Named models: the two shipped tiny ones and the paper's two at full size (random weights for
benchmarks and export tests; `models/loaders.py` loads their released checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from ..models import require_device
from ..models.llada import LLaDAConfig
from ..models.loaders import DIMOO_8B, HALTON_IMAGENET512
from ..models.maskgit import MaskGITConfig
from ..models.vqvae import VQVAE, VQConfig
from ..sampling.config import SamplerConfig
from . import FAMILIES
from .family import Family


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    base: MaskGITConfig | LLaDAConfig
    vq: VQConfig
    shortcut_heads: int
    sampler: SamplerConfig  # sampling defaults of random weights (trained models carry their own)
    shortcut_mlp: float | None = None  # the DiMOO shortcut's SwiGLU hidden size over its inner width
    data: str | None = None  # what `migm-train base` trains it on (animals | scenes)

    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]


# what random weights sample with (the paper's settings)
_MASKGIT_RANDOM = SamplerConfig(steps=32, schedule="arccos", sampler="halton", tau=4.5, guidance=3.0)
_DIMOO_RANDOM = SamplerConfig(steps=64, schedule="dimoo", sampler="dimoo", tau=1.0, guidance=4.0)

PRESETS = {p.name: p for p in [
    # The shipped model: 16x16 tokens over 32x32 animal-mnist silhouettes.
    Preset("tiny-animals", "maskgit",
           MaskGITConfig(codebook_size=64, num_classes=10, grid=16, width=256, depth=4, heads=4, mlp=1024),
           VQConfig(n_down=1, codebook_size=64), shortcut_heads=4, sampler=_MASKGIT_RANDOM, data="animals"),
    # Halton-MaskGIT v1.0 ImageNet-512: VQGAN f16 -> 32x32 tokens, 1024 codes; the decoder is an f16
    # stand-in for VQGAN's, of a similar per-pixel cost class
    Preset("maskgit-imagenet512", "maskgit", HALTON_IMAGENET512,
           VQConfig(image_size=512, channels=3, n_down=4, width=128, codebook_size=1024, code_dim=256),
           shortcut_heads=16, sampler=_MASKGIT_RANDOM),  # the released MaskGIT-Shortcut: 16 heads
    # the tiny text-to-image model: 16x16 tokens of 64x64 scenes, 64 codes, a byte-level-size vocabulary
    Preset("tiny-scenes", "llada",
           LLaDAConfig(text_vocab=256, codebook_size=64, grid=16, width=256, depth=4, heads=4, mlp=688, max_text=16),
           VQConfig(image_size=64, channels=1, n_down=2, codebook_size=64), shortcut_heads=4, shortcut_mlp=2.75,
           # 32 steps: at 64 the dimoo schedule reveals no token at step 1 of these 256 (the shipped model's N too)
           sampler=replace(_DIMOO_RANDOM, steps=32), data="scenes"),
    # Lumina-DiMOO (LLaDA-8B): 1024^2 images -> 64x64 aMUSEd-VQ tokens, 8192 codes after 126,356 text ids;
    # the decoder is an f16 stand-in for aMUSEd's VQ-GAN
    Preset("dimoo-8b", "llada", DIMOO_8B,
           VQConfig(image_size=1024, channels=3, n_down=4, width=128, codebook_size=8192, code_dim=64),
           shortcut_heads=32, shortcut_mlp=6.0, sampler=_DIMOO_RANDOM),
]}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def random_models(name: str, seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, depth: int | None = None, grid: int | None = None) -> tuple:
    """A preset's base, VQ-VAE and shortcut (r=2, one block) with random weights, for benchmarks
    and export tests. The shortcut's output projection is randomised too (trained ones start at
    zero), so it computes what a trained one would. Models are built on the meta device and
    materialised directly on `device` in `dtype` (dimoo-8b never exists in fp32 on a CPU)."""
    p = preset(name)
    fam = p.fam
    device = require_device(device)
    torch.manual_seed(seed)
    cfg = replace(p.base, depth=depth or p.base.depth, grid=grid or p.base.grid)
    with torch.device("meta"):
        base = fam.base_cls(cfg)
        sc = fam.shortcut_cls(fam.shortcut_config(cfg, heads=p.shortcut_heads, mlp_ratio=p.shortcut_mlp))
    base, sc = _materialise(base, device, dtype), _materialise(sc, device, dtype)
    sc.load_base_embeddings(base)
    base.meta = {"sampling": p.sampler.to_dict()}
    vq_cfg = p.vq
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
    for b in model.buffers():
        b.zero_()
    if hasattr(model, "init_buffers"):
        model.init_buffers(device)
    return model
