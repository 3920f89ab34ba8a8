"""Loaders for the published VQ decoders' files, onto `vq_diffusers` (decoder only).

Halton-MaskGIT's VQGAN (`last.ckpt`: a Lightning checkpoint whose `state_dict` holds taming's
VQModel) onto HaltonVQGAN, read with `torch.load(weights_only=True)` (nothing is unpickled but
tensors and containers). `loss.*` and the encoder half (`encoder.*`, `quant_conv.*`) are skipped;
the decoder half is renamed to diffusers' VQModel names (L = the number of levels, 5):

    quantize.embedding.weight, post_quant_conv.*, decoder.conv_in.*, decoder.conv_out.*   (same names)
    decoder.mid.block_1.* / block_2.*        -> decoder.mid_block.resnets.0.* / 1.*
    decoder.mid.attn_1.*                     -> decoder.mid_block.attentions.0.*
    decoder.up.{i}.block.{j}.*               -> decoder.up_blocks.{L-1-i}.resnets.{j}.*   (taming counts levels
    decoder.up.{i}.attn.{j}.*                -> decoder.up_blocks.{L-1-i}.attentions.{j}.*  from the top)
    decoder.up.{i}.upsample.conv.*           -> decoder.up_blocks.{L-1-i}.upsamplers.0.conv.*
    decoder.norm_out.*                       -> decoder.conv_norm_out.*
    in resnets:   nin_shortcut               -> conv_shortcut
    in attention: norm, q, k, v, proj_out    -> group_norm, to_q, to_k, to_v, to_out.0
                  (q/k/v/proj_out are 1x1 convs [C, C, 1, 1] there, linears [C, C] here)

The aMUSEd VQ (a diffusers `vqvae/` folder: config.json + diffusion_pytorch_model.safetensors,
what Lumina-DiMOO loads with `VQModel.from_pretrained(..., subfolder="vqvae")`) onto AmusedVQ:
the names are VQModel's already; the encoder half is skipped. The config is read as diffusers
reads it (a missing setting takes VQModel's default) and must describe what AmusedVQ builds.

Every other missing or unexpected key, or a shape that does not fit, is a CheckpointError naming
the key as the file spells it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
from diffusers import VQModel
from safetensors import safe_open

from ..errors import CheckpointError, ConfigError
from ..fileio import read_json
from .torchzip import Archive, dry_run, load_state, materialize
from .vq_diffusers import AmusedVQ, AmusedVQConfig, HaltonVQGAN, HaltonVQGANConfig

# the halves of a full VQ checkpoint a decoder-only model does not hold
_ENCODER_SIDE = re.compile(r"(encoder|quant_conv)\.")
_TAMING_SKIPPED = re.compile(r"(loss|encoder|quant_conv)\.")  # loss.*: the GAN discriminator and LPIPS

# our (diffusers') name -> taming's, applied in order after the level renumbering
_TAMING_NAMES = [
    (r"^decoder\.mid_block\.resnets\.(\d+)\.", lambda m: f"decoder.mid.block_{int(m[1]) + 1}."),
    (r"^decoder\.mid_block\.attentions\.0\.", "decoder.mid.attn_1."),
    (r"\.resnets\.", ".block."),
    (r"\.attentions\.", ".attn."),
    (r"\.upsamplers\.0\.conv\.", ".upsample.conv."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_([qkv])\.", r".\1."),
    (r"\.to_out\.0\.", ".proj_out."),
    (r"^decoder\.conv_norm_out\.", "decoder.norm_out."),
]
_ATTENTION_PROJECTION = re.compile(r".*\.attentions\.\d+\.(to_[qkv]|to_out\.0)\.weight")

MAX_CONFIG_BYTES = 1 << 20
AMUSED_WEIGHTS = "diffusion_pytorch_model.safetensors"
# how VQModel reads a config.json: a setting the file leaves out takes the constructor's default
_VQMODEL_DEFAULTS = {name: p.default for name, p in inspect.signature(VQModel.__init__).parameters.items()
                     if p.default is not inspect.Parameter.empty}


def taming_key(key: str, levels: int) -> str:
    """The taming name of a HaltonVQGAN state-dict key (`levels`: len(block_out_channels))."""
    key = key.removeprefix("decoder.")  # HaltonVQGAN.decoder: the TokenDecoder
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", key)
    for pattern, repl in _TAMING_NAMES:
        key = re.sub(pattern, repl, key)
    return key


def halton_to_vqgan(state: dict, cfg: HaltonVQGANConfig, source: str = "checkpoint") -> HaltonVQGAN:
    """A taming VQGAN state dict (Halton-MaskGIT's `last.ckpt["state_dict"]`) as our HaltonVQGAN.
    Given meta tensors, the model is built on the meta device: every check, no allocation."""
    meta = any(torch.is_tensor(v) and v.is_meta for v in state.values())
    with torch.device("meta" if meta else "cpu"):
        model = HaltonVQGAN(cfg)
    want = model.state_dict()
    ours = {taming_key(k, len(cfg.block_out_channels)): k for k in want}
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(k for k in state if k not in ours and not _TAMING_SKIPPED.match(k))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the Halton VQGAN decoder: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    mapped = {}
    for name, target in ours.items():
        value = state[name]
        shape = tuple(want[target].shape)
        if _ATTENTION_PROJECTION.fullmatch(target):
            shape += (1, 1)  # a 1x1 conv in taming, a linear in diffusers
        if not torch.is_tensor(value) or tuple(value.shape) != shape:
            got = list(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise CheckpointError(f"{source}: {name} is {got}, the config gives {list(shape)}")
        mapped[target] = value.reshape(want[target].shape).float()
    model.load_state_dict(mapped, assign=meta)
    return model.eval()


def halton_vqgan_config(path: str | Path, grid: int = 32) -> HaltonVQGANConfig:
    """The VQGAN's config read from its checkpoint's shapes (codebook, latent width, the channels of
    each decoder level, blocks per level); `grid`: the tokens per side the base samples."""
    state, archive = _lightning_state(Path(path))
    archive.close()
    try:
        codes, code_dim = state["quantize.embedding.weight"].shape
        latent = state["post_quant_conv.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.up.")})
        channels = [state[f"decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in levels]
        blocks = len({k.split(".")[4] for k in state if k.startswith("decoder.up.0.block.")})
        return HaltonVQGANConfig(grid=grid, codebook_size=codes, code_dim=code_dim, latent_channels=latent,
                                 block_out_channels=tuple(channels), layers_per_block=blocks - 1)
    except (KeyError, IndexError, ValueError) as e:  # ValueError: a ConfigError of HaltonVQGANConfig too
        raise CheckpointError(f"{path} does not hold a taming VQGAN decoder ({e})") from None


def _lightning_state(path: Path) -> tuple[dict, Archive]:
    """The `state_dict` tensors of a Lightning checkpoint, not yet read, by the restricted unpickler:
    the callbacks, hyper-parameters (argparse, omegaconf, AttributeDict) and optimizer states it also
    carries become inert placeholders and are dropped; nothing in the file is imported or run."""
    state, archive = load_state(path, ("state_dict",))
    if not isinstance(archive.tree.get("state_dict"), dict):
        archive.close()
        raise CheckpointError(f"{path} holds no state dict (expected a Lightning checkpoint: a dict with 'state_dict')")
    return state, archive


def load_halton_vqgan(path: str | Path, cfg: HaltonVQGANConfig | None = None) -> HaltonVQGAN:
    """Halton-MaskGIT's `pretrained_maskgit/VQGAN/last.ckpt` (taming VQGAN f16-1024) as a HaltonVQGAN;
    `cfg` defaults to the released model at 512 px (grid 32). Only the decoder's tensors are read."""
    path = Path(path)
    refs, archive = _lightning_state(path)
    refs = {k: v for k, v in refs.items() if not _TAMING_SKIPPED.match(k)}  # the discriminator, LPIPS, encoder
    cfg = cfg or HaltonVQGANConfig()
    try:
        halton_to_vqgan(dry_run(archive, refs), cfg, str(path))  # every check first, on the meta device
        return halton_to_vqgan(materialize(archive, refs), cfg, str(path))
    finally:
        archive.close()


def load_amused_vq(directory: str | Path, grid: int = 64) -> AmusedVQ:
    """A diffusers aMUSEd VQ folder (the model's `vqvae/`, or the folder above it) as an AmusedVQ.

    `grid`: tokens per side the base model samples (64: Lumina-DiMOO's 1024 px; 32: aMUSEd-512).
    Only local files are read."""
    directory = Path(directory)
    folder = directory / "vqvae" if (directory / "vqvae" / "config.json").is_file() else directory
    cfg = amused_config(_read_json(folder / "config.json"), grid, folder)
    weights = folder / AMUSED_WEIGHTS
    if not weights.is_file():
        pickled = " (a .bin is a pickle: it is not read)" if (folder / "diffusion_pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{folder} has no {AMUSED_WEIGHTS}{pickled}")
    try:
        with torch.device("meta"):  # its shapes only: a config's sizes are checked against the file's header first
            want = AmusedVQ(cfg).decoder.state_dict()  # VQModel's names
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{folder}/config.json describes no decoder that can be built: {e}") from None
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = [k for k in fh.keys() if not _ENCODER_SIDE.match(k)]
            missing, unexpected = sorted(set(want) - set(keys)), sorted(set(keys) - set(want))
            if missing or unexpected:
                raise CheckpointError(f"{weights} does not fit the aMUSEd VQ decoder of its config.json: missing "
                                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
            for k in keys:
                shape = tuple(fh.get_slice(k).get_shape())
                if shape != tuple(want[k].shape):
                    raise CheckpointError(f"{weights}: {k} is {list(shape)}, config.json gives {list(want[k].shape)}")
            state = {k: fh.get_tensor(k).float() for k in keys}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise CheckpointError(f"{weights} is not a readable safetensors file: {e}") from None
    model = AmusedVQ(cfg)  # every tensor's shape matched the file's: the model is no larger than the file
    model.decoder.load_state_dict(state)
    return model.eval()


def amused_config(raw: dict, grid: int, source: str | Path = "config.json") -> AmusedVQConfig:
    """Our config from a diffusers VQModel config.json, which must describe an aMUSEd-style decoder."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: config.json is not a JSON object")
    if raw.get("_class_name", "VQModel") != "VQModel":
        raise CheckpointError(f"{source} holds a {raw['_class_name']}, not a VQModel")
    setting = lambda name: raw.get(name, _VQMODEL_DEFAULTS.get(name))
    levels = setting("block_out_channels")
    # what AmusedVQ builds; anything else would decode differently
    needed = {"out_channels": 3, "act_fn": "silu", "norm_type": "group", "mid_block_add_attention": False,
              # decode(force_not_quantize=True) looks the ids up only with this set
              "lookup_from_codebook": True,
              "up_block_types": ["UpDecoderBlock2D"] * (len(levels) if isinstance(levels, (list, tuple)) else 0)}
    for name, value in needed.items():
        got = setting(name)
        if (list(got) if isinstance(got, tuple) else got) != value:
            raise CheckpointError(f"{source}: {name} is {got!r}; the aMUSEd VQ decoder needs {value!r}")
    try:
        return AmusedVQConfig(grid=grid, codebook_size=setting("num_vq_embeddings"),
                              code_dim=setting("vq_embed_dim") or setting("latent_channels"),
                              latent_channels=setting("latent_channels"), block_out_channels=levels,
                              layers_per_block=setting("layers_per_block"), norm_groups=setting("norm_num_groups"))
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _read_json(path: Path) -> dict:
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path} not found (expected a diffusers VQModel folder)")
    return read_json(path, "model config", CheckpointError, MAX_CONFIG_BYTES)
