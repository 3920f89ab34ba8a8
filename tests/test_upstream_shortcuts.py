"""The released MIGM-Shortcut weights load into our shortcuts, and the loaded models compute what
the upstream code computes: checked against reference forwards written here from the upstream
math (docs/formats.md lists the key maps), on synthetic weights in the released files' exact
layouts at a reduced size."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import dimoo_shapes, maskgit_shapes, rand_state

from migm.errors import CheckpointError
from migm.models.llada import LLaDA, LLaDAConfig
from migm.models.loaders import load_dimoo_shortcut, load_maskgit_shortcut
from migm.models.maskgit import MaskGIT, MaskGITConfig


@pytest.fixture(autouse=True)
def _no_grad():
    # forwards only; scoped to each test (a module-level switch would turn autograd off for the whole run)
    with torch.no_grad():
        yield


def _sinusoid(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


# ---- MaskGIT ----

MG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)
DI, HEADS = 16, 4  # bottleneck width (ratio 2), the shortcut's heads


def _maskgit_reference(w, prev, new_ids, new_map, ratio, wte, wpe, heads=HEADS):
    """Upstream MaskGITShortcut.forward (PreNorm normalises the queries only)."""
    b, t, d = prev.shape
    e = F.embedding(new_ids, wte) + wpe.expand(b, -1, -1)[new_map].reshape(b, new_ids.shape[1], d)
    e = F.linear(e, w["new_token_proj_in.weight"], w["new_token_proj_in.bias"])
    x = F.linear(prev, w["proj_in.weight"], w["proj_in.bias"])
    di = x.shape[-1]

    def mha(p, q_in, kv_in):
        wi, bi = w[f"{p}.fn.mha.in_proj_weight"], w[f"{p}.fn.mha.in_proj_bias"]
        q = F.linear(q_in, wi[:di], bi[:di])
        k = F.linear(kv_in, wi[di:2 * di], bi[di:2 * di])
        v = F.linear(kv_in, wi[2 * di:], bi[2 * di:])
        split = lambda z: z.view(b, z.shape[1], heads, di // heads).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(di // heads), -1) @ split(v)
        return F.linear(att.transpose(1, 2).reshape(b, -1, di), w[f"{p}.fn.mha.out_proj.weight"],
                        w[f"{p}.fn.mha.out_proj.bias"])

    def ln(z, p, eps=1e-5):
        return F.layer_norm(z, (di,), w[f"{p}.weight"], w[f"{p}.bias"], eps)

    def ff(p, z):
        h = F.gelu(F.linear(z, w[f"{p}.fn.net.0.weight"], w[f"{p}.fn.net.0.bias"]))
        return F.linear(h, w[f"{p}.fn.net.3.weight"], w[f"{p}.fn.net.3.bias"])

    for i in range(len({k.split(".")[1] for k in w if k.startswith("blocks.")})):
        c, s = f"blocks.{i}.cross_attn", f"blocks.{i}.self_attn"
        x = x + mha(c, ln(x, f"{c}.norm"), e)
        x = x + ff(f"{c}_ff", ln(x, f"{c}_ff.norm"))
        x = x + mha(s, ln(x, f"{s}.norm"), x)
        x = x + ff(f"{s}_ff", ln(x, f"{s}_ff.norm"))
    x = ln(x, "last_layer.0", 1e-12)
    x = ln(F.gelu(F.linear(x, w["last_layer.1.weight"], w["last_layer.1.bias"])), "last_layer.3", 1e-12)
    temb = F.linear(F.silu(F.linear(_sinusoid(ratio * 1000), w["time_embedder.mlp.0.weight"],
                                    w["time_embedder.mlp.0.bias"])), w["time_embedder.mlp.2.weight"],
                    w["time_embedder.mlp.2.bias"])
    scale, shift = F.linear(temb, w["adaLN_modulation.weight"], w["adaLN_modulation.bias"])[:, None].chunk(2, -1)
    return F.linear(x * (1 + scale) + shift, w["proj_out.weight"], w["proj_out.bias"]) + prev


def test_released_maskgit_shortcut_loads_and_matches_the_upstream_forward(tmp_path):
    torch.manual_seed(0)
    base = MaskGIT(MG).eval()
    w = rand_state(maskgit_shapes(n_block=2), seed=1)
    torch.save(w, tmp_path / "maskgit-shortcut.pth")
    sc = load_maskgit_shortcut(tmp_path / "maskgit-shortcut.pth", base, heads=HEADS)
    assert sum(p.numel() for p in sc.parameters()) == sum(v.numel() for v in w.values())
    b, n = 3, 5
    prev = torch.randn(b, MG.num_tokens + 1, 32)  # the grid rows, then the class row
    new_pos = torch.stack([torch.randperm(MG.num_tokens)[:n].sort().values for _ in range(b)])
    new_tok = torch.randint(0, MG.codebook_size, (b, n))
    ratio = torch.rand(b)
    ours = sc(prev, new_pos, new_tok, torch.ones(b, n, dtype=torch.bool), ratio)
    new_map = torch.zeros(b, MG.num_tokens + 1, dtype=torch.bool).scatter(1, new_pos, True)
    wpe = torch.cat([base.pos_emb[:, 1:], base.pos_emb[:, :1]], 1)  # upstream's order: the grid, then the class
    ref = _maskgit_reference(w, prev, new_tok, new_map, ratio, base.tok_emb.weight, wpe)
    assert ((ours - ref).norm() / (ref - prev).norm()) < 1e-5  # relative to the update it predicts


def test_released_maskgit_shortcut_errors(tmp_path):
    base = MaskGIT(MG).eval()
    w = rand_state(maskgit_shapes(), seed=2)
    w["blocks.0.extra"] = torch.zeros(1)
    torch.save(w, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"unexpected \['blocks.0.extra'\]"):
        load_maskgit_shortcut(tmp_path / "x.pth", base, heads=HEADS)
    torch.save({"state": [1, 2]}, tmp_path / "y.pth")
    with pytest.raises(CheckpointError, match="no flat state dict"):
        load_maskgit_shortcut(tmp_path / "y.pth", base)


# ---- DiMOO ----

LL = LLaDAConfig(text_vocab=40, codebook_size=8, grid=3, width=32, depth=1, heads=4, mlp=48, max_text=7)


def _rms(z, w, eps=1e-5):
    return (z.float() * torch.rsqrt(z.float().pow(2).mean(-1, keepdim=True) + eps)) * w


def _rope(x, pos, theta):
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = pos.float()[:, None] * inv
    ang = torch.cat([ang, ang], -1)
    a, b = x.chunk(2, -1)
    return x * ang.cos() + torch.cat([-b, a], -1) * ang.sin()


def _dimoo_reference(w, prev, seq_ids, new_map, ratio, wte, heads, theta):
    """Upstream MDMShortcut.forward for one unpadded sequence (B = 1): keys = wte of the tokens
    `new_map` marks, at their absolute positions; self-attention over the whole sequence."""
    t = prev.shape[1]
    x = F.linear(prev, w["proj_in.weight"], w["proj_in.bias"])[0]
    nt = F.linear(wte[seq_ids[new_map]], w["new_token_proj_in.weight"], w["new_token_proj_in.bias"])
    di = x.shape[-1]
    hd = di // heads
    qpos, kpos = torch.arange(t), new_map.nonzero()[:, 0]

    def attend(p, q_in, kv_in, kp):
        split = lambda z: z.view(z.shape[0], heads, hd).transpose(0, 1)
        q = _rope(split(q_in @ w[f"{p}.q_proj.weight"].T), qpos, theta)
        k = _rope(split(kv_in @ w[f"{p}.k_proj.weight"].T), kp, theta)
        v = split(kv_in @ w[f"{p}.v_proj.weight"].T)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        return att.transpose(0, 1).reshape(-1, di) @ w[f"{p}.attn_out.weight"].T

    def ffn(p, z):
        h = _rms(z, w[f"{p}.ff_norm.weight"])
        return (F.silu(h @ w[f"{p}.ff_proj.weight"].T) * (h @ w[f"{p}.up_proj.weight"].T)) @ w[f"{p}.ff_out.weight"].T

    for i in range(len({k.split(".")[1] for k in w if k.startswith("blocks.")})):
        c, s = f"blocks.{i}.cross_attn", f"blocks.{i}.self_attn"
        x = x + attend(c, _rms(x, w[f"{c}.attn_norm.weight"]), _rms(nt, w[f"{c}.attn_norm.weight"]), kpos)
        x = x + ffn(c, x)
        h = _rms(x, w[f"{s}.attn_norm.weight"])
        x = x + attend(s, h, h, qpos)
        x = x + ffn(s, x)
    x = _rms(x, w["ln_f.weight"])
    temb = F.linear(F.silu(F.linear(_sinusoid(ratio * 1000), w["time_embedder.mlp.0.weight"],
                                    w["time_embedder.mlp.0.bias"])), w["time_embedder.mlp.2.weight"],
                    w["time_embedder.mlp.2.bias"])
    scale, shift = F.linear(temb, w["adaLN_modulation.weight"], w["adaLN_modulation.bias"]).chunk(2, -1)
    return F.linear(x * (1 + scale) + shift, w["proj_out.weight"], w["proj_out.bias"])[None] + prev


@pytest.mark.parametrize("conditional", [True, False])
def test_released_dimoo_shortcut_loads_and_matches_the_upstream_forward(tmp_path, conditional):
    torch.manual_seed(0)
    base = LLaDA(LL).eval()
    w = rand_state(dimoo_shapes(), seed=3)
    torch.save(w, tmp_path / "dimoo-shortcut.pth")
    sc = load_dimoo_shortcut(tmp_path / "dimoo-shortcut.pth", base)
    assert sum(p.numel() for p in sc.parameters()) == sum(v.numel() for v in w.values())
    # one prompt of 3 tokens, left-padded to 7; the unconditional branch's prompt is all padding
    prompt = torch.full((1, LL.max_text), LL.pad_id)
    if conditional:
        prompt[0, -3:] = torch.tensor([5, 11, 2])
    tokens = torch.randint(0, LL.codebook_size + 1, (1, LL.num_tokens))
    seq = base.sequence(tokens, prompt)
    prev = torch.randn(1, LL.seq_len, 32)
    new_pos = torch.tensor([[1, 4, 7]])
    new_tok = torch.randint(0, LL.codebook_size, (1, 3))
    seq[0, LL.image_slots[new_pos[0]]] = new_tok[0] + LL.text_vocab  # the new tokens are in the sequence
    ratio = torch.rand(1)
    ours = sc(prev, new_pos, new_tok, torch.ones(1, 3, dtype=torch.bool), ratio, prompt)
    pad = int((prompt[0] == LL.pad_id).sum())  # upstream has no padding: its sequence starts after it
    new_map = torch.zeros(LL.seq_len, dtype=torch.bool)
    new_map[LL.image_slots[new_pos[0]]] = True
    if conditional:
        new_map[pad:LL.max_text] = True  # every prompt token is a key on the conditional branch
    ref = _dimoo_reference(w, prev[:, pad:], seq[0, pad:], new_map[pad:], ratio, base.tok_emb.weight, LL.heads,
                           LL.rope_theta)
    got = ours[:, pad:]
    assert ((got - ref).norm() / (ref - prev[:, pad:]).norm()) < 1e-5
