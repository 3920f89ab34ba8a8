"""Checkpoints: weights as safetensors, config as JSON beside them (diffusers-style).

Two layouts, read alike: `NAME.safetensors` + `NAME.json`, or (Hugging Face's) a directory
`NAME/` with `model.safetensors` + `config.json`. The JSON holds `{"kind", "config", "meta"}`.
Both files are written atomically, the JSON last, so a checkpoint whose JSON exists is whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, read_json, sha256_file
from .classifier import Classifier, ClassifierConfig
from .llada import LLaDA, LLaDAConfig
from .maskgit import MaskGIT, MaskGITConfig
from .shortcut import Shortcut, ShortcutConfig
from .shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
from .vqvae import VQVAE, VQConfig

# checkpoint kind -> (config class, model class)
KINDS = {
    "vqvae": (VQConfig, VQVAE),
    "classifier": (ClassifierConfig, Classifier),
    "maskgit": (MaskGITConfig, MaskGIT),
    "shortcut": (ShortcutConfig, Shortcut),
    "llada": (LLaDAConfig, LLaDA),
    "llada-shortcut": (LLaDAShortcutConfig, LLaDAShortcut),
}
# the published VQ decoders, built on diffusers' modules (models/vq_diffusers.py): kind -> class names there,
# imported when such a checkpoint is read, since importing diffusers costs seconds at every start
DIFFUSERS_KINDS = {"halton-vqgan": ("HaltonVQGANConfig", "HaltonVQGAN"), "amused-vq": ("AmusedVQConfig", "AmusedVQ")}
_KIND_OF = {model_cls: kind for kind, (_, model_cls) in KINDS.items()}

BASE_KINDS = ("maskgit", "llada")
SHORTCUT_KINDS = ("shortcut", "llada-shortcut")
# the decoders a pipeline can turn tokens into images with (only "vqvae" also encodes images)
VQ_KINDS = ("vqvae", "halton-vqgan", "amused-vq")


def kind_classes(kind: str) -> tuple[type, type]:
    """(config class, model class) of a checkpoint kind (KINDS or DIFFUSERS_KINDS)."""
    if kind in DIFFUSERS_KINDS:
        from . import vq_diffusers  # diffusers (seconds to import): only for a published VQ decoder

        return tuple(getattr(vq_diffusers, name) for name in DIFFUSERS_KINDS[kind])
    return KINDS[kind]


def kind_of(model: torch.nn.Module) -> str:
    for kind, (_, name) in DIFFUSERS_KINDS.items():  # a model of these exists: its module is imported
        if type(model).__name__ == name and type(model).__module__ == f"{__package__}.vq_diffusers":
            return kind
    if type(model) not in _KIND_OF:
        raise CheckpointError(f"no checkpoint kind for {type(model).__name__}")
    return _KIND_OF[type(model)]


WEIGHTS, CONFIG = "model.safetensors", "config.json"  # the directory layout's names


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) of a checkpoint: NAME.safetensors + NAME.json (named with or without a
    suffix), or a directory's model.safetensors + config.json."""
    p = Path(path)
    if p.is_dir():
        return p / WEIGHTS, p / CONFIG
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict | None = None,
                    dtype: torch.dtype | None = None, state: dict | None = None, directory: bool = False) -> None:
    """Write `model` (or an explicit `state` dict) with its config.

    `dtype` casts floating tensors (fp16 for the shipped assets); `directory` writes the
    `NAME/model.safetensors` + `NAME/config.json` layout.
    """
    if directory:
        Path(path).mkdir(parents=True, exist_ok=True)
    weights, config = checkpoint_files(path)
    state = state if state is not None else model.state_dict()
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
    doc = {"kind": kind_of(model), "config": model.cfg.to_dict(), "meta": meta or {}}
    with atomic_path(config) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")


def checkpoint_digest(path: str | Path) -> str:
    """A short content hash of a checkpoint's weights: ties trained shortcuts and bundles to their base."""
    weights, _ = checkpoint_files(path)
    return sha256_file(weights)[:16]


MAX_CONFIG_BYTES = 1 << 20
# the most any integer field of a model config may hold: beyond it, a config is a typo or an attack
# (a depth of 10**9 would allocate until memory runs out, before any shape could be compared)
MAX_CONFIG_INT = 1 << 22
MAX_LAYERS = 1024


