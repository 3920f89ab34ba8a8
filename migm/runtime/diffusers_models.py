"""diffusers `ModelMixin` + `ConfigMixin` wrappers around migm's plain torch models.

They make a saved pipeline's components diffusers models: `save_pretrained` writes
`config.json` (the model's config fields, `_class_name`, `_diffusers_version`) and
`diffusion_pytorch_model.safetensors`; `from_pretrained` reads them (safetensors only).

    MaskGITModel, LLaDAModel           the base, one per family
    ShortcutModel, LLaDAShortcutModel  the shortcut; `base_digest` ties it to its base's weights
    HaltonVQGANModel, AmusedVQModel, VQVAEModel   the VQ decoder

Each holds the plain model as `.model` (the runtime runs that, so the core models stay plain
modules); `meta` carries what the checkpoint's meta carried (class names, sampler defaults,
training settings). A config is checked like a checkpoint's (types, ranges) before any module
is built. This module imports diffusers: the runtime imports it only when a user asks for the
diffusers pipeline (`diffusers_pipeline.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..errors import CheckpointError
from ..models.checkpoint import _out_of_range, config_from_dict, kind_classes, kind_of


class _Wrapper(ModelMixin, ConfigMixin):
    kind = ""  # the checkpoint kind of the wrapped model

    def _build(self, args: dict, meta: dict | None) -> None:
        cfg_cls, model_cls = kind_classes(self.kind)
        given = {f.name: args[f.name] for f in fields(cfg_cls) if args[f.name] is not None}
        bad = _out_of_range(given)
        if bad:
            raise CheckpointError(f"{type(self).__name__} config: {bad}")
        self.model = model_cls(config_from_dict(cfg_cls, given))
        self.model.meta = dict(meta or {})

    @classmethod
    def wrap(cls, model: torch.nn.Module, **extra) -> "_Wrapper":
        """The wrapper of a plain model, sharing its weights."""
        cfg = model.cfg.to_dict()
        with torch.device("meta"):  # the wrapper's own module is replaced by `model` right away
            out = cls(**cfg, meta=dict(getattr(model, "meta", {})), **extra)
        out.model = model
        return out


class MaskGITModel(_Wrapper):
    kind = "maskgit"

    @register_to_config
    def __init__(self, codebook_size=None, num_classes=None, grid=None, width=None, depth=None, heads=None, mlp=None,
                 dropout=None, io_norm_eps=None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class LLaDAModel(_Wrapper):
    kind = "llada"

    @register_to_config
    def __init__(self, text_vocab=None, codebook_size=None, grid=None, width=None, depth=None, heads=None, mlp=None,
                 max_text=None, rope_theta=None, norm_eps=None, newline=None, pad_id=None, mask_token=None, boi_id=None,
                 eoi_id=None, boa_id=None, eoa_id=None, eol_id=None, prompt_template=None, uncond_ids=None,
                 meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class ShortcutModel(_Wrapper):
    kind = "shortcut"

    @register_to_config
    def __init__(self, width=None, codebook_size=None, vocab=None, num_tokens=None, ratio=None, n_block=None,
                 heads=None, mlp_ratio=None, cross_attention=None, layout=None, dropout=None,
                 base_digest: str | None = None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class LLaDAShortcutModel(_Wrapper):
    kind = "llada-shortcut"

    @register_to_config
    def __init__(self, base=None, ratio=None, n_block=None, heads=None, mlp=None, layout=None, mlp_ratio=None,
                 base_digest: str | None = None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class HaltonVQGANModel(_Wrapper):
    kind = "halton-vqgan"

    @register_to_config
    def __init__(self, grid=None, codebook_size=None, code_dim=None, latent_channels=None, block_out_channels=None,
                 layers_per_block=None, norm_groups=None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class AmusedVQModel(_Wrapper):
    kind = "amused-vq"

    @register_to_config
    def __init__(self, grid=None, codebook_size=None, code_dim=None, latent_channels=None, block_out_channels=None,
                 layers_per_block=None, norm_groups=None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


class VQVAEModel(_Wrapper):
    kind = "vqvae"

    @register_to_config
    def __init__(self, image_size=None, channels=None, n_down=None, width=None, codebook_size=None, code_dim=None,
                 commitment=None, meta: dict | None = None):
        super().__init__()
        self._build(locals(), meta)


WRAPPERS = {cls.kind: cls for cls in (MaskGITModel, LLaDAModel, ShortcutModel, LLaDAShortcutModel, HaltonVQGANModel,
                                      AmusedVQModel, VQVAEModel)}
BY_NAME = {cls.__name__: cls for cls in WRAPPERS.values()}


def wrap(model: torch.nn.Module, **extra) -> _Wrapper:
    return WRAPPERS[kind_of(model)].wrap(model, **extra)


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's weights that ties a shortcut to its base. Floating tensors are hashed
    as bfloat16, so the same base loaded in float32 or bfloat16 (torch_dtype) has the same digest."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        t = t.to(torch.bfloat16).view(torch.int16) if t.is_floating_point() else t
        h.update(f"{name}:{list(t.shape)};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
