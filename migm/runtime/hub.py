"""The Hugging Face Hub: saved pipelines by repo id, the paper's released files, model cards, uploads.

Everything goes through huggingface_hub's own functions (snapshot_download, hf_hub_download,
HfApi), so its cache (HF_HOME / HF_HUB_CACHE, laid out as models--ORG--NAME/{refs,snapshots}),
HF_HUB_OFFLINE and revisions behave as in every other Hugging Face library. Only the files migm
reads are fetched (JSON, safetensors, the released .pth/.ckpt files read weights-only): never
code. A file missing from the cache in offline mode is one line naming the repo and the file.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Sequence

from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from .. import __version__, assets
from ..errors import CheckpointError, ConfigError
from ..families import family_of
from ..models.loaders import DIMOO_8B, HALTON_IMAGENET512
from . import cache as migm_cache

SHIPPED = tuple(assets.MODELS)
PIPELINE_FILES = ["model_index.json", "README.md", "*/config.json", "*/*.safetensors", "tokenizer/*.json",
                  "tokenizer/*.txt"]
# where the paper's released files live (upstream prepare_weights.py / READMEs), and their licences
MASKGIT_REPO, SHORTCUT_REPO, DIMOO_REPO = "llvictorll/Maskgit-pytorch", "Kaiwen-Zhu/MIGM-Shortcut", \
    "Alpha-VLLM/Lumina-DiMOO"
RELEASED = {
    "maskgit": {"base": (MASKGIT_REPO, "pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth"),
                "vqgan": (MASKGIT_REPO, "pretrained_maskgit/VQGAN/last.ckpt"),
                "shortcut": (SHORTCUT_REPO, "MaskGIT-Shortcut/maskgit-shortcut.pth")},
    "dimoo": {"model": (DIMOO_REPO, None),  # the whole repository: shards + index, tokenizer, vqvae/
              "shortcut": (SHORTCUT_REPO, "DiMOO-Shortcut/dimoo-shortcut.pth")},
}
DIMOO_FILES = ["*.json", "*.safetensors", "vqvae/*.json", "vqvae/*.safetensors"]  # no code, no pickles
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _missing(repo_id: str, filename: str | None, e: Exception) -> CheckpointError:
    what = f"{repo_id}: {filename}" if filename else repo_id
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or _offline():
        return CheckpointError(f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                               "HF_HUB_OFFLINE=1 forbids downloading it: fetch it once online, or unset HF_HUB_OFFLINE")
    return CheckpointError(f"could not fetch {what} from the Hugging Face Hub: {' '.join(str(e).split())[:300]}")


def plain_files(path: str | Path) -> Path:
    """A Hub snapshot folder (or one file of it) as plain files. huggingface_hub's cache keeps each
    file as a symbolic link into the repo's own blobs/, and migm's readers follow no links (a link in
    a folder from someone else could point anywhere). Each link is checked to end in a regular file
    in this repo's blobs/, then hard-linked (copied across file systems) into migm's cache under
    hub/REPO/REVISION/, so the loaders read regular files only. A path outside the Hub cache's
    layout is returned as it is."""
    path = Path(path)
    snapshots = next((p for p in path.parents if p.name == "snapshots"), None)
    if snapshots is None:
        return path
    rev = path.relative_to(snapshots).parts[0]
    blobs = (snapshots.parent / "blobs").resolve()
    dest_root = migm_cache.cache_dir() / "hub" / snapshots.parent.name / rev
    files = [f for f in path.rglob("*") if not f.is_dir()] if path.is_dir() else [path]
    for f in files:
        target = f.resolve()
        if f.is_symlink() and not target.is_relative_to(blobs):
            raise CheckpointError(f"{f} links outside its repository's blobs/ in the Hugging Face cache; "
                                  "migm follows links only into the repo's own blobs")
        if not stat.S_ISREG(target.stat().st_mode):
            raise CheckpointError(f"{f} is not a regular file")
        dest = dest_root / f.relative_to(snapshots / rev)
        if dest.exists() and os.path.samefile(dest, target):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            os.link(target, tmp)
        except OSError:  # another file system: a copy
            shutil.copyfile(target, tmp)
        os.replace(tmp, dest)
    if path.is_dir():  # the view mirrors the snapshot: what left the snapshot leaves the view (ours only)
        view = dest_root / path.relative_to(snapshots / rev)
        keep = {dest_root / f.relative_to(snapshots / rev) for f in files}
        for f in [f for f in view.rglob("*") if not f.is_dir()] if view.is_dir() else []:
            if f not in keep:
                f.unlink()
    return dest_root / path.relative_to(snapshots / rev)


def is_repo_id(name: str | Path) -> bool:
    return isinstance(name, str) and not Path(name).exists() and bool(_REPO_ID.match(name))


def local_folder(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                 local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """A saved pipeline folder: the path itself, or the Hub snapshot of a repo id (its JSON and
    safetensors only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if not is_repo_id(name_or_path):
        raise ConfigError(f"{name_or_path} is neither a shipped model ({', '.join(SHIPPED)}), a saved pipeline "
                          "folder nor a Hugging Face repo id (org/name)")
    try:
        return plain_files(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                             local_files_only=bool(local_files_only), allow_patterns=PIPELINE_FILES))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, EntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise _missing(str(name_or_path), None, e) from None


