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

from ..fileio import atomic_path, sha256_file


class CheckpointError(RuntimeError):
    pass


def _kinds():
    from .classifier import Classifier, ClassifierConfig
    from .llada import LLaDA, LLaDAConfig
    from .maskgit import MaskGIT, MaskGITConfig
    from .shortcut import Shortcut, ShortcutConfig
    from .shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
    from .vqvae import VQVAE, VQConfig

    return {
        "vqvae": (VQConfig, VQVAE),
        "classifier": (ClassifierConfig, Classifier),
        "maskgit": (MaskGITConfig, MaskGIT),
        "shortcut": (ShortcutConfig, Shortcut),
        "llada": (LLaDAConfig, LLaDA),
        "llada-shortcut": (LLaDAShortcutConfig, LLaDAShortcut),
    }


def kind_of(model: torch.nn.Module) -> str:
    for kind, (_, cls) in _kinds().items():
        if isinstance(model, cls):
            return kind
    raise CheckpointError(f"no checkpoint kind for {type(model).__name__}")


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict | None = None,
                    dtype: torch.dtype | None = None, state: dict | None = None) -> None:
    """Write `model` (or an explicit `state` dict) with its config.

    `dtype` casts floating tensors (fp16 for the shipped assets).
    """
    weights, config = _paths(path)
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
    weights, _ = _paths(path)
    return sha256_file(weights)[:16]


def read_config(path: str | Path) -> dict:
    _, config = _paths(path)
    if not config.exists():
        raise CheckpointError(f"checkpoint config not found: {config}")
    try:
        doc = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint config {config} is not valid JSON: {e}") from e
    if doc.get("kind") not in _kinds():
        raise CheckpointError(f"checkpoint {config} has unknown kind {doc.get('kind')!r}")
    return doc


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> torch.nn.Module:
    """Build the model from its JSON config and load its weights (cast to fp32)."""
    weights, _ = _paths(path)
    doc = read_config(path)
    cfg_cls, model_cls = _kinds()[doc["kind"]]
    model = model_cls(cfg_cls(**doc["config"]))
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
