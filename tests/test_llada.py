"""The llada family: layout, padding, the DiMOO shortcut variant and sampler, prompts through Pipeline."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from migm.families.llada import LLADA
from migm.families.maskgit import MASKGIT
from migm.families.presets import PRESETS, random_models
from migm.models.llada import LLaDA, LLaDAConfig
from migm.models.shortcut_llada import LLaDAShortcut, LLaDAShortcutConfig
from migm.runtime import Pipeline
from migm.sampling.schedules import cosine_remaining, mask_schedule

CFG = LLaDAConfig(text_vocab=40, codebook_size=8, grid=3, width=32, depth=2, heads=2, mlp=48, max_text=5)


def _prompt(b, n_text, max_text=CFG.max_text):
    p = torch.randint(0, 30, (b, max_text))
    p[:, : max_text - n_text] = CFG.pad_id  # left-padded
    return p


def test_sequence_layout():
    m = LLaDA(CFG)
    tokens = torch.tensor([[0, 1, 2, 8, 8, 8, 3, 4, 5]])
    seq = m.sequence(tokens, _prompt(1, 2))[0]
    assert len(seq) == CFG.seq_len == 5 + 2 + 9 + 3 + 2
    assert seq[5].item() == CFG.boa_id and seq[6].item() == CFG.boi_id
    assert seq[-2].item() == CFG.eoi_id and seq[-1].item() == CFG.eoa_id
    assert seq[7:10].tolist() == [40, 41, 42] and seq[10].item() == CFG.eol_id  # codes shifted past the text
    assert seq[11:14].tolist() == [CFG.mask_token] * 3 and seq[14].item() == CFG.eol_id
    assert CFG.image_slots.tolist() == [7, 8, 9, 11, 12, 13, 15, 16, 17]


def test_prompt_padding_is_masked_and_layout_reaches_every_token():
    torch.manual_seed(0)
    m = LLaDA(CFG).eval()
    tokens = torch.randint(0, 9, (2, 9))
    p = _prompt(2, 2)
    f, logits = m(tokens, p)
    assert f.shape == (2, CFG.seq_len, 32) and logits.shape == (2, 9, 8)  # features at every position
    slots = CFG.image_slots
    assert torch.allclose(logits, f[:, slots] @ m.lm_head.weight[40:].T)  # the image-code rows of the LM head
    q = p.clone()
    q[:, 1] = 7  # a real token where there was padding changes the output
    assert not torch.allclose(m(tokens, q)[0][:, slots], f[:, slots])
    # padding is invisible: the same weights with no room for padding give the same features
    # (RoPE sees relative positions only), as Lumina-DiMOO's unpadded sequences do
    short = LLaDA(replace(CFG, max_text=2)).eval()
    short.load_state_dict(m.state_dict())
    assert torch.allclose(short(tokens, p[:, -2:])[0][:, short.slots], f[:, slots], atol=1e-5)


def test_dimoo_shortcut_starts_as_reuse_and_reads_prompt_and_new_tokens():
    torch.manual_seed(0)
    base = LLaDA(CFG).eval()
    sc = LLaDAShortcut(LLaDAShortcutConfig(base=CFG.to_dict(), heads=2)).eval()
    sc.load_base_embeddings(base)
    f = torch.randn(2, 9, 32)
    pos, tok = torch.tensor([[0, 4], [1, 8]]), torch.tensor([[3, 1], [0, 7]])
    keys, r = torch.ones(2, 2, dtype=torch.bool), torch.rand(2)
    p = _prompt(2, 3)
    assert torch.equal(sc(f, pos, tok, keys, r, p), f)  # zero-init proj_out
    torch.nn.init.normal_(sc.proj_out.weight, std=0.1)
    out = sc(f, pos, tok, keys, r, p)
    assert not torch.equal(out, f)
    assert not torch.allclose(sc(f, pos, tok.flip(1), keys, r, p), out)
    empty = torch.full_like(p, CFG.pad_id)  # the unconditional branch: no prompt keys
    assert not torch.allclose(sc(f, pos, tok, keys, r, empty), out)


def test_dimoo_schedule():
    for n, length in ((64, 4096), (32, 256), (16, 256), (8, 16)):  # (9, 16) reveals 0 at a step: refused
        counts = mask_schedule("dimoo", n, length)
        assert len(counts) == n and sum(counts) == length and min(counts) >= 1
    left = cosine_remaining(64, 4096)
    counts = mask_schedule("dimoo", 64, 4096)
    assert 4096 - counts[0] == left[0] and left[-1] == 0  # floor(L cos(pi/2 (i+1)/N)) left masked


@pytest.mark.slow  # a minute of sampling on a CPU
def test_pipeline_with_prompts_and_dimoo_sampler():
    base, vq, sc = random_models("tiny-scenes")
    pipe = Pipeline.from_models(base, vq, sc, precision="fp32")
    assert pipe.spec.family == "llada" and pipe.defaults.sampler == "dimoo" and pipe.defaults.guidance == 4.0
    cond = pipe.example_conditions(2)
    a = pipe.generate_tokens(prompts=cond, steps=6, budget=3, seed=1)
    assert a.shape == (2, 256) and (a < 64).all()
    assert torch.equal(a, pipe.generate_tokens(prompts=cond, steps=6, budget=3, strategy="shortcut", seed=1))
    assert not torch.equal(a, pipe.generate_tokens(prompts=cond, steps=6, budget=3, strategy="reuse", seed=1))
    assert pipe.generate(prompts=cond, steps=4).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="give prompts, not classes"):
        pipe.generate_tokens(["cat"])
    with pytest.raises(ValueError, match=r"must be \[n, 16\]"):
        pipe.generate_tokens(prompts=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mlcache strategy needs the torch backend and a maskgit model"):
        pipe.generate_tokens(prompts=cond, steps=6, budget=3, strategy="mlcache")


def test_dimoo_8b_preset_builds_on_the_meta_device():
    cfg = PRESETS["dimoo-8b"].base
    assert (cfg.width, cfg.depth, cfg.heads, cfg.mlp, cfg.grid, cfg.codebook_size) == (4096, 32, 32, 12288, 64, 8192)
    assert cfg.mask_token == 126336 and cfg.eol_id == 126084 and cfg.seq_len == 128 + 4 + 4096 + 64
    base, _, sc = random_models("dimoo-8b", device="meta")
    n_base = sum(p.numel() for p in base.parameters())
    n_sc = sum(p.numel() for p in sc.parameters())
    assert 8.0e9 < n_base < 8.3e9 and 2.1e8 < n_sc < 2.3e8  # LLaDA-8B + image codes; the paper's ~220M


@pytest.fixture(scope="module")
def scenes_checkpoints(tmp_path_factory):
    from migm.models.checkpoint import checkpoint_digest, save_checkpoint
    from migm.models.vqvae import VQVAE, VQConfig

    root = tmp_path_factory.mktemp("llada")
    torch.manual_seed(0)
    base = LLaDA(CFG).eval()
    base.meta = {"sampling": {"steps": 6, "cfg": 4.0, "tau": 1.0, "schedule": "dimoo", "sampler": "dimoo"}}
    sc = LLaDAShortcut(LLaDAShortcutConfig(base=CFG.to_dict(), heads=2)).eval()
    sc.load_base_embeddings(base)
    torch.nn.init.normal_(sc.proj_out.weight, std=0.05)
    vq = VQVAE(VQConfig(image_size=6, n_down=1, width=16, codebook_size=8, code_dim=8)).eval()
    save_checkpoint(base, root / "base", meta=base.meta)
    save_checkpoint(sc, root / "sc", meta={"base_digest": checkpoint_digest(root / "base")})
    save_checkpoint(vq, root / "vq")
    return root


@pytest.mark.slow  # builds fp32, fp16 and int8 bundles
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_llada_bundle_ort_matches_torch(scenes_checkpoints, tmp_path, precision):
    from migm.engines.build import BuildSettings, build_bundle

    root = scenes_checkpoints
    out = build_bundle(tmp_path / "scenes.plan", BuildSettings(precision=precision, backend="ort",
                                                                calibration_size=32), root / "base", root / "vq",
                       root / "sc")
    if precision == "int8":  # the DiMOO shortcut reads the prompt: calibrated with each record's branch prompt
        calib = np.load(out / "calibration.npz")
        assert calib["cond"].shape == (32, CFG.max_text) and (calib["cond"] == CFG.pad_id).all(1).any()
    ort = Pipeline.from_bundle(out, backend="ort")
    ref = Pipeline.from_bundle(out, backend="torch", device="cpu")
    assert ort.spec.family == "llada" and ort.backend.spec_io["base"].inputs[1].name == "prompt"
    prompts = _prompt(6, 3)
    for budget in (None, 3):
        a = ort.generate_tokens(prompts=prompts, steps=6, budget=budget, seed=2)
        b = ref.generate_tokens(prompts=prompts, steps=6, budget=budget, seed=2)
        # fp32: the same tokens; fp16 runs the torch side in bf16 and ORT in fp16; int8 torch in fp32
        assert (a == b).float().mean() >= (0.99 if precision == "fp32" else 0.5)
    assert ort.generate(prompts=prompts[:2], steps=4).shape == (2, 1, 6, 6)
    from click.testing import CliRunner

    from migm.cli.export import main as export_main

    res = CliRunner().invoke(export_main, ["inspect", str(out)])
    assert res.exit_code == 0 and "llada 3x3 tokens, 8 codes, prompts of 5 tokens" in res.output


@pytest.mark.slow  # builds a bundle
def test_bundle_with_external_data(scenes_checkpoints, tmp_path, monkeypatch):
    """Models over 2 GB keep their weights in NAME.onnx.data; forced here with a low threshold."""
    import migm.export.onnx as onnx_export
    from migm.engines.build import BuildSettings, build_bundle
    from migm.engines.bundle import BundleError, verify_bundle

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 2_000)
    root = scenes_checkpoints
    out = build_bundle(tmp_path / "big.plan", BuildSettings(precision="fp16", backend="ort"), root / "base",
                       root / "vq", root / "sc")
    doc = verify_bundle(out)
    assert doc.components["base"].data_file == "base.onnx.data" and (out / "base.onnx.data").exists()
    pipe = Pipeline.from_bundle(out, backend="ort")
    assert pipe.generate_tokens(prompts=_prompt(2, 2), steps=4).shape == (2, 9)
    with open(out / "base.onnx.data", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"base.onnx.data has \d+ bytes, the manifest says \d+ \(corrupt or modified"):
        verify_bundle(out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI machines)")
def test_llada_cuda_graph_loop_equals_eager():
    base, vq, sc = random_models("tiny-scenes")
    pipe = Pipeline.from_models(base, vq, sc, device="cuda", precision="fp32")
    cond = pipe.example_conditions(3)
    a = pipe.generate_tokens(prompts=cond, steps=8, budget=3, seed=4)
    pipe.generate_tokens(prompts=pipe.example_conditions(3, seed=1), steps=8, budget=3, seed=4)  # other prompts between
    b = pipe.generate_tokens(prompts=cond, steps=8, budget=3, seed=4)  # a replay of the same graph
    pipe.use_graphs = False
    c = pipe.generate_tokens(prompts=cond, steps=8, budget=3, seed=4)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_the_families_answer_what_users_condition_on():
    """The runtime, serving and demo ask these instead of testing which family they hold."""
    assert (MASKGIT.condition_kind, MASKGIT.conditions_keyword, MASKGIT.call_keyword, MASKGIT.needs_tokenizer) == \
        ("class", "classes", "class_labels", False)
    assert (LLADA.condition_kind, LLADA.conditions_keyword, LLADA.call_keyword, LLADA.needs_tokenizer) == \
        ("prompt", "prompts", "prompt", True)
    assert MASKGIT.split_conditions("cat, dog\nbird,") == ["cat", "dog", "bird"]
    assert LLADA.split_conditions("a cat, on the left\n\n a dog ") == ["a cat, on the left", "a dog"]
    spec = MASKGIT.spec(PRESETS["tiny-animals"].base)
    assert MASKGIT.input_help(spec, ["cat", "dog"]) == ("dog", "a class: cat, dog")
    assert MASKGIT.input_help(spec)[0] == "2"
