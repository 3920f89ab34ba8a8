"""`MigmPipeline`: migm as a diffusers `DiffusionPipeline`, for the Hugging Face way of working.

    pipe = MigmPipeline.from_pretrained("org/name")            # or a folder, or a shipped name
    pipe.to("cuda")
    images = pipe(class_labels=["cat"], guidance_scale=4.0, generator=torch.Generator().manual_seed(0)).images
    pipe.save_pretrained("folder"); pipe.push_to_hub("me/name")

A saved folder is a diffusers pipeline folder: model_index.json names each component as
[library, class] (`migm.runtime.diffusers_models` classes for base, vq, shortcut; transformers'
tokenizer class), each component folder holds config.json + diffusion_pytorch_model.safetensors,
README.md is the model card, and `pipeline_migm.py` (two lines importing this class from the
installed migm) lets diffusers itself load the folder:

    diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

(diffusers runs a folder's pipeline file only with trust_remote_code=True; this class's own
`from_pretrained` never runs code from a folder and reads safetensors only.) Folders written
by migm 0.1's saved-pipeline format still load (`saved.py`); `save_pretrained` rewrites them.

Sampling is the runtime `Pipeline` (built on first use, rebuilt after `to()`), so tokens are
the same as `Pipeline.from_models` on the same weights; `__call__` uses diffusers' names and
meanings (runtime `Pipeline.__call__`), and shows diffusers' progress bar.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline

from .. import __version__
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_dir, read_json
from ..models.text import load_tokenizer
from . import hub, saved
from .diffusers_models import BY_NAME, weights_digest, wrap
from .pipeline import Pipeline, check_dtype

PIPELINE_FILE = "pipeline_migm"  # diffusers' custom-pipeline file: model_index _class_name [file, class]
SHIM = ('"""Lets diffusers load this folder (DiffusionPipeline.from_pretrained(..., trust_remote_code=True)):\n'
        'the pipeline is the installed migm\'s (pip install migm)."""\n'
        "from migm.runtime.diffusers_pipeline import MigmPipeline  # noqa: F401\n")
COMPONENTS = ("base", "vq", "shortcut")
MODELS_MODULE = "migm.runtime.diffusers_models"


def is_saved(path: Path) -> bool:
    """A folder `save_pretrained` wrote (the only kind it replaces), in either format."""
    try:
        name = read_json(path / saved.INDEX, "pipeline index", CheckpointError, saved.MAX_INDEX_BYTES)["_class_name"]
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return False
    return name in ("MigmPipeline", [PIPELINE_FILE, "MigmPipeline"])