def read_config(path: str | Path) -> dict:
    """A checkpoint's JSON (kind, config, meta), of bounded size, types and ranges checked."""
    _, config = checkpoint_files(path)
    if not config.is_file():
        raise CheckpointError(f"checkpoint config not found: {config}")
    doc = read_json(config, "checkpoint config", CheckpointError, MAX_CONFIG_BYTES, parse_constant=_no_constant)
    if not isinstance(doc, dict) or doc.get("kind") not in {**KINDS, **DIFFUSERS_KINDS}:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise CheckpointError(f"checkpoint {config} has unknown kind {kind!r}; known: "
                              f"{', '.join([*KINDS, *DIFFUSERS_KINDS])}")
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("meta", {}), dict):
        raise CheckpointError(f"checkpoint {config}: `config` and `meta` must be JSON objects")
    bad = _out_of_range(doc["config"])
    if bad:
        raise CheckpointError(f"checkpoint config {config}: {bad}")
    doc.setdefault("meta", {})
    return doc


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def config_from_dict(cfg_cls, doc: dict):
    """A config dataclass from a file's dict: unknown or missing keys and wrong types are a
    ConfigError naming the field (a dataclass alone would take heads="two")."""
    if not isinstance(doc, dict):
        raise ConfigError(f"a {cfg_cls.__name__} is a JSON object, not {type(doc).__name__}")
    known = {f.name: f for f in fields(cfg_cls)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise ConfigError(f"{cfg_cls.__name__} has no field {unknown[0]!r}")
    for name, value in doc.items():
        want = _TYPES.get(str(known[name].type).split(" ")[0])
        if want and (not isinstance(value, want) or (bool not in want and isinstance(value, bool))):
            raise ConfigError(f"{cfg_cls.__name__}.{name} must be {known[name].type}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{cfg_cls.__name__}.{name} must be finite, not {value!r}")
    try:
        return cfg_cls(**doc)
    except TypeError as e:
        raise ConfigError(f"{cfg_cls.__name__}: {e}") from None


def _no_constant(name):
    raise ValueError(f"{name} is not a number a checkpoint config may hold")


def _out_of_range(cfg: dict, where: str = "") -> str | None:
    for k, v in cfg.items():
        if isinstance(v, dict):
            bad = _out_of_range(v, f"{where}{k}.")
            if bad:
                return bad
        elif isinstance(v, int) and not isinstance(v, bool):
            top = MAX_LAYERS if k in ("depth", "n_block", "heads") else MAX_CONFIG_INT
            if not -1 <= v <= top:
                return f"{where}{k} = {v} is out of range (-1..{top})"
    return None


class _SkipInit(TorchFunctionMode):
    """Weight initialization skipped on meta tensors (nn.init.normal_, Tensor.uniform_, ...): it computes
    nothing there, and torch runs it through torch._refs, whose first use imports torch._dynamo (and
    torch.onnx with it), seconds at every process start."""

    # in-place fills only (never what changes a shape, such as unsqueeze_)
    FILLS = frozenset({"normal_", "uniform_", "zero_", "zeros_", "ones_", "fill_", "constant_", "trunc_normal_",
                       "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
                       "eye_", "dirac_", "sparse_", "random_", "bernoulli_", "exponential_", "log_normal_",
                       "cauchy_", "geometric_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else next(iter(kwargs.values()), None)
        if getattr(func, "__name__", "") in self.FILLS and isinstance(first, torch.Tensor) and first.is_meta:
            return first
        return func(*args, **kwargs)


def load_checkpoint(path: str | Path, map_location: str = "cpu",
                    kinds: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Build the model from its JSON config and load its weights (cast to fp32).

    `kinds`: the checkpoint kinds the caller can use; any other is a CheckpointError naming it.
    The model is first built on the meta device and its tensor shapes compared with the weights
    file's header, so a config that does not fit its weights allocates nothing."""
    weights, _ = checkpoint_files(path)
    doc = read_config(path)
    if kinds is not None and doc["kind"] not in kinds:
        raise CheckpointError(f"{weights.with_suffix('')} is a {doc['kind']} checkpoint; expected {' or '.join(kinds)}")
    cfg_cls, model_cls = kind_classes(doc["kind"])
    try:
        cfg = config_from_dict(cfg_cls, doc["config"])
        with _SkipInit(), torch.device("meta"):
            ref = model_cls(cfg).state_dict()
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint config {weights.with_suffix('.json')} does not describe a "
                              f"{doc['kind']}: {e}") from None
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {weights} are corrupt: {e}") from None
    missing = sorted(set(ref) - set(shapes))
    unexpected = sorted(set(shapes) - set(ref))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [k for k in ref if tuple(ref[k].shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"checkpoint {weights} does not match its config: {k} is {list(shapes[k])}, "
                              f"the config gives {list(ref[k].shape)}")
    check_meta(doc["meta"], getattr(cfg, "num_classes", 0), weights.with_suffix(".json"))
    model = model_cls(cfg)
    state = load_file(str(weights), device=map_location)
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    model.meta = doc["meta"]
    return model.eval()


MAX_CLASS_NAME = 200  # as a bundle manifest's: names become file names (slugged, cut)


def check_meta(meta: dict, num_classes: int, source) -> None:
    """A checkpoint's `meta` as the runtime will use it: `class_names` a list of one name of 1..200
    characters per class (or none), `sampling` an object (its values are checked by SamplerConfig)."""
    names = meta.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME for n in names):
        raise CheckpointError(f"checkpoint {source}: meta.class_names must be a list of names of 1..{MAX_CLASS_NAME} "
                              "characters")
    if len(names) not in (0, num_classes):
        raise CheckpointError(f"checkpoint {source}: meta.class_names has {len(names)} names for {num_classes} "
                              "classes")
    if not isinstance(meta.get("sampling", {}), (dict, type(None))):
        raise CheckpointError(f"checkpoint {source}: meta.sampling must be a JSON object of sampler settings")


def load_shortcut(path: str | Path, base_path: str | Path, base: torch.nn.Module | None = None) -> torch.nn.Module:
    """A shortcut checkpoint, checked against the base model it will run with (a shortcut learns
    one base model's features: it records that base's weight digest when it is trained). With
    `base` (the loaded base), the shortcut takes its frozen embeddings from it, ready to run."""
    sc = load_checkpoint(path, kinds=SHORTCUT_KINDS)
    trained_for = sc.meta.get("base_digest")
    actual = checkpoint_digest(base_path)
    if trained_for and trained_for != actual:
        raise ConfigError(f"the shortcut {path} was trained for another base model "
                          f"(digest {trained_for}; {base_path} has {actual})")
    if base is not None:
        sc.load_base_embeddings(base)
    return sc
