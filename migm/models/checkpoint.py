"""Checkpoints: weights as safetensors, config as JSON beside them (diffusers-style).

`NAME.safetensors` holds the tensors, `NAME.json` holds `{"kind", "config", "meta"}`.
Both are written atomically, the JSON last, so a checkpoint whose JSON exists is whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, sha256_file
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
_KIND_OF = {model_cls: kind for kind, (_, model_cls) in KINDS.items()}
BASE_KINDS = ("maskgit", "llada")
SHORTCUT_KINDS = ("shortcut", "llada-shortcut")


def kind_of(model: torch.nn.Module) -> str:
    if type(model) not in _KIND_OF:
        raise CheckpointError(f"no checkpoint kind for {type(model).__name__}")
    return _KIND_OF[type(model)]


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) for a checkpoint named with or without a suffix."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict | None = None,
                    dtype: torch.dtype | None = None, state: dict | None = None) -> None:
    """Write `model` (or an explicit `state` dict) with its config.

    `dtype` casts floating tensors (fp16 for the shipped assets).
    """
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


def read_config(path: str | Path) -> dict:
    _, config = checkpoint_files(path)
    if not config.exists():
        raise CheckpointError(f"checkpoint config not found: {config}")
    try:
        doc = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint config {config} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise CheckpointError(f"checkpoint {config} has unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return doc


def load_checkpoint(path: str | Path, map_location: str = "cpu",
                    kinds: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Build the model from its JSON config and load its weights (cast to fp32).

    `kinds`: the checkpoint kinds the caller can use; any other is a CheckpointError naming it."""
    weights, _ = checkpoint_files(path)
    doc = read_config(path)
    if kinds is not None and doc["kind"] not in kinds:
        raise CheckpointError(f"{weights.with_suffix('')} is a {doc['kind']} checkpoint; expected {' or '.join(kinds)}")
    cfg_cls, model_cls = KINDS[doc["kind"]]
    try:
        model = model_cls(cfg_cls(**doc["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint config {weights.with_suffix('.json')} does not describe a "
                              f"{doc['kind']}: {e}") from None
    if not weights.exists():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint weights {weights} are corrupt: {e}") from e
    ref = model.state_dict()
    missing = sorted(set(ref) - set(state))
    unexpected = sorted(set(state) - set(ref))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    model.meta = doc["meta"]
    return model.eval()


def load_shortcut(path: str | Path, base_path: str | Path) -> torch.nn.Module:
    """A shortcut checkpoint, checked against the base model it will run with (a shortcut learns
    one base model's features: it records that base's weight digest when it is trained)."""
    sc = load_checkpoint(path, kinds=SHORTCUT_KINDS)
    trained_for = sc.meta.get("base_digest")
    actual = checkpoint_digest(base_path)
    if trained_for and trained_for != actual:
        raise ConfigError(f"the shortcut {path} was trained for another base model "
                              f"(digest {trained_for}; {base_path} has {actual})")
    return sc
