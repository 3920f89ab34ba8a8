"""Reading the saved-pipeline folders migm 0.1 wrote (`MigmPipeline.from_pretrained` still loads
them; `save_pretrained` now writes diffusers folders, see diffusers_pipeline.py):

    DIR/model_index.json     {"_class_name": "MigmPipeline", "_migm_version": ..., "family": ...,
                              "base": ["migm", KIND], "vq": [...], "shortcut": [...], "tokenizer": [...]}
    DIR/base/                config.json + model.safetensors (the checkpoint's kind, config, meta)
    DIR/vq/, DIR/shortcut/   likewise
    DIR/tokenizer/           a text model's prompt tokenizer (save_pretrained layout)

The folder names are fixed, never read from the JSON, so an index names no path.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..fileio import read_json
from ..models.checkpoint import BASE_KINDS, VQ_KINDS, load_checkpoint, load_shortcut
from ..models.text import load_tokenizer

INDEX = "model_index.json"
CLASS = "MigmPipeline"
MAX_INDEX_BYTES = 1 << 16  # an index names a handful of folders


def load(directory: Path) -> tuple[dict, object]:
    """(models {base, vq, shortcut?}, tokenizer or None) of a saved pipeline directory."""
    index = read_json(directory / INDEX, "pipeline index", CheckpointError, MAX_INDEX_BYTES)
    if not isinstance(index, dict) or index.get("_class_name") != CLASS:
        raise CheckpointError(f"{directory / INDEX} is not a migm pipeline (its _class_name is not {CLASS})")
    base = load_checkpoint(directory / "base", kinds=BASE_KINDS)
    models = {"base": base, "vq": load_checkpoint(directory / "vq", kinds=VQ_KINDS)}
    if (directory / "shortcut").is_dir():
        models["shortcut"] = load_shortcut(directory / "shortcut", directory / "base", base)
    tokenizer = load_tokenizer(directory / "tokenizer") if (directory / "tokenizer").is_dir() else None
    return models, tokenizer

