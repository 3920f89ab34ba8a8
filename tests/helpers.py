"""Helpers several test modules share (test modules never import each other): synthetic state dicts in
the published checkpoint layouts, at reduced sizes."""

import math

import torch

from migm.models.llada import LLaDAConfig
from migm.models.maskgit import MaskGITConfig
from migm.models.vq_diffusers import HaltonVQGANConfig


def rand_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.2 if len(s) > 1 else 0.1) + (1.0 if k.endswith("norm.weight")
            or ".norm.weight" in k or k.endswith("ln_f.weight") else 0.0) for k, s in shapes.items()}


def _shortcut_shapes(d, di):
    """What both released shortcuts have outside their blocks: projections in and out, the new-token
    projection, the mask-ratio embedder and the adaLN modulation."""
    mid = round(math.sqrt(di * 256))
    return {"proj_in.weight": (di, d), "proj_in.bias": (di,), "proj_out.weight": (d, di), "proj_out.bias": (d,),
            "new_token_proj_in.weight": (di, d), "new_token_proj_in.bias": (di,),
            "time_embedder.mlp.0.weight": (mid, 256), "time_embedder.mlp.0.bias": (mid,),
            "time_embedder.mlp.2.weight": (di, mid), "time_embedder.mlp.2.bias": (di,),
            "adaLN_modulation.weight": (2 * di, di), "adaLN_modulation.bias": (2 * di,)}


def maskgit_shapes(d=32, di=16, n_block=1):
    s = {**_shortcut_shapes(d, di),
         "last_layer.0.weight": (di,), "last_layer.0.bias": (di,), "last_layer.1.weight": (di, di),
         "last_layer.1.bias": (di,), "last_layer.3.weight": (di,), "last_layer.3.bias": (di,)}
    for i in range(n_block):
        for a in ("cross_attn", "self_attn"):
            p = f"blocks.{i}.{a}"
            s.update({f"{p}.norm.weight": (di,), f"{p}.norm.bias": (di,), f"{p}.fn.mha.in_proj_weight": (3 * di, di),
                      f"{p}.fn.mha.in_proj_bias": (3 * di,), f"{p}.fn.mha.out_proj.weight": (di, di),
                      f"{p}.fn.mha.out_proj.bias": (di,), f"{p}_ff.norm.weight": (di,), f"{p}_ff.norm.bias": (di,),
                      f"{p}_ff.fn.net.0.weight": (4 * di, di), f"{p}_ff.fn.net.0.bias": (4 * di,),
                      f"{p}_ff.fn.net.3.weight": (di, 4 * di), f"{p}_ff.fn.net.3.bias": (di,)})
    return s


def dimoo_shapes(d=32, di=16, mlp=48, n_block=1):
    s = {**_shortcut_shapes(d, di), "ln_f.weight": (di,)}
    for i in range(n_block):
        for a in ("cross_attn", "self_attn"):
            p = f"blocks.{i}.{a}"
            s.update({f"{p}.attn_norm.weight": (di,), f"{p}.ff_norm.weight": (di,),
                      **{f"{p}.{x}.weight": (di, di) for x in ("q_proj", "k_proj", "v_proj", "attn_out")},
                      f"{p}.ff_proj.weight": (mlp, di), f"{p}.up_proj.weight": (mlp, di),
                      f"{p}.ff_out.weight": (di, mlp)})
    return s


def halton_state(cfg: MaskGITConfig) -> dict:
    """A random Halton-MaskGIT v1.0 `MaskTransformer` state dict (names and shapes as published)."""
    g = torch.Generator().manual_seed(0)
    d, v, n = cfg.width, cfg.vocab, cfg.num_tokens
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    st = {"tok_emb.weight": r(v, d), "pos_emb": r(1, n + 1, d), "bias": r(n + 1, v)}
    for i in (0, 4):
        st[f"first_layer.{i}.weight"], st[f"first_layer.{i}.bias"] = 1 + r(d), r(d)
    for i in (2, 6):
        st[f"first_layer.{i}.weight"], st[f"first_layer.{i}.bias"] = r(d, d), r(d)
    for i in (0, 4):
        st[f"last_layer.{i}.weight"], st[f"last_layer.{i}.bias"] = 1 + r(d), r(d)
    st["last_layer.2.weight"], st["last_layer.2.bias"] = r(d, d), r(d)
    for i in range(cfg.depth):
        p = f"transformer.layers.{i}"
        st.update({f"{p}.0.norm.weight": 1 + r(d), f"{p}.0.norm.bias": r(d),
                   f"{p}.0.fn.mha.in_proj_weight": r(3 * d, d), f"{p}.0.fn.mha.in_proj_bias": r(3 * d),
                   f"{p}.0.fn.mha.out_proj.weight": r(d, d), f"{p}.0.fn.mha.out_proj.bias": r(d),
                   f"{p}.1.norm.weight": 1 + r(d), f"{p}.1.norm.bias": r(d),
                   f"{p}.1.fn.net.0.weight": r(cfg.mlp, d), f"{p}.1.fn.net.0.bias": r(cfg.mlp),
                   f"{p}.1.fn.net.3.weight": r(d, cfg.mlp), f"{p}.1.fn.net.3.bias": r(d)})
    return st