def require_file(folder: Path, rel: str, source: str | Path) -> Path:
    """`folder/rel`, or one line naming the repo (or folder) and the file."""
    p = folder / rel
    if not p.is_file():
        if is_repo_id(str(source)):
            raise _missing(str(source), rel, LocalEntryNotFoundError(rel)) if _offline() else \
                CheckpointError(f"{source}: {rel} is missing from the repository (revision {folder.name})")
        raise CheckpointError(f"{source}: {rel} is missing")
    return p


def fetch_released(model: str, shortcut: bool = True, revision: str | None = None,
                   cache_dir: str | Path | None = None) -> dict[str, Path]:
    """The paper's released files for `migm-export convert MODEL --from-hub`, from the Hub cache
    (downloaded into it first unless HF_HUB_OFFLINE is set): {role: local path}."""
    out = {}
    for role, (repo_id, filename) in RELEASED[model].items():
        if role == "shortcut" and not shortcut:
            continue
        rev = revision if repo_id != SHORTCUT_REPO else None  # --revision names the base model's revision
        try:
            if filename is None:
                out[role] = plain_files(snapshot_download(repo_id, revision=rev, cache_dir=cache_dir,
                                                          allow_patterns=DIMOO_FILES))
            else:
                out[role] = plain_files(hf_hub_download(repo_id, filename, revision=rev, cache_dir=cache_dir))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, EntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise _missing(repo_id, filename, e) from None
    return out


def upload(folder: Path, repo_id: str, token=None, private=None, create_pr: bool = False,
           commit_message: str = "Upload"):
    """Create the repo if needed and upload the folder (one commit)."""
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message,
                             create_pr=create_pr)


def model_card(pipe, results: Sequence[dict] | None = None) -> ModelCard:
    """huggingface_hub's ModelCard for a MigmPipeline: metadata (library, task, base model, licence,
    paper), the sampler defaults, and measured rows (`results`, or the shortcut's own validation)."""
    base = pipe.base.model
    fam = family_of(base)
    released = {"maskgit": HALTON_IMAGENET512, "llada": DIMOO_8B}.get(fam.name)
    upstream = released is not None and (base.cfg.width, base.cfg.depth) == (released.width, released.depth)
    base_model = {"maskgit": MASKGIT_REPO, "llada": DIMOO_REPO}[fam.name] if upstream else None
    data = ModelCardData(
        library_name="diffusers", pipeline_tag=fam.pipeline_tag,
        license={"maskgit": "mit", "llada": "apache-2.0"}[fam.name] if upstream else "mit", base_model=base_model,
        tags=["migm", "masked-image-generation", "migm-shortcut", "arxiv:2602.23996"])
    meta = getattr(base, "meta", {})
    sampling = pipe.runtime.defaults.to_dict()
    rows = list(results or _validation_rows(pipe))
    lines = [
        f"# {type(pipe).__name__} ({fam.name})", "",
        "Masked image generation with a MIGM-Shortcut (paper: [arXiv:2602.23996](https://arxiv.org/abs/2602.23996)):"
        " a small shortcut model predicts the base model's features on the steps the base skips.", "",
        "```python", "import torch", "from migm import MigmPipeline", "",
        'pipe = MigmPipeline.from_pretrained("REPO_ID")       # or diffusers.DiffusionPipeline.from_pretrained('
        '"REPO_ID", trust_remote_code=True)',
        f"image = pipe({fam.call_example}, guidance_scale={1 + sampling['guidance']:g}, budget=None, "
        "generator=torch.Generator().manual_seed(0)).images[0]", "```", "",
        "## Sampler defaults", "", "| setting | value |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in sampling.items()), "",
        f"`guidance_scale` s is diffusers' u + s(c - u); the stored guidance weight w = s - 1 "
        f"({sampling['guidance']:g}, ramp {sampling['guidance_ramp']}).", "",
        "## Measured", "",
    ]
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    else:
        lines.append("No measurements were recorded with this model.")
    if meta.get("class_names"):
        lines += ["", "Classes: " + ", ".join(meta["class_names"])]
    lines += ["", f"Written by migm {__version__}."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _validation_rows(pipe) -> list[dict]:
    """The shortcut's held-out validation (its KL to the base's next-step distribution over a chain of
    predicted steps, against reusing the last features), as its training recorded it."""
    if pipe.shortcut is None:
        return []
    val = pipe.shortcut.model.meta.get("validation") or {}
    rows = []
    for name, key in (("shortcut", ""), ("reuse last features", "reuse_")):
        if f"{key}kl_chain" in val:
            rows.append({"predictor": name, "KL (1 step)": val[f"{key}kl_1"], "KL (chain)": val[f"{key}kl_chain"],
                         "rel. feature error (chain)": val[f"{key}rel_err_chain"]})
    return rows


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
