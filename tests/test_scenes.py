"""The text-to-image model end to end: tokenizer, scene data and judge, llada training, the
shipped tiny-scenes model through Pipeline, migm-run --prompt and bundles with a tokenizer."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import needs_data

from migm import assets
from migm.errors import CheckpointError, PromptError
from migm.models.llada import LLaDAConfig
from migm.models.text import build_tokenizer, encode_prompts, load_tokenizer, save_tokenizer
from migm.runtime import Pipeline

SMALL = LLaDAConfig(text_vocab=40, codebook_size=16, grid=8, width=32, depth=1, heads=2, mlp=48, max_text=8)
WORDS = ["a", "small", "large", "cat", "dog", "on", "the", "left", "right", "at", "top", "bottom"]


def test_tokenizer_round_trip_and_layout(tmp_path):
    tok = build_tokenizer(WORDS, SMALL.text_vocab, SMALL.max_text)
    path = save_tokenizer(tok, tmp_path / "tok")
    assert sorted(p.name for p in path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    again = load_tokenizer(path)
    # the special tokens sit where LLaDAConfig expects them
    assert again.pad_token_id == SMALL.pad_id and again.mask_token_id == SMALL.mask_token
    assert again.convert_tokens_to_ids(["<|boi|>", "<|eoi|>", "<|boa|>", "<|eoa|>", "<|eol|>"]) == [
        SMALL.boi_id, SMALL.eoi_id, SMALL.boa_id, SMALL.eoa_id, SMALL.eol_id]
    ids = encode_prompts(again, ["a small cat on the left", "A LARGE dog, at the top!"], SMALL.max_text,
                         SMALL.text_vocab)
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert (ids[:, :2] == SMALL.pad_id).all() and (ids[:, 2:] != SMALL.pad_id).all()  # left-padded, 6 words each
    assert torch.equal(ids, encode_prompts(tok, ["a small cat on the left", "a large dog at the top"], 8, 40))
    with pytest.raises(PromptError, match="'purple' not in the model's vocabulary"):
        encode_prompts(again, ["a purple cat"], 8, 40)
    with pytest.raises(PromptError, match="has 9 tokens; the model takes at most 8"):
        encode_prompts(again, ["a small cat on the left on the left"], 8, 40)
    with pytest.raises(ValueError, match="do not fit"):
        build_tokenizer(WORDS, 16, 8)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")


def test_shipped_tokenizer_reads_every_caption():
    from migm.data.scenes import all_captions
    from migm.models.checkpoint import read_config

    cfg = LLaDAConfig(**read_config(assets.SCENES / "base")["config"])
    tok = load_tokenizer(assets.SCENES / "base.tokenizer")
    caps = [c for c, *_ in all_captions()]
    assert len(caps) == len(set(caps)) == 80
    ids = encode_prompts(tok, caps, cfg.max_text, cfg.text_vocab)
    assert len({tuple(r.tolist()) for r in ids}) == 80 and tok.pad_token_id == cfg.pad_id


@pytest.mark.slow  # renders and judges many scenes
@needs_data
def test_scenes_and_judge_agree():
    from migm.data.scenes import CANVAS, caption, make_scenes
    from migm.evaluation.judge import judge

    s = make_scenes("val", 1, seed=3)
    assert s.images.shape == (1000, 1, CANVAS, CANVAS) and 0 <= s.images.min() and s.images.max() <= 1
    assert make_scenes("val", 1, seed=3).images.equal(s.images)  # seeded
    j = judge(s.images)
    assert j.found.all()
    assert sum(a == b for a, b in zip(j.positions, s.positions)) == 1000
    assert sum(a == b for a, b in zip(j.sizes, s.sizes)) >= 990
    assert caption(2, "small", "left") == "a small cat on the left" and s.captions[0].startswith("a ")
    empty = judge(torch.zeros(2, 1, CANVAS, CANVAS))
    assert not empty.found.any() and empty.positions == ["none", "none"]


@pytest.mark.slow  # training
@needs_data
def test_llada_training_trajectories_and_shortcut(tmp_path):
    """The text-to-image recipe at toy size: base on captioned scenes (resumable), trajectories of
    the DiMOO sampler over prompts, the DiMOO shortcut trained on them."""
    from migm.data.scenes import caption_words
    from migm.models.checkpoint import load_checkpoint
    from migm.models.shortcut_llada import LLaDAShortcutConfig
    from migm.models.vqvae import VQVAE, VQConfig
    from migm.sampling.config import SamplerConfig
    from migm.training.train_base import scene_tokens, train_base
    from migm.training.train_shortcut import ShortcutTrainSettings, train_shortcut
    from migm.training.trajectories import TrajectorySet, collect_trajectories

    vq = VQVAE(VQConfig(image_size=64, n_down=3, width=8, codebook_size=16, code_dim=4)).eval()
    cfg = LLaDAConfig(**{**SMALL.to_dict(), "text_vocab": 64, "max_text": 8})
    tok = build_tokenizer(caption_words(), cfg.text_vocab, cfg.max_text)
    seen = []
    base = train_base(str(tmp_path / "base"), cfg, scene_tokens(vq, cfg, tok, repeats=1), steps=2, batch_size=4,
                      eval_every=2, progress=lambda s, n, m: seen.append(m["loss"]))
    assert len(seen) == 2 and all(torch.isfinite(torch.tensor(seen)))
    assert load_checkpoint(tmp_path / "base").meta["step"] == 2
    with pytest.raises(ValueError, match="tokenizer"):
        scene_tokens(vq, cfg, None)

    prompts = encode_prompts(tok, ["a small cat on the left", "a large dog at the top"], 8, 64)
    s = SamplerConfig(steps=4, guidance=2.0, tau=1.0, schedule="dimoo", sampler="dimoo")
    collect_trajectories(base, tmp_path / "traj", s, prompts, 4, shard_size=4)
    ts = TrajectorySet(tmp_path / "traj")
    assert ts.sampler.sampler == "dimoo" and ts.manifest["family"] == "llada" and ts.branches == 2
    assert torch.equal(ts.record(1)[2], prompts[1]) and torch.equal(ts.record(2)[2], prompts[0])
    with pytest.raises(ValueError, match="conditions must be"):
        collect_trajectories(base, tmp_path / "t2", s, torch.arange(3), 4)

    sc_cfg = LLaDAShortcutConfig(base=cfg.to_dict(), heads=2)
    model, val = train_shortcut(str(tmp_path / "sc"), base, ts, sc_cfg,
                                ShortcutTrainSettings(steps=2, batch_size=2, rollout=2, kl=1.0, eval_every=2,
                                                      val_fraction=0.25))
    assert {"rel_err_1", "kl_chain", "reuse_kl_chain"} <= set(val) and all(v == v for v in val.values())
    assert load_checkpoint(tmp_path / "sc").meta["trajectories"]["sampler"] == "dimoo"


@pytest.fixture(scope="module")
def scenes_pipe():
    return Pipeline.from_checkpoints(model="tiny-scenes")


@pytest.mark.slow  # samples the shipped model
def test_shipped_scenes_model_follows_prompts(scenes_pipe):
    """The shipped model puts the object where the prompt says, at the size it says (seeded)."""
    from migm.evaluation.judge import judge

    pipe = scenes_pipe
    assert pipe.spec.family == "llada" and pipe.has_shortcut and pipe.defaults.sampler == "dimoo"
    prompts = ["a small cat on the left", "a large elephant at the bottom", "a small bird at the top",
               "a large zebra on the right"]
    images = pipe.generate(prompts=prompts, steps=16, budget=6, seed=0)
    assert images.shape == (4, 1, 64, 64)
    j = judge(images)
    assert j.positions == ["left", "bottom", "top", "right"] and j.sizes == ["small", "large", "small", "large"]
    a = pipe.generate_tokens(prompts=prompts[:2], steps=8, budget=4, seed=3)
    assert torch.equal(a, pipe.generate_tokens(prompts=prompts[:2], steps=8, budget=4, seed=3))
    with pytest.raises(PromptError, match="'unicorn' not in"):
        pipe.generate_tokens(prompts=["a small unicorn on the left"], steps=4)
    with pytest.raises(ValueError, match="give prompts, not classes"):
        pipe.generate_tokens(["cat"], steps=4)


@pytest.mark.slow  # samples the shipped model
def test_run_cli_with_prompts(tmp_path):
    from migm.cli.run import main as run_main

    out = tmp_path / "o"
    res = CliRunner().invoke(run_main, ["--model", "tiny-scenes", "--prompt", "a small cat on the left",
                                        "--prompt", "a large dog at the top", "--num", "3", "--steps", "4",
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "run-0001").iterdir() if p.suffix == ".png") == [
        "0000_a-small-cat-on-the-left.png", "0001_a-large-dog-at-the-top.png", "0002_a-small-cat-on-the-left.png",
        "grid.png"]
    for args, message in [([], "text-to-image model: give --prompt"),
                          (["--prompt", "a green cat"], "'green' not in the model's vocabulary"),
                          (["--classes", "cat", "--prompt", "a cat"], "not both")]:
        res = CliRunner().invoke(run_main, ["--model", "tiny-scenes", "--steps", "2", "--out", str(tmp_path / "x"),
                                            *args])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(run_main, ["--model", "tiny-animals", "--prompt", "a cat", "--out", str(tmp_path / "y")])
    assert res.exit_code != 0 and "class-conditional model: give --classes, not --prompt" in res.output


@pytest.mark.slow  # builds the shipped model's bundle
def test_scenes_bundle_carries_its_tokenizer(tmp_path):
    """migm-export build --model tiny-scenes, then migm-run --engine scenes.plan --prompt ...; the
    tokenizer files are hashed like every other file of the bundle."""
    from migm.cli.export import main as export_main
    from migm.cli.run import main as run_main
    from migm.engines.bundle import BundleError, verify_bundle

    plan = tmp_path / "scenes.plan"
    res = CliRunner().invoke(export_main, ["build", "--backend", "ort", "--model", "tiny-scenes", "--precision", "fp32",
                                           "--out", str(plan)])
    assert res.exit_code == 0, res.output
    doc = json.loads((plan / "manifest.json").read_text())
    assert doc["family"] == "llada" and doc["tokenizer"]["files"] == ["tokenizer.json", "tokenizer_config.json"]
    out = tmp_path / "o"
    res = CliRunner().invoke(run_main, ["--engine", str(plan), "--backend", "ort",
                                        "--prompt", "a small cat on the left",
                                        "--num", "2", "--steps", "6", "--budget", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "run-0001" / "0001_a-small-cat-on-the-left.png").exists()
    ort = Pipeline.from_bundle(plan, backend="ort")
    ref = Pipeline.from_checkpoints(model="tiny-scenes", precision="fp32")
    p = ["a large horse on the right", "a small sheep at the bottom"]
    same = (ort.generate_tokens(prompts=p, steps=8, budget=4, seed=1) ==
            ref.generate_tokens(prompts=p, steps=8, budget=4, seed=1)).float().mean()
    assert same > 0.99
    with open(plan / "tokenizer" / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(BundleError, match="tokenizer.json does not match its hash"):
        verify_bundle(plan)


def test_train_cli_refuses_a_vq_of_the_other_data(tmp_path):
    from migm.cli.train import main as train_main

    res = CliRunner().invoke(train_main, ["base", "--preset", "tiny-scenes", "--vq", str(assets.VQ),
                                          "--out", str(tmp_path / "b"), "--steps", "1"])
    assert res.exit_code != 0 and "trains on 64x64 images" in res.output and "--data scenes" in res.output
    res = CliRunner().invoke(train_main, ["base", "--vq", str(assets.SCENES / "vq"), "--out", str(tmp_path / "b"),
                                          "--steps", "1"])
    assert res.exit_code != 0 and "trains on 32x32 images" in res.output
    assert not list(tmp_path.iterdir())
