"""The paper's models end to end, on synthetic files in exactly the released layouts at a reduced
size: `migm-export convert` -> a saved pipeline -> `migm-export build --pretrained` -> a bundle ->
`migm-run` with the shortcut at the paper's settings (MaskGIT N = 32, B = 12 and 8; DiMOO N = 64,
B = 14 and 9)."""

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import dimoo_shapes, dimoo_state, halton_state, maskgit_shapes, rand_state, taming_state, write_lightning
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from migm.cli.export import main as export_main
from migm.cli.run import main as run_main
from migm.models.llada import LLaDAConfig
from migm.models.loaders import DIMOO_8B
from migm.models.maskgit import MaskGITConfig
from migm.models.vq_diffusers import HaltonVQGANConfig
from migm.runtime import Pipeline

pytestmark = pytest.mark.slow  # builds bundles of the paper-layout models


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def maskgit_files(tmp_path_factory):
    """MaskGIT_ImageNet_512.pth, VQGAN last.ckpt and maskgit-shortcut.pth, reduced (an 8x8 grid: N = 32 fits)."""
    root = tmp_path_factory.mktemp("released-maskgit")
    cfg = MaskGITConfig(codebook_size=16, num_classes=3, grid=8, width=32, depth=2, heads=4, mlp=64)
    torch.save({"iter": 1, "global_epoch": 0, "model_state_dict": halton_state(cfg), "optimizer_state_dict": {}},
               root / "MaskGIT_ImageNet_512.pth")
    # taming's 32 GroupNorm groups (the converter assumes them, as every taming VQGAN has them)
    vq = HaltonVQGANConfig(grid=8, codebook_size=cfg.codebook_size, code_dim=8, latent_channels=12,
                           block_out_channels=(32, 32, 64), layers_per_block=1, norm_groups=32)
    write_lightning(root / "last.ckpt", taming_state(vq))
    torch.save(rand_state(maskgit_shapes(d=cfg.width), seed=4), root / "maskgit-shortcut.pth")
    return root


