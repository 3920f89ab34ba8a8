"""Saved pipelines in the Hugging Face layout (`save_pretrained` / `from_pretrained`):

    DIR/model_index.json     {"_class_name": "MigmPipeline", "_migm_version": ..., "family": ...,
                              "base": ["migm", KIND], "vq": [...], "shortcut": [...], "tokenizer": [...]}
    DIR/base/                config.json + model.safetensors (the checkpoint's kind, config, meta)
    DIR/vq/, DIR/shortcut/   likewise
    DIR/tokenizer/           a text model's prompt tokenizer (save_pretrained layout)

The folder names are fixed, never read from the JSON, so an index names no path. The whole
directory is written in a staging directory beside it and swapped in (fileio.atomic_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import CheckpointError
from ..families import Family
from ..fileio import atomic_dir
from ..models.checkpoint import (
    BASE_KINDS,
    VQ_KINDS,
    checkpoint_digest,
    kind_of,
    load_checkpoint,
    load_shortcut,
    save_checkpoint,
)
from ..models.text import load_tokenizer

INDEX = "model_index.json"
CLASS = "MigmPipeline"


def is_saved(path: Path) -> bool:
    """A directory `save_pretrained` wrote (the only one it replaces)."""
    try:
        return json.loads((path / INDEX).read_text())["_class_name"] == CLASS
    except (OSError, ValueError, KeyError, TypeError):
        return False


def save(directory: str | Path, models: dict, family: Family, tokenizer=None) -> Path:
    directory = Path(directory)
    index = {"_class_name": CLASS, "_migm_version": __version__, "family": family.name}
    with atomic_dir(directory, ours=is_saved, what="saved pipeline") as stage:
        for name in ("base", "vq", "shortcut"):
            model = models.get(name)
            if model is None:
                continue
            meta = dict(getattr(model, "meta", {}))
            if name == "shortcut":  # tied to the base as written here
                meta["base_digest"] = checkpoint_digest(stage / "base")
            save_checkpoint(model, stage / name, meta=meta, directory=True)
            index[name] = ["migm", kind_of(model)]
        if tokenizer is not None:
            tokenizer.save_pretrained(str(stage / "tokenizer"))
            index["tokenizer"] = ["transformers", getattr(tokenizer, "hf_class", type(tokenizer).__name__)]
        (stage / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def load(directory: Path) -> tuple[dict, object]:
    """(models {base, vq, shortcut?}, tokenizer or None) of a saved pipeline directory."""
    try:
        index = json.loads((directory / INDEX).read_text()[:1 << 16])
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory / INDEX} is not a readable pipeline index: {e}") from None
    if not isinstance(index, dict) or index.get("_class_name") != CLASS:
        raise CheckpointError(f"{directory / INDEX} is not a migm pipeline (its _class_name is not {CLASS})")
    base = load_checkpoint(directory / "base", kinds=BASE_KINDS)
    models = {"base": base, "vq": load_checkpoint(directory / "vq", kinds=VQ_KINDS)}
    if (directory / "shortcut").is_dir():
        models["shortcut"] = load_shortcut(directory / "shortcut", directory / "base", base)
    tokenizer = load_tokenizer(directory / "tokenizer") if (directory / "tokenizer").is_dir() else None
    return models, tokenizer