class MigmPipeline(DiffusionPipeline):
    """Masked image generation with a MIGM-Shortcut: base model, VQ decoder, optional shortcut and
    (text-to-image) tokenizer, as a diffusers pipeline."""

    _optional_components = ["shortcut", "tokenizer"]
    _callback_tensor_inputs: list[str] = []  # the loop's tensors live inside one compiled step loop

    def __init__(self, base, vq, shortcut=None, tokenizer=None):
        super().__init__()
        self.register_modules(base=base, vq=vq, shortcut=shortcut, tokenizer=tokenizer)
        if shortcut is not None:
            tied = shortcut.config.base_digest
            if tied and tied != weights_digest(base.model):
                raise ConfigError(f"the shortcut was trained for another base model (digest {tied}; this base has "
                                  f"{weights_digest(base.model)})")
            shortcut.model.load_base_embeddings(base.model)
        self._precision = check_dtype(next(base.parameters()).dtype)
        self._runtime: Pipeline | None = None

    # ---- building ----

    @classmethod
    def from_models(cls, base: torch.nn.Module, vq: torch.nn.Module, shortcut: torch.nn.Module | None = None,
                    tokenizer=None) -> "MigmPipeline":
        """The pipeline over migm's plain models (sharing their weights)."""
        sc = None
        if shortcut is not None:
            shortcut.meta = {k: v for k, v in getattr(shortcut, "meta", {}).items() if k != "base_digest"}
            sc = wrap(shortcut, base_digest=weights_digest(base))
        return cls(base=wrap(base), vq=wrap(vq), shortcut=sc, tokenizer=tokenizer)

    @classmethod
    def from_runtime(cls, pipe: Pipeline) -> "MigmPipeline":
        if not pipe.models:
            raise ConfigError("save_pretrained writes the torch models, and this pipeline runs a bundle's graphs: "
                              "load it with backend='torch' (or from checkpoints) to save it")
        m = pipe.models
        return cls.from_models(m["base"], m["vq"], m.get("shortcut"), pipe.tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, torch_dtype: torch.dtype | None = None,
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool | None = None, token: str | bool | None = None,
                        **kwargs) -> "MigmPipeline":
        """A shipped model's name ("tiny-animals", "tiny-scenes"), a saved folder, or a Hub repo id
        ("org/name", fetched with huggingface_hub's snapshot_download into its cache: HF_HOME,
        HF_HUB_OFFLINE and `revision` apply). `torch_dtype`: torch.float32 (the default: exact) or
        torch.bfloat16; float16 is refused. Safetensors only; no code from the folder is run."""
        if kwargs:
            raise ConfigError(f"MigmPipeline.from_pretrained does not take {', '.join(sorted(kwargs))}")
        check_dtype(torch_dtype)
        name = str(pretrained_model_name_or_path)
        if name in hub.SHIPPED:
            pipe = cls.from_runtime(Pipeline.from_checkpoints(model=name, precision="fp32"))
            return pipe.to(torch_dtype) if torch_dtype is not None else pipe
        path = hub.local_folder(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
        index = _read_index(path)
        if "_diffusers_version" not in index:  # migm 0.1's own format (saved.py)
            models, tokenizer = saved.load(path)
            pipe = cls.from_models(models["base"], models["vq"], models.get("shortcut"), tokenizer)
            return pipe.to(torch_dtype) if torch_dtype is not None else pipe
        parts = {}
        for part in (*COMPONENTS, "tokenizer"):
            entry = index.get(part)
            if not entry or entry[0] is None:
                continue
            if part == "tokenizer":
                hub.require_file(path, "tokenizer/tokenizer.json", pretrained_model_name_or_path)
                parts[part] = load_tokenizer(path / part)
                continue
            if list(entry) != [MODELS_MODULE, entry[1]] or entry[1] not in BY_NAME:
                raise CheckpointError(f"{path / saved.INDEX}: component {part} is {entry}, not a migm model")
            for rel in (f"{part}/config.json", f"{part}/diffusion_pytorch_model.safetensors"):
                hub.require_file(path, rel, pretrained_model_name_or_path)
            parts[part] = BY_NAME[entry[1]].from_pretrained(path, subfolder=part, use_safetensors=True,
                                                            torch_dtype=torch_dtype, low_cpu_mem_usage=False)
        if "base" not in parts or "vq" not in parts:
            raise CheckpointError(f"{path / saved.INDEX} names no base or no vq component")
        return cls(**parts)

    # ---- saving ----

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str | None = None, push_to_hub: bool = False,
                        results: Sequence[dict] | None = None, **kwargs) -> Path:
        """Write the folder (atomically: a failed save leaves none; an existing folder is replaced
        only if migm wrote it). `results`: measured rows for the model card's table (dicts, one a row).
        push_to_hub=True uploads it (kwargs: repo_id, token, private, commit_message, create_pr)."""
        if not safe_serialization:
            raise ConfigError("migm writes safetensors only (safe_serialization=False would write pickles)")
        if push_to_hub:
            return self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), results=results, **kwargs)
        if kwargs:
            raise ConfigError(f"save_pretrained does not take {', '.join(sorted(kwargs))}")
        directory = Path(save_directory)
        with atomic_dir(directory, ours=is_saved, what="saved pipeline") as stage:
            super().save_pretrained(str(stage), safe_serialization=True, variant=variant,
                                    max_shard_size=max_shard_size)
            index = json.loads((stage / saved.INDEX).read_text())
            index["_class_name"] = [PIPELINE_FILE, type(self).__name__]
            index["_migm_version"] = __version__
            hf_class = getattr(self.tokenizer, "hf_class", None)
            if hf_class:  # migm reads tokenizers with `tokenizers` alone; diffusers loads the same files by
                # the transformers class that wrote them
                if not (stage / "tokenizer" / "tokenizer.json").is_file():
                    self.tokenizer.save_pretrained(stage / "tokenizer")
                index["tokenizer"] = ["transformers", hf_class]
            (stage / saved.INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            (stage / f"{PIPELINE_FILE}.py").write_text(SHIM)
            hub.model_card(self, results).save(str(stage / "README.md"))
        return directory

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, results: Sequence[dict] | None = None,
                    **kwargs) -> Any:
        """Save into a temporary folder and upload it (huggingface_hub's HfApi: create_repo, upload_folder)."""
        if kwargs:
            raise ConfigError(f"push_to_hub does not take {', '.join(sorted(kwargs))}")
        with tempfile.TemporaryDirectory(prefix="migm-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "pipeline", results=results)
            return hub.upload(folder, repo_id, token=token, private=private, create_pr=create_pr,
                              commit_message=commit_message or f"Upload {type(self).__name__} (migm {__version__})")

    # ---- running ----

    def to(self, *args, **kwargs) -> "MigmPipeline":
        """Move (or cast) every component; the runtime is rebuilt for the new device and dtype."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        precision = check_dtype(dtype) if dtype is not None else self._precision
        out = super().to(*args, **kwargs)
        out._precision, out._runtime = precision, None
        return out

    @property
    def runtime(self) -> Pipeline:
        """The runtime pipeline over these components (torch backend, this pipeline's device)."""
        if self._runtime is None:
            sc = self.shortcut.model if self.shortcut is not None else None
            self._runtime = Pipeline.from_models(self.base.model, self.vq.model, sc, device=str(self.device),
                                                 precision=self._precision)
            self._runtime.tokenizer = self.tokenizer
        return self._runtime

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, class_labels: Sequence[int | str] | int | None = None,
                 *, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None, num_images_per_prompt: int = 1,
                 budget: int | None = None, strategy: str | None = None, seed: int | None = None,
                 batch_size: int = 64, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable[..., dict] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] | None = None):
        """See `Pipeline.__call__` (the same arguments and meanings: guidance_scale s is diffusers'
        u + s(c - u), off for s <= 1); with diffusers' progress bar (`set_progress_bar_config`)."""
        with self.progress_bar(total=1) as bar:  # the real total comes with the first step
            def progress(done, total):
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(done - bar.n)

            return self.runtime(prompt, class_labels, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, generator=generator,
                                num_images_per_prompt=num_images_per_prompt, budget=budget, strategy=strategy,
                                seed=seed, batch_size=batch_size, output_type=output_type, return_dict=return_dict,
                                callback_on_step_end=callback_on_step_end,
                                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                                progress=progress, owner=self)


def _read_index(path: Path) -> dict:
    index = read_json(path / saved.INDEX, "pipeline index", CheckpointError, saved.MAX_INDEX_BYTES)
    if not isinstance(index, dict) or not is_saved(path):
        raise CheckpointError(f"{path / saved.INDEX} is not a migm pipeline (its _class_name is not MigmPipeline)")
    return index