def test_convert_maskgit_build_and_run(maskgit_files, tmp_path):
    r = maskgit_files
    _ok(CliRunner().invoke(export_main, ["convert", "maskgit", "--base", str(r / "MaskGIT_ImageNet_512.pth"),
                                         "--vqgan", str(r / "last.ckpt"), "--shortcut", str(r / "maskgit-shortcut.pth"),
                                         "--heads", "4", "--shortcut-heads", "4", "--out", str(tmp_path / "mg")]))
    index = json.loads((tmp_path / "mg" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_migm", "MigmPipeline"]
    assert index["shortcut"] == ["migm.runtime.diffusers_models", "ShortcutModel"]
    assert sorted(p.name for p in (tmp_path / "mg" / "base").iterdir()) == ["config.json",
                                                                             "diffusion_pytorch_model.safetensors"]
    pipe = Pipeline.from_pretrained(tmp_path / "mg", torch_dtype=torch.float32)
    assert pipe.defaults.steps == 32 and pipe.defaults.guidance == 2.8 and pipe.defaults.tau == 7.0
    out = pipe(class_labels=[0, 2], budget=8, generator=torch.Generator().manual_seed(0))  # N = 32 by default
    assert len(out.images) == 2 and out.images[0].size == (32, 32) and out.stats.base_calls == 8
    _ok(CliRunner().invoke(export_main, ["build", "--backend", "ort", "--pretrained", str(tmp_path / "mg"),
                                         "--precision", "fp32", "--out", str(tmp_path / "mg.plan")]))
    # the paper's MaskGIT settings: N = 32 (the model's default), B = 8 (above, torch) and 12 (the bundle, ORT)
    res = _ok(CliRunner().invoke(run_main, ["--engine", str(tmp_path / "mg.plan"), "--backend", "ort", "--budget",
                                            "12", "--num", "2", "--out", str(tmp_path / "o12")]))
    assert "ort backend" in res.output and len(list((tmp_path / "o12" / "run-0001").glob("0*.png"))) == 2
    # the saved pipeline round-trips through save_pretrained
    pipe.save_pretrained(tmp_path / "again")
    again = Pipeline.from_pretrained(tmp_path / "again", torch_dtype=torch.float32)
    a = pipe.generate_tokens([1, 2], budget=12, seed=3)
    assert torch.equal(a, again.generate_tokens([1, 2], budget=12, seed=3))


def _dimoo_tokenizer(directory):
    """A word-level tokenizer at Lumina-DiMOO's special ids (its real vocabulary is not here)."""
    specials = {"<system>": 126332, "</system>": 126333, "<user>": 126334, "</user>": 126335,
                "<uncondition>": 126351, "<|endoftext|>": 126081}
    words = ["<unk>", "Generate", "an", "image", "according", "to", "the", "text", "prompt.", "a", "small", "cat",
             "large", "dog"]
    vocab = {w: i for i, w in enumerate(words)} | specials
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>").save_pretrained(
        str(directory))


@pytest.fixture(scope="module")
def dimoo_dir(tmp_path_factory):
    """A Lumina-DiMOO directory (two safetensors shards + index, tokenizer, vqvae/) and dimoo-shortcut.pth,
    with the real vocabulary and special ids at a reduced width and depth, on a 32x32 grid (N = 64 fits)."""
    from diffusers import VQModel
    from test_vq_diffusers import AMUSED

    root = tmp_path_factory.mktemp("released-dimoo")
    cfg = LLaDAConfig(**{**DIMOO_8B.to_dict(), "width": 32, "depth": 2, "heads": 4, "mlp": 48, "grid": 32,
                         "codebook_size": AMUSED["num_vq_embeddings"]})
    st = dimoo_state(cfg, pad_rows=6)
    keys = sorted(st)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: st[k].contiguous() for k in ks}, str(root / name))
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    _dimoo_tokenizer(root)
    VQModel(**AMUSED).save_pretrained(root / "vqvae")
    torch.save(rand_state(dimoo_shapes(d=32, di=16, mlp=48), seed=5), root / "dimoo-shortcut.pth")
    return root


def test_convert_dimoo_build_and_run(dimoo_dir, tmp_path):
    _ok(CliRunner().invoke(export_main, ["convert", "dimoo", "--model", str(dimoo_dir), "--shortcut",
                                         str(dimoo_dir / "dimoo-shortcut.pth"), "--heads", "4", "--grid", "32",
                                         "--max-text", "24", "--out", str(tmp_path / "dm")]))
    pipe = Pipeline.from_pretrained(tmp_path / "dm", torch_dtype=torch.float32)
    spec = pipe.spec
    assert spec.uncond_ids == (126332, 1, 2, 3, 4, 5, 6, 7, 8, 126333, 126334, 126351, 126335)
    assert pipe.defaults.steps == 64 and pipe.defaults.guidance == 4.0 and pipe.defaults.sampler == "dimoo"
    ids = pipe.conditions(prompts=["a small cat"])
    assert ids[0, -5:].tolist() == [126334, 9, 10, 11, 126335] and ids[0, 0] == spec.pad_id  # the template, left-padded
    with pytest.raises(ValueError, match="control token <uncondition>"):
        pipe.conditions(prompts=["a <uncondition> cat"])
    out = pipe(prompt="a small cat", budget=9, seed=1)  # N = 64 by default
    assert out.stats.base_calls == 9 and len(out.images) == 1
    _ok(CliRunner().invoke(export_main, ["build", "--backend", "ort", "--pretrained", str(tmp_path / "dm"),
                                         "--precision", "fp32", "--out", str(tmp_path / "dm.plan")]))
    # the paper's DiMOO settings: N = 64 (the model's default), B = 9 (above, torch) and 14 (the bundle, ORT)
    _ok(CliRunner().invoke(run_main, ["--engine", str(tmp_path / "dm.plan"), "--backend", "ort", "--prompt",
                                      "a large dog", "--budget", "14", "--out", str(tmp_path / "o14")]))
    assert len(list((tmp_path / "o14" / "run-0001").glob("0*.png"))) == 1
