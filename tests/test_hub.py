"""The Hub without a network: a cache laid out as huggingface_hub lays it out
(HF_HUB_CACHE/models--ORG--NAME/{blobs/SHA, refs/main, snapshots/REV/FILE -> blob}) and
HF_HUB_OFFLINE=1. Saved pipelines by repo id and revision; `migm-export convert --from-hub` on
fake released files stored under the real repo ids and file names; a missing file is one line;
push_to_hub calls HfApi's create_repo and upload_folder (patched to copy into a local folder)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard, constants
from test_convert import dimoo_dir, maskgit_files  # noqa: F401 (fixtures: fake released files)

from migm.cli.export import main as export_main
from migm.errors import CheckpointError
from migm.runtime import Pipeline, hub
from migm.runtime.diffusers_pipeline import MigmPipeline

REV1, REV2 = "1" * 40, "2" * 40


def put(cache: Path, repo_id: str, files: dict, rev: str = REV1, main: bool = True) -> Path:
    """Store files {name in repo: local path} in the cache as huggingface_hub does: content in blobs/,
    symlinks under snapshots/REV/, the branch in refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / rev / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return repo / "snapshots" / rev


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """huggingface_hub reading only tmp_path/hub (its constants are read at import, so set them too)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.slow  # samples the shipped model three times
def test_from_pretrained_by_repo_id_offline(offline, tmp_path):
    runtime = Pipeline.from_pretrained("tiny-animals")
    runtime.save_pretrained(tmp_path / "full")
    MigmPipeline.from_models(runtime.models["base"], runtime.models["vq"]).save_pretrained(tmp_path / "noshortcut")
    put(offline, "someone/tiny-animals", folder_files(tmp_path / "full"), REV1)
    put(offline, "someone/tiny-animals", folder_files(tmp_path / "noshortcut"), REV2, main=False)
    pipe = MigmPipeline.from_pretrained("someone/tiny-animals")  # refs/main -> REV1
    assert pipe.shortcut is not None
    want = runtime.generate_tokens([1, 2], budget=6, seed=3)
    assert torch.equal(pipe.runtime.generate_tokens([1, 2], budget=6, seed=3), want)
    assert torch.equal(Pipeline.from_pretrained("someone/tiny-animals").generate_tokens([1, 2], budget=6, seed=3), want)
    assert MigmPipeline.from_pretrained("someone/tiny-animals", revision=REV2).shortcut is None
    with pytest.raises(CheckpointError, match=r"^nobody/absent is not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        MigmPipeline.from_pretrained("nobody/absent")
    snap = offline / "models--someone--tiny-animals" / "snapshots" / REV1
    (snap / "base" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        MigmPipeline.from_pretrained("someone/tiny-animals")
    assert str(e.value).startswith("someone/tiny-animals: base/diffusion_pytorch_model.safetensors is not in the "
                                   "Hugging Face cache") and "\n" not in str(e.value)


@pytest.mark.slow  # subprocesses, converts and samples twice
def test_convert_from_hub_offline_maskgit(maskgit_files, tmp_path):  # noqa: F811
    """The real CLI in a fresh process with HF_HOME and HF_HUB_OFFLINE=1 in its environment."""
    r = maskgit_files
    cache = tmp_path / "home" / "hub"
    put(cache, "llvictorll/Maskgit-pytorch", {"pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth":
                                              r / "MaskGIT_ImageNet_512.pth",
                                              "pretrained_maskgit/VQGAN/last.ckpt": r / "last.ckpt"})
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from migm.cli.export import main; main()", "convert", "maskgit", "--from-hub",
           "--heads", "4", "--shortcut-heads", "4", "--out", str(tmp_path / "hubmg")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"Error: Kaiwen-Zhu/MIGM-Shortcut: MaskGIT-Shortcut/maskgit-shortcut.pth is not in the Hugging Face cache "
        f"({cache}) and HF_HUB_OFFLINE=1 forbids downloading it: fetch it once online, or unset HF_HUB_OFFLINE")
    put(cache, "Kaiwen-Zhu/MIGM-Shortcut", {"MaskGIT-Shortcut/maskgit-shortcut.pth": r / "maskgit-shortcut.pth"})
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    # the same pipeline as converting the files from disk
    res = CliRunner().invoke(export_main, ["convert", "maskgit", "--base", str(r / "MaskGIT_ImageNet_512.pth"),
                                           "--vqgan", str(r / "last.ckpt"), "--shortcut",
                                           str(r / "maskgit-shortcut.pth"), "--heads", "4", "--shortcut-heads", "4",
                                           "--out", str(tmp_path / "diskmg")])
    assert res.exit_code == 0, res.output
    a = MigmPipeline.from_pretrained(tmp_path / "hubmg").runtime.generate_tokens([0, 2], budget=8, seed=1)
    b = MigmPipeline.from_pretrained(tmp_path / "diskmg").runtime.generate_tokens([0, 2], budget=8, seed=1)
    assert torch.equal(a, b)


def test_convert_from_hub_offline_dimoo(dimoo_dir, offline, tmp_path):  # noqa: F811
    files = {k: v for k, v in folder_files(dimoo_dir).items() if k != "dimoo-shortcut.pth"}
    put(offline, "Alpha-VLLM/Lumina-DiMOO", files)
    put(offline, "Kaiwen-Zhu/MIGM-Shortcut", {"DiMOO-Shortcut/dimoo-shortcut.pth": dimoo_dir / "dimoo-shortcut.pth"})
    res = CliRunner().invoke(export_main, ["convert", "dimoo", "--from-hub", "--heads", "4", "--grid", "32",
                                           "--max-text", "24", "--out", str(tmp_path / "dm")])
    assert res.exit_code == 0, res.output
    pipe = MigmPipeline.from_pretrained(tmp_path / "dm")
    assert pipe.shortcut is not None and pipe.tokenizer is not None
    assert pipe.runtime.spec.uncond_ids == (126332, 1, 2, 3, 4, 5, 6, 7, 8, 126333, 126334, 126351, 126335)


def test_model_card_and_push_to_hub(tmp_path, monkeypatch):
    calls = {}
    remote = tmp_path / "remote"

    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        calls["create_repo"] = (repo_id, private, exist_ok, self.token)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, commit_message=None, create_pr=False, **kw):
        calls["upload_folder"] = (repo_id, commit_message, create_pr)
        shutil.copytree(folder_path, remote)
        return "https://huggingface.co/me/tiny/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipe = MigmPipeline.from_pretrained("tiny-scenes")
    rows = [{"N": 32, "B": 8, "images/s": 12.5, "FD": 30.1}]
    assert pipe.push_to_hub("me/tiny", token="tok", private=True, results=rows).endswith("/commit/0")
    assert calls["create_repo"] == ("me/tiny", True, True, "tok")
    assert calls["upload_folder"][0] == "me/tiny" and calls["upload_folder"][2] is False
    card = ModelCard.load(remote / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert "arxiv:2602.23996" in card.data.tags and card.data.license == "mit"
    assert "| 32 | 8 | 12.5 | 30.1 |" in card.text and "| guidance | 6.0 |" in card.text
    assert json.loads((remote / "model_index.json").read_text())["tokenizer"][0] == "transformers"
    again = MigmPipeline.from_pretrained(remote)
    assert torch.equal(again.runtime.generate_tokens(prompts=["a small cat on the left"], seed=2, steps=8),
                       pipe.runtime.generate_tokens(prompts=["a small cat on the left"], seed=2, steps=8))
    assert hub.RELEASED["maskgit"]["base"] == ("llvictorll/Maskgit-pytorch",
                                               "pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth")
