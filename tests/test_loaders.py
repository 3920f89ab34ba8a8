"""Checkpoint loaders, on synthetic state dicts in exactly the public layouts (reduced sizes),
checked against reference forwards written from those layouts' own math."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import dimoo_state, halton_state
from safetensors.torch import save_file

from migm.models.checkpoint import CheckpointError
from migm.models.llada import LLaDAConfig, apply_rope, rope_tables
from migm.models.loaders import load_dimoo, load_halton_maskgit
from migm.models.maskgit import MaskGITConfig

MG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=2, heads=4, mlp=64)


def halton_logits(st: dict, cfg: MaskGITConfig, tokens, labels):
    """Halton-MaskGIT's forward: grid tokens then the class token, nn.MultiheadAttention blocks."""
    k, d = cfg.codebook_size, cfg.width
    x = torch.cat([tokens, (labels + k + 1)[:, None]], 1)
    x = F.embedding(x, st["tok_emb.weight"]) + st["pos_emb"]
    ln = lambda x, p, eps: F.layer_norm(x, (d,), st[f"{p}.weight"], st[f"{p}.bias"], eps)
    lin = lambda x, p: F.linear(x, st[f"{p}.weight"], st[f"{p}.bias"])
    x = lin(ln(F.gelu(lin(ln(x, "first_layer.0", 1e-12), "first_layer.2")), "first_layer.4", 1e-12), "first_layer.6")
    for i in range(cfg.depth):
        p = f"transformer.layers.{i}"
        mha = torch.nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        mha.load_state_dict({"in_proj_weight": st[f"{p}.0.fn.mha.in_proj_weight"],
                             "in_proj_bias": st[f"{p}.0.fn.mha.in_proj_bias"],
                             "out_proj.weight": st[f"{p}.0.fn.mha.out_proj.weight"],
                             "out_proj.bias": st[f"{p}.0.fn.mha.out_proj.bias"]})
        h = ln(x, f"{p}.0.norm", 1e-5)
        x = x + mha(h, h, h, need_weights=False)[0]
        x = x + lin(F.gelu(lin(ln(x, f"{p}.1.norm", 1e-5), f"{p}.1.fn.net.0")), f"{p}.1.fn.net.3")
    x = ln(F.gelu(lin(ln(x, "last_layer.0", 1e-12), "last_layer.2")), "last_layer.4", 1e-12)
    logits = x @ st["tok_emb.weight"].T + st["bias"]
    return logits[:, : cfg.num_tokens, :k]


def test_halton_maskgit_loader_matches_reference_forward(tmp_path):
    st = halton_state(MG)
    torch.save({"iter": 1, "global_epoch": 0, "model_state_dict": st, "optimizer_state_dict": {}}, tmp_path / "m.pth")
    model = load_halton_maskgit(tmp_path / "m.pth", MG)
    tokens = torch.randint(0, MG.codebook_size + 1, (3, MG.num_tokens))
    labels = torch.tensor([0, 2, MG.no_class_id])
    with torch.no_grad():
        _, ours = model(tokens, labels)
        ref = halton_logits(st, MG, tokens, labels)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_halton_loader_errors(tmp_path):
    st = halton_state(MG)
    del st["transformer.layers.1.0.norm.weight"]
    st["transformer.layers.9.extra"] = torch.zeros(1)
    torch.save({"model_state_dict": st}, tmp_path / "bad.pth")
    expected = r"missing \['blocks.1.ln1.weight'\], unexpected \['transformer.layers.9.extra'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_halton_maskgit(tmp_path / "bad.pth", MG)
    with pytest.raises(CheckpointError, match="not found"):
        load_halton_maskgit(tmp_path / "none.pth", MG)
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_halton_maskgit(tmp_path / "trunc.pth", MG)
    wrong = halton_state(MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=48, depth=2, heads=4, mlp=64))
    torch.save({"model_state_dict": wrong}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="has shape"):
        load_halton_maskgit(tmp_path / "wide.pth", MG)


LC = LLaDAConfig(text_vocab=40, codebook_size=8, grid=3, width=32, depth=2, heads=4, mlp=48, max_text=5)


def dimoo_reference(st, cfg: LLaDAConfig, seq, keys):
    """LLaDA's llama block: h = x + attn_out(SDPA(rope q, rope k, v)); out = h + ff_out(silu(ff_proj) * up_proj)."""
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w
    x = F.embedding(seq, st["model.transformer.wte.weight"])
    b, t, d = x.shape
    cos, sin = rope_tables(torch.arange(t), d // cfg.heads, cfg.rope_theta)
    for i in range(cfg.depth):
        w = lambda n: st[f"model.transformer.blocks.{i}.{n}.weight"]
        h = rms(x, w("attn_norm"))
        q, k, v = (F.linear(h, w(n)).view(b, t, cfg.heads, -1).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        y = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, attn_mask=keys)
        x = x + F.linear(y.transpose(1, 2).reshape(b, t, d), w("attn_out"))
        h = rms(x, w("ff_norm"))
        x = x + F.linear(F.silu(F.linear(h, w("ff_proj"))) * F.linear(h, w("up_proj")), w("ff_out"))
    return rms(x, st["model.transformer.ln_f.weight"]) @ st["model.transformer.ff_out.weight"].T


def _write_shards(st: dict, directory, n=2):
    keys = sorted(st)
    weight_map = {}
    for j in range(n):
        part = {k: st[k].contiguous() for k in keys[j::n]}
        name = f"model-{j + 1:05d}-of-{n:05d}.safetensors"
        save_file(part, str(directory / name))
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_dimoo_loader_matches_reference_forward(tmp_path):
    st = dimoo_state(LC)
    _write_shards(st, tmp_path)
    model = load_dimoo(tmp_path, LC, dtype=torch.float32)
    tokens = torch.randint(0, LC.codebook_size + 1, (2, LC.num_tokens))
    prompt = torch.randint(0, 30, (2, LC.max_text))
    prompt[:, :2] = LC.pad_id  # left-padded
    with torch.no_grad():
        _, ours = model(tokens, prompt)
        seq = model.sequence(tokens, prompt)
        ref = dimoo_reference(st, LC, seq, (seq != LC.pad_id)[:, None, None, :])
    # the image-code rows of the head at the image slots
    ref = ref[:, LC.image_slots][..., LC.text_vocab:LC.vocab]
    assert torch.allclose(ours, ref, atol=1e-4)


def test_dimoo_loader_errors(tmp_path):
    st = dimoo_state(LC)
    st["model.transformer.blocks.0.q_norm.weight"] = torch.ones(32)
    del st["model.transformer.blocks.1.up_proj.weight"]
    _write_shards(st, tmp_path)
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.mlp.up.weight'\], unexpected "
                                              r"\['model.transformer.blocks.0.q_norm.weight'\]"):
        load_dimoo(tmp_path, LC)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors named in"):
        load_dimoo(tmp_path, LC)
    with pytest.raises(CheckpointError, match="neither model.safetensors.index.json"):
        load_dimoo(tmp_path / "nothing", LC)
