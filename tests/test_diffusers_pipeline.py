"""migm as a diffusers pipeline: a saved folder loads in diffusers itself and in migm with the same
tokens; diffusers' meanings for guidance_scale, generator, torch_dtype, output_type, return_dict,
callbacks, the progress bar and `to()`; old folders; prompts tokenized as upstream does."""

import json

import diffusers
import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import migm
from migm.errors import ConfigError
from migm.models.checkpoint import checkpoint_digest, save_checkpoint
from migm.models.text import encode_prompts
from migm.runtime import Pipeline
from migm.runtime.diffusers_pipeline import MigmPipeline

ARGS = {"tiny-animals": {"class_labels": ["cat", "dog", 3]},
        "tiny-scenes": {"prompt": ["a small cat on the left", "a large zebra at the top"]}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The shipped models written by save_pretrained."""
    root = tmp_path_factory.mktemp("saved")
    for name in ARGS:
        Pipeline.from_pretrained(name).save_pretrained(root / name)
    return root


# one model in the fast loop: each case samples a shipped model three times
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "tiny-scenes" else n for n in ARGS])
def test_diffusers_loads_the_folder_with_migm_tokens(saved, name):
    folder = saved / name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_migm", "MigmPipeline"] and "_diffusers_version" in index
    for part in ("base", "vq", "shortcut"):
        cfg = json.loads((folder / part / "config.json").read_text())
        assert cfg["_class_name"] == index[part][1] and "_diffusers_version" in cfg
        files = sorted(p.name for p in (folder / part).iterdir())
        assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    with pytest.raises(ValueError, match="trust_remote_code"):  # diffusers runs no folder code without the opt-in
        diffusers.DiffusionPipeline.from_pretrained(str(folder))
    theirs = diffusers.DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True)
    ours = migm.MigmPipeline.from_pretrained(folder)
    assert type(theirs).__name__ == "MigmPipeline" and isinstance(theirs, diffusers.DiffusionPipeline)
    runtime = Pipeline.from_pretrained(name)
    outs = []
    for pipe in (theirs, ours, runtime):
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(**ARGS[name], budget=6, generator=torch.Generator().manual_seed(0), output_type="pt"))
    assert torch.equal(outs[0].tokens, outs[1].tokens) and torch.equal(outs[0].images, outs[1].images)
    assert torch.equal(outs[0].tokens, outs[2].tokens)  # and the shipped checkpoints' own tokens


@pytest.mark.slow  # samples the shipped model eight times
def test_guidance_scale_is_diffusers_s_and_off_at_one():
    pipe = Pipeline.from_pretrained("tiny-animals")
    rows = []
    base = pipe.backend.base
    pipe.backend.base = lambda tokens, cond: (rows.append(len(tokens)), base(tokens, cond))[1]
    for s in (3.0, 1.0, 0.5):
        rows.clear()
        out = pipe(class_labels=[2, 5], guidance_scale=s, num_inference_steps=8, seed=4, output_type="pt")
        calls = list(rows)
        ref = pipe.generate(classes=[2, 5], guidance=max(0.0, s - 1), steps=8, seed=4)
        assert torch.equal(out.images, ref)
        # the base runs once per step; with guidance on, on the conditional and unconditional rows together
        assert len(calls) == 8 and set(calls) == {4 if s > 1 else 2}
    assert torch.equal(pipe(class_labels=[2], guidance_scale=0.5, seed=1).tokens,
                       pipe(class_labels=[2], guidance_scale=1.0, seed=1).tokens)


@pytest.mark.slow  # samples the shipped model eight times
def test_generator_one_or_one_per_image():
    pipe = Pipeline.from_pretrained("tiny-animals")
    g = lambda s: torch.Generator().manual_seed(s)
    kw = {"num_inference_steps": 6, "output_type": "pt"}
    both = pipe(class_labels=[1, 7], generator=[g(10), g(11)], **kw).tokens
    alone = [pipe(class_labels=[c], generator=[g(s)], **kw).tokens[0] for c, s in ((1, 10), (7, 11))]
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])  # each image its own generator
    assert torch.equal(pipe(class_labels=[1, 7], generator=g(3), **kw).tokens,
                       pipe(class_labels=[1, 7], generator=g(3), **kw).tokens)
    assert not torch.equal(pipe(class_labels=[1, 7], generator=g(3), **kw).tokens,
                           pipe(class_labels=[1, 7], generator=g(4), **kw).tokens)
    with pytest.raises(ConfigError, match="one per image"):
        pipe(class_labels=[1, 7], generator=[g(1)])


def test_torch_dtype_output_type_and_return_dict(saved):
    with pytest.raises(ConfigError, match="bfloat16"):
        MigmPipeline.from_pretrained(saved / "tiny-animals", torch_dtype=torch.float16)
    with pytest.raises(ConfigError, match="float16"):
        Pipeline.from_pretrained("tiny-animals", torch_dtype=torch.float16)
    assert Pipeline.from_pretrained("tiny-animals").backend.precision == "fp32"  # the default: exact
    bf = MigmPipeline.from_pretrained(saved / "tiny-animals", torch_dtype=torch.bfloat16)
    assert bf.base.dtype == torch.bfloat16 and bf.runtime.backend.precision == "bf16"
    pipe = MigmPipeline.from_pretrained(saved / "tiny-animals")
    pipe.set_progress_bar_config(disable=True)
    pil = pipe(class_labels=[0, 1], seed=2, num_inference_steps=4).images
    arr = pipe(class_labels=[0, 1], seed=2, num_inference_steps=4, output_type="np").images
    pt = pipe(class_labels=[0, 1], seed=2, num_inference_steps=4, output_type="pt").images
    assert len(pil) == 2 and pil[0].size == (32, 32) and arr.shape == (2, 32, 32, 1) and pt.shape == (2, 1, 32, 32)
    assert np.array_equal(arr, pt.permute(0, 2, 3, 1).numpy())
    tup = pipe(class_labels=[0], seed=2, num_inference_steps=4, return_dict=False)
    assert isinstance(tup, tuple) and len(tup[0]) == 1


def test_callbacks_progress_bar_and_to(saved, capsys):
    pipe = MigmPipeline.from_pretrained(saved / "tiny-animals")
    seen = []
    pipe(class_labels=[0, 1, 2], num_inference_steps=6, batch_size=2,
         callback_on_step_end=lambda p, i, t, kw: seen.append((p is pipe, i)) or {})
    assert seen == [(True, i) for i in range(6)] * 2  # every step of both batches
    with pytest.raises(ConfigError, match="tensors"):
        pipe(class_labels=[0], callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents"])
    pipe.set_progress_bar_config(desc="migm-test-bar")
    pipe(class_labels=[0], num_inference_steps=4)
    assert "migm-test-bar" in capsys.readouterr().err
    first = pipe.runtime
    moved = pipe.to(torch.bfloat16)
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m in (moved.base, moved.vq, moved.shortcut))
    assert moved.runtime is not first and moved.runtime.backend.precision == "bf16"
    moved.to("cpu", torch.float32)
    assert moved.device.type == "cpu" and moved.runtime.backend.precision == "fp32"


@pytest.mark.slow  # samples the shipped model three times
def test_old_folders_load_and_shortcut_stays_tied(tmp_path):
    runtime = Pipeline.from_pretrained("tiny-animals")
    old = tmp_path / "old"
    for part in ("base", "vq"):
        save_checkpoint(runtime.models[part], old / part, meta=runtime.models[part].meta, directory=True)
    save_checkpoint(runtime.models["shortcut"], old / "shortcut", directory=True,
                    meta={"base_digest": checkpoint_digest(old / "base")})
    (old / "model_index.json").write_text(json.dumps({"_class_name": "MigmPipeline", "_migm_version": "0.1.0",
                                                      "family": "maskgit", "base": ["migm", "maskgit"]}))
    pipe = MigmPipeline.from_pretrained(old)
    want = runtime.generate_tokens([3, 4], budget=6, seed=5)
    assert torch.equal(pipe.runtime.generate_tokens([3, 4], budget=6, seed=5), want)
    pipe.save_pretrained(old)  # rewritten in place as a diffusers folder
    assert (old / "base" / "diffusion_pytorch_model.safetensors").is_file()
    assert torch.equal(MigmPipeline.from_pretrained(old).runtime.generate_tokens([3, 4], budget=6, seed=5), want)
    cfg = json.loads((old / "shortcut" / "config.json").read_text())
    cfg["base_digest"] = "0" * 16
    (old / "shortcut" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="another base model"):
        MigmPipeline.from_pretrained(old)


def _dimoo_like_tokenizer(bos: bool):
    """A tokenizer built to Lumina-DiMOO's published behaviour (no post-processor adding BOS/EOS), or one
    with a BOS template, as a Llama-style tokenizer_config would give."""
    specials = {"<system>": 126332, "</system>": 126333, "<user>": 126334, "</user>": 126335,
                "<|startoftext|>": 126080, "<|endoftext|>": 126081}
    vocab = {w: i for i, w in enumerate(["<unk>", "a", "small", "cat"])} | specials
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A",
                                                           special_tokens=[("<|startoftext|>", 126080)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   bos_token="<|startoftext|>")


def test_prompts_are_tokenized_as_upstream_calls_the_tokenizer():
    template = "<system> </system> <user> {prompt} </user>"
    plain = _dimoo_like_tokenizer(bos=False)
    ids = encode_prompts(plain, ["a small cat"], max_text=8, text_vocab=126356, template=template)
    assert ids[0].tolist() == [126081, 126332, 126333, 126334, 1, 2, 3, 126335]  # no BOS, as the real one
    assert ids[0, 1:].tolist() == plain(template.replace("{prompt}", "a small cat"))["input_ids"]
    withbos = _dimoo_like_tokenizer(bos=True)
    ids = encode_prompts(withbos, ["a small cat"], max_text=9, text_vocab=126356, template=template)
    assert ids[0].tolist()[:2] == [126081, 126080]  # the tokenizer's own BOS kept, not flagged as typed


def test_run_says_its_precision(tmp_path):
    from click.testing import CliRunner

    from migm.cli.run import main as run_main

    base = ["--model", "tiny-animals", "--classes", "cat", "--num", "1", "--steps", "2"]
    res = CliRunner().invoke(run_main, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0 and "precision fp32 (the default: upstream's arithmetic" in res.output, res.output
    res = CliRunner().invoke(run_main, [*base, "--precision", "bf16", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and "precision bf16 (asked for" in res.output, res.output
    res = CliRunner().invoke(run_main, ["--engine", str(tmp_path / "x.plan"), "--precision", "bf16",
                                        "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "a bundle runs at the precision it was built with" in res.output, res.output