def dimoo_state(cfg: LLaDAConfig, pad_rows: int = 6) -> dict:
    """Random weights under Lumina-DiMOO's (LLaDA llama-block) key names; vocab rows padded."""
    g = torch.Generator().manual_seed(1)
    d = cfg.width
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    st = {"model.transformer.wte.weight": r(cfg.vocab + pad_rows, d), "model.transformer.ln_f.weight": 1 + r(d),
          "model.transformer.ff_out.weight": r(cfg.vocab + pad_rows, d)}
    for i in range(cfg.depth):
        p = f"model.transformer.blocks.{i}"
        st.update({f"{p}.attn_norm.weight": 1 + r(d), f"{p}.ff_norm.weight": 1 + r(d),
                   f"{p}.q_proj.weight": r(d, d), f"{p}.k_proj.weight": r(d, d), f"{p}.v_proj.weight": r(d, d),
                   f"{p}.attn_out.weight": r(d, d), f"{p}.ff_proj.weight": r(cfg.mlp, d),
                   f"{p}.up_proj.weight": r(cfg.mlp, d), f"{p}.ff_out.weight": r(d, cfg.mlp)})
    return st


def taming_state(cfg: HaltonVQGANConfig) -> dict:
    """A random taming VQGAN state dict (decoder half, plus the encoder and loss keys a last.ckpt has)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s, scale=0.2: torch.randn(*s, generator=g) * scale
    ch, levels = cfg.block_out_channels, len(cfg.block_out_channels)
    st = {}

    def norm(p, c):
        st[f"{p}.weight"], st[f"{p}.bias"] = 1 + r(c), r(c)

    def conv(p, cin, cout, k, scale=1.0):
        st[f"{p}.weight"], st[f"{p}.bias"] = r(cout, cin, k, k, scale=scale * (cin * k * k) ** -0.5), r(cout)

    def resnet(p, cin, cout):
        norm(f"{p}.norm1", cin), conv(f"{p}.conv1", cin, cout, 3), norm(f"{p}.norm2", cout), conv(f"{p}.conv2", cout,
                                                                                                 cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cin, cout, 1)

    def attention(p, c):
        norm(f"{p}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{part}", c, c, 1)

    st["quantize.embedding.weight"] = r(cfg.codebook_size, cfg.code_dim, scale=1.0)
    conv("post_quant_conv", cfg.code_dim, cfg.latent_channels, 1)
    conv("decoder.conv_in", cfg.latent_channels, ch[-1], 3)
    resnet("decoder.mid.block_1", ch[-1], ch[-1]), attention("decoder.mid.attn_1", ch[-1])
    resnet("decoder.mid.block_2", ch[-1], ch[-1])
    cin = ch[-1]
    for lvl in reversed(range(levels)):
        for j in range(cfg.layers_per_block + 1):
            resnet(f"decoder.up.{lvl}.block.{j}", cin, ch[lvl])
            cin = ch[lvl]
            if lvl == levels - 1:
                attention(f"decoder.up.{lvl}.attn.{j}", cin)
        if lvl > 0:
            conv(f"decoder.up.{lvl}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", ch[0])
    conv("decoder.conv_out", ch[0], 3, 3, scale=0.3)  # outputs mostly inside [-1, 1]: the clamp hides little
    conv("encoder.conv_in", 3, ch[0], 3), conv("quant_conv", cfg.latent_channels, cfg.code_dim, 1)
    conv("loss.discriminator.main.0", 3, 8, 4)
    st["loss.logvar"] = torch.zeros(())
    return st


def write_lightning(path, state):
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                "optimizer_states": [], "lr_schedulers": []}, path)
    return path
