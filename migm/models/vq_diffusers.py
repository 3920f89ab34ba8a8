"""The VQ decoders of the published models, built from diffusers' `VQModel` parts.

    HaltonVQGAN   Halton-MaskGIT's tokenizer: taming's "VQGAN ImageNet f16 1024" (attention in the
                  middle block and at the lowest decoder level; images in [-1, 1])
    AmusedVQ      the aMUSEd VQ that Lumina-DiMOO decodes with (no attention; images in [0, 1])

Each holds only the decoding half of a `VQModel` (the codebook, `post_quant_conv`, the decoder)
under VQModel's own module names, so its state dict is a VQModel's without the encoder, and
decoding is `VQModel.decode(ids, force_not_quantize=True, shape=...)` with `lookup_from_codebook`:
look the codes up, permute to NCHW, `post_quant_conv`, the decoder. The encoders are left out:
these models only ever turn the base model's tokens into images. Both are fully convolutional;
`grid` (tokens per side) fixes only the image size the pipeline expects.

`.decoder` is what the pipeline and the ONNX export use: tokens [B, grid, grid] int64 ->
images [B, 3, H, W] float in [0, 1]. The loaders from the released files are in `loaders.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from diffusers import VQModel

from ..errors import ConfigError


class _VQModelShape:
    """What both configs share: the pipeline's view (codebook_size, grid, image_size, channels)
    and the checks a config file's values get before any module is built."""

    channels = 3  # both decode RGB

    @property
    def image_size(self) -> int:
        return self.grid * 2 ** (len(self.block_out_channels) - 1)  # each level but the last doubles

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        name = type(self).__name__
        # a JSON file gives a list; the dataclass type is not checked by config_from_dict
        if not isinstance(self.block_out_channels, (list, tuple)) or not self.block_out_channels:
            raise ConfigError(f"{name}.block_out_channels must be a non-empty list of ints")
        self.block_out_channels = tuple(self.block_out_channels)
        for field in ("grid", "codebook_size", "code_dim", "latent_channels", "layers_per_block", "norm_groups"):
            _positive_int(name, field, getattr(self, field))
        for c in self.block_out_channels:
            _positive_int(name, "block_out_channels", c)
            if c % self.norm_groups:
                raise ConfigError(f"{name}.block_out_channels: {c} channels do not split into "
                                  f"{self.norm_groups} norm groups")


def _positive_int(cls_name: str, field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{cls_name}.{field} must be a positive int, not {value!r}")


@dataclass
class HaltonVQGANConfig(_VQModelShape):
    """Defaults: the released model (taming ch 128, ch_mult 1,1,2,2,4, z 256, 1024 codes) at
    Halton-MaskGIT's 512 px (a 32x32 grid)."""

    grid: int = 32
    codebook_size: int = 1024  # taming n_embed
    code_dim: int = 256  # taming embed_dim: the codebook vectors
    latent_channels: int = 256  # taming z_channels: what post_quant_conv gives the decoder
    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512)  # taming ch * ch_mult
    layers_per_block: int = 2  # taming num_res_blocks (each decoder level runs one more)
    norm_groups: int = 32


@dataclass
class AmusedVQConfig(_VQModelShape):
    """Defaults: aMUSEd-512's vqvae/config.json, at Lumina-DiMOO's 1024 px (a 64x64 grid)."""

    grid: int = 64
    codebook_size: int = 8192  # num_vq_embeddings
    code_dim: int = 64  # vq_embed_dim (null in the file: latent_channels)
    latent_channels: int = 64
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    norm_groups: int = 32  # norm_num_groups


class TokenDecoder(nn.Module):
    """tokens [B, g, g] int64 -> images [B, 3, H, W] in [0, 1]: VQModel's decode path for code ids.

    `attention`: the taming layout (single-head attention in the middle block and at the lowest
    level) or none (aMUSEd: mid_block_add_attention false). `signed_output`: the decoder was
    trained on images in [-1, 1] (taming) rather than [0, 1] (aMUSEd)."""

    def __init__(self, cfg: _VQModelShape, attention: bool, signed_output: bool):
        super().__init__()
        self.code_dim = cfg.code_dim
        self.signed_output = signed_output
        levels = len(cfg.block_out_channels)
        # up_blocks.0 is the lowest resolution: diffusers lists the decoder's levels from the bottom
        up = ["AttnUpDecoderBlock2D" if attention and i == 0 else "UpDecoderBlock2D" for i in range(levels)]
        # built through diffusers' public VQModel; its encoder half is dropped (these models only decode)
        vq = VQModel(in_channels=cfg.channels, out_channels=cfg.channels,
                     down_block_types=("DownEncoderBlock2D",) * levels,
                     up_block_types=tuple(up), block_out_channels=tuple(cfg.block_out_channels),
                     layers_per_block=cfg.layers_per_block, act_fn="silu", latent_channels=cfg.latent_channels,
                     num_vq_embeddings=cfg.codebook_size, norm_num_groups=cfg.norm_groups, vq_embed_dim=cfg.code_dim,
                     norm_type="group", mid_block_add_attention=attention, lookup_from_codebook=True)
        self.quantize, self.post_quant_conv, self.decoder = vq.quantize, vq.post_quant_conv, vq.decoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, h, w = tokens.shape
        z = self.quantize.get_codebook_entry(tokens, (b, h, w, self.code_dim))  # [B, code_dim, h, w]
        x = self.decoder(self.post_quant_conv(z))
        if self.signed_output:
            # upstream's FID code min-max normalises each image instead; a fixed map keeps images
            # comparable across a batch and is what a viewer of the decoder's [-1, 1] range expects
            x = (x + 1) / 2
        return x.clamp(0, 1)


class HaltonVQGAN(nn.Module):
    """Halton-MaskGIT's VQGAN, decoder only (load the released one with `loaders.load_halton_vqgan`)."""

    def __init__(self, cfg: HaltonVQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = TokenDecoder(cfg, attention=True, signed_output=True)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens)


class AmusedVQ(nn.Module):
    """The aMUSEd VQ Lumina-DiMOO uses, decoder only (load a diffusers `vqvae/` folder with
    `loaders.load_amused_vq`). Our tokens are code indices already: DiMOO's vocabulary offset of
    image tokens (126356) is the base model's business."""

    def __init__(self, cfg: AmusedVQConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = TokenDecoder(cfg, attention=False, signed_output=False)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens)
