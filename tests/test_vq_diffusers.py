"""The published VQ decoders (Halton-MaskGIT's VQGAN, the aMUSEd VQ): loaded from synthetic files in
the published layouts at reduced sizes (a taming Lightning checkpoint; a diffusers `vqvae/` folder),
checked against a reference forward written here from the layouts' own math (taming's decoder:
GroupNorm eps 1e-6 + swish resnets, single-head attention, nearest x2 + conv), against diffusers'
VQModel.decode on the same weights, through ONNX Runtime, and through our checkpoint format."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import VQModel
from helpers import taming_state, write_lightning
from safetensors.torch import load_file, save_file

from migm.engines.verify import parity
from migm.errors import CheckpointError
from migm.export.onnx import components, export_component
from migm.models.checkpoint import VQ_KINDS, load_checkpoint, save_checkpoint
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.vq_diffusers import AmusedVQ, AmusedVQConfig, HaltonVQGAN, HaltonVQGANConfig
from migm.models.vq_loaders import amused_config, load_amused_vq, load_halton_vqgan, taming_key
from migm.runtime.pipeline import Pipeline

# a 16-code 4x4 token grid, as the tiny base model samples; code_dim != latent_channels so that a
# swapped post_quant_conv cannot pass; 4 norm groups so that grouping is exercised
HALTON = HaltonVQGANConfig(grid=4, codebook_size=16, code_dim=8, latent_channels=12, block_out_channels=(16, 16, 32),
                           layers_per_block=1, norm_groups=4)
AMUSED = dict(block_out_channels=[16, 32, 32], latent_channels=8, num_vq_embeddings=16, vq_embed_dim=None,
              layers_per_block=1, norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 3,
              up_block_types=["UpDecoderBlock2D"] * 3, mid_block_add_attention=False, lookup_from_codebook=True,
              in_channels=3, out_channels=3, act_fn="silu", norm_type="group")
BASE = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)
TOL = 1e-5


# ---- the released sizes (on the meta device: shapes only) ----

# amused/amused-512 vqvae/config.json
AMUSED_512 = {"_class_name": "VQModel", "act_fn": "silu", "block_out_channels": [128, 256, 256, 512, 768],
              "down_block_types": ["DownEncoderBlock2D"] * 5, "force_upcast": True, "in_channels": 3,
              "latent_channels": 64, "layers_per_block": 2, "lookup_from_codebook": True,
              "mid_block_add_attention": False, "norm_num_groups": 32, "norm_type": "group",
              "num_vq_embeddings": 8192, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
              "up_block_types": ["UpDecoderBlock2D"] * 5, "vq_embed_dim": None}
# the diffusers VQModel that taming's f16-1024 VQGAN converts to
HALTON_VQMODEL = dict(block_out_channels=[128, 128, 256, 256, 512], layers_per_block=2, latent_channels=256,
                      vq_embed_dim=256, num_vq_embeddings=1024, norm_num_groups=32, lookup_from_codebook=True,
                      down_block_types=["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"],
                      up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 4)


def _shapes(module, skip=("encoder.", "quant_conv.")) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith(skip)}


def test_released_sizes_are_vqmodels_decoder_halves():
    with torch.device("meta"):
        halton, amused = HaltonVQGAN(HaltonVQGANConfig()), AmusedVQ(amused_config(AMUSED_512, grid=64))
        full_halton, full_amused = VQModel(**HALTON_VQMODEL), VQModel.from_config(AMUSED_512)
    assert amused.cfg == AmusedVQConfig() and amused.cfg.image_size == 1024 and HaltonVQGANConfig().image_size == 512
    assert _shapes(halton.decoder) == _shapes(full_halton) and _shapes(amused.decoder) == _shapes(full_amused)
    # the taming names of the released decoder: 197 tensors, as the checkpoint holds them
    taming = {taming_key(k, 5): tuple(v.shape) for k, v in halton.state_dict().items()}
    assert len(taming) == 197 and sum(math.prod(s) for s in taming.values()) == 42_777_731
    assert taming["quantize.embedding.weight"] == (1024, 256) and taming["decoder.conv_in.weight"] == (512, 256, 3, 3)
    assert taming["decoder.up.3.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert taming["decoder.up.4.attn.2.q.weight"] == (512, 512)  # (a 1x1 conv in the file: the loader reshapes)
    assert "decoder.up.3.attn.0.q.weight" not in taming and taming["decoder.conv_out.weight"] == (3, 128, 3, 3)


# ---- the reference: taming's decoder, written from its math, over either layout's names ----

TAMING = dict(  # level 0 is the full-resolution level, as taming counts
    mid_resnet=lambda n, L: f"decoder.mid.block_{n + 1}", mid_attention="decoder.mid.attn_1",
    resnet=lambda lvl, j, L: f"decoder.up.{lvl}.block.{j}", attention=lambda lvl, j, L: f"decoder.up.{lvl}.attn.{j}",
    upsample=lambda lvl, L: f"decoder.up.{lvl}.upsample.conv", shortcut="nin_shortcut", norm_out="decoder.norm_out",
    attn_parts=("norm", "q", "k", "v", "proj_out"))
DIFFUSERS = dict(  # diffusers lists the levels from the bottom
    mid_resnet=lambda n, L: f"decoder.mid_block.resnets.{n}", mid_attention="decoder.mid_block.attentions.0",
    resnet=lambda lvl, j, L: f"decoder.up_blocks.{L - 1 - lvl}.resnets.{j}",
    attention=lambda lvl, j, L: f"decoder.up_blocks.{L - 1 - lvl}.attentions.{j}",
    upsample=lambda lvl, L: f"decoder.up_blocks.{L - 1 - lvl}.upsamplers.0.conv", shortcut="conv_shortcut",
    norm_out="decoder.conv_norm_out", attn_parts=("group_norm", "to_q", "to_k", "to_v", "to_out.0"))


def reference_decode(st: dict, tokens, names: dict, levels: int, layers: int, groups: int, attention: bool):
    """Code ids [B, h, w] -> the decoder's raw output [B, 3, H, W]."""
    norm = lambda x, p: F.group_norm(x, groups, st[f"{p}.weight"], st[f"{p}.bias"], eps=1e-6)
    conv = lambda x, p: F.conv2d(x, st[f"{p}.weight"], st[f"{p}.bias"], padding=st[f"{p}.weight"].shape[-1] // 2)
    swish = lambda x: x * torch.sigmoid(x)

    def resnet(x, p):
        h = conv(swish(norm(x, f"{p}.norm1")), f"{p}.conv1")
        h = conv(swish(norm(h, f"{p}.norm2")), f"{p}.conv2")
        skip = f"{p}.{names['shortcut']}"
        return (conv(x, skip) if f"{skip}.weight" in st else x) + h

    def attend(x, p):  # one head over all positions, scores scaled by C^-1/2
        b, c, hh, ww = x.shape
        n, q, k, v, out = (f"{p}.{part}" for part in names["attn_parts"])
        proj = lambda t, w: torch.einsum("bcn,dc->bdn", t, st[f"{w}.weight"].reshape(c, c)) + st[f"{w}.bias"][:, None]
        h = norm(x, n).reshape(b, c, hh * ww)
        scores = torch.softmax(torch.einsum("bcn,bcm->bnm", proj(h, q), proj(h, k)) * c**-0.5, dim=2)
        mixed = torch.einsum("bnm,bcm->bcn", scores, proj(h, v))
        return x + proj(mixed, out).reshape(b, c, hh, ww)

    z = st["quantize.embedding.weight"][tokens].permute(0, 3, 1, 2)
    h = conv(conv(z, "post_quant_conv"), "decoder.conv_in")
    h = resnet(h, names["mid_resnet"](0, levels))
    if attention:
        h = attend(h, names["mid_attention"])
    h = resnet(h, names["mid_resnet"](1, levels))
    for lvl in reversed(range(levels)):
        for j in range(layers + 1):
            h = resnet(h, names["resnet"](lvl, j, levels))
            if attention and lvl == levels - 1:  # attention at the lowest level only
                h = attend(h, names["attention"](lvl, j, levels))
        if lvl > 0:
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), names["upsample"](lvl, levels))
    return conv(swish(norm(h, names["norm_out"])), "decoder.conv_out")


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def tokens(batch=3, grid=4, codes=16, seed=1):
    return torch.randint(0, codes, (batch, grid, grid), generator=torch.Generator().manual_seed(seed))


# ---- synthetic files in the published layouts ----

@pytest.fixture(scope="module")
def amused_dir(tmp_path_factory):
    """A diffusers VQModel folder (config.json + safetensors, encoder included) with random weights."""
    root = tmp_path_factory.mktemp("dimoo")
    vq = VQModel(**AMUSED)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(vq.named_parameters()):
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        vq.decoder.conv_out.weight.mul_(0.3)
        vq.decoder.conv_out.bias.fill_(0.5)  # images centred in [0, 1]: the clip hides little
    vq.save_pretrained(root / "vqvae")
    return root


# ---- Halton VQGAN ----

def test_halton_vqgan_matches_reference_and_vqmodel(tmp_path):
    st = taming_state(HALTON)
    model = load_halton_vqgan(write_lightning(tmp_path / "last.ckpt", st), HALTON)
    t = tokens()
    with torch.no_grad():
        ours = model.decoder(t)
        ref = reference_decode(st, t, TAMING, 3, HALTON.layers_per_block, HALTON.norm_groups, attention=True)
    ref_images = ((ref + 1) / 2).clamp(0, 1)
    assert ours.shape == (3, 3, 16, 16) and HALTON.image_size == 16
    assert ((ref_images > 0) & (ref_images < 1)).float().mean() > 0.9  # the comparison is not of clamped values
    assert rel_err(ours, ref_images) < TOL

    # a full diffusers VQModel of the reported config takes our state dict as its decoder half
    vq = VQModel(in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D"] * 2 + ["AttnDownEncoderBlock2D"],
                 up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 2,
                 block_out_channels=list(HALTON.block_out_channels), layers_per_block=1,
                 latent_channels=HALTON.latent_channels, vq_embed_dim=HALTON.code_dim,
                 num_vq_embeddings=HALTON.codebook_size, norm_num_groups=HALTON.norm_groups, lookup_from_codebook=True)
    missing, unexpected = vq.load_state_dict({k.removeprefix("decoder."): v for k, v in
                                              model.state_dict().items()}, strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing)
    with torch.no_grad():
        theirs = vq.decode(t, force_not_quantize=True, shape=(3, 4, 4, HALTON.code_dim)).sample
    assert rel_err(ours, ((theirs + 1) / 2).clamp(0, 1)) < TOL


def test_halton_vqgan_loader_errors(tmp_path):
    st = taming_state(HALTON)
    broken = {k: v for k, v in st.items() if k != "decoder.up.2.attn.1.q.weight"}
    with pytest.raises(CheckpointError, match=r"missing \['decoder.up.2.attn.1.q.weight'\]"):
        load_halton_vqgan(write_lightning(tmp_path / "a.ckpt", broken), HALTON)
    with pytest.raises(CheckpointError, match=r"unexpected \['decoder.up.3.block.0.norm1.weight'\]"):
        load_halton_vqgan(write_lightning(tmp_path / "b.ckpt", {**st, "decoder.up.3.block.0.norm1.weight":
                                                               torch.ones(16)}), HALTON)
    wrong = {**st, "decoder.up.1.block.0.conv1.weight": torch.zeros(16, 32, 1, 1)}
    with pytest.raises(CheckpointError, match=r"up.1.block.0.conv1.weight is \[16, 32, 1, 1\].*\[16, 32, 3, 3\]"):
        load_halton_vqgan(write_lightning(tmp_path / "c.ckpt", wrong), HALTON)
    # the released config (z 256, 1024 codes) does not fit the small file
    with pytest.raises(CheckpointError, match="does not fit"):
        load_halton_vqgan(tmp_path / "a.ckpt")
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_halton_vqgan(tmp_path / "tensor.ckpt", HALTON)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_halton_vqgan(tmp_path / "junk.ckpt", HALTON)
    with pytest.raises(CheckpointError, match="not found"):
        load_halton_vqgan(tmp_path / "nothing.ckpt", HALTON)


class _Planted:
    """Unpickling this would run os.mkdir: a stand-in for code hidden in a checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_halton_vqgan_loader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    write_lightning(tmp_path / "evil.ckpt", {**taming_state(HALTON), "x": _Planted(marker)})
    # the planted global becomes an inert placeholder and is dropped: the decoder loads, nothing ran
    load_halton_vqgan(tmp_path / "evil.ckpt", HALTON)
    assert not marker.exists()


# ---- aMUSEd VQ ----

def test_amused_vq_matches_reference_and_from_pretrained(amused_dir):
    model = load_amused_vq(amused_dir, grid=4)  # the model folder; its vqvae/ is found
    assert model.cfg == AmusedVQConfig(grid=4, codebook_size=16, code_dim=8, latent_channels=8,
                                       block_out_channels=(16, 32, 32), layers_per_block=1, norm_groups=4)
    st = load_file(str(amused_dir / "vqvae" / "diffusion_pytorch_model.safetensors"))
    t = tokens()
    with torch.no_grad():
        ours = model.decoder(t)
        ref = reference_decode(st, t, DIFFUSERS, 3, 1, 4, attention=False).clamp(0, 1)
        # what Lumina-DiMOO runs: from_pretrained(..., subfolder="vqvae"), decode(force_not_quantize), clip
        vq = VQModel.from_pretrained(str(amused_dir), subfolder="vqvae", local_files_only=True).eval()
        theirs = vq.decode(t, force_not_quantize=True, shape=(3, 4, 4, 8)).sample.clip(0, 1)
    assert ours.shape == (3, 3, 16, 16)
    assert ((ref > 0) & (ref < 1)).float().mean() > 0.9
    assert rel_err(ours, ref) < TOL and rel_err(ours, theirs) < TOL
    assert load_amused_vq(amused_dir / "vqvae", grid=4).cfg == model.cfg  # the vqvae/ folder itself


def _copy_folder(src, dst, config=None, state=None):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    st = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    save_file(state(st) if state else st, str(dst / "diffusion_pytorch_model.safetensors"))
    return dst


@pytest.mark.parametrize("config, state, message", [
    (None, lambda st: {k: v for k, v in st.items() if k != "decoder.up_blocks.2.resnets.0.conv_shortcut.weight"},
     r"missing \['decoder.up_blocks.2.resnets.0.conv_shortcut.weight'\]"),
    (None, lambda st: {**st, "decoder.mid_block.attentions.0.to_q.weight": torch.zeros(32, 32)},
     r"unexpected \['decoder.mid_block.attentions.0.to_q.weight'\]"),
    (None, lambda st: {**st, "post_quant_conv.weight": torch.zeros(8, 4, 1, 1)},
     r"post_quant_conv.weight is \[8, 4, 1, 1\], config.json gives \[8, 8, 1, 1\]"),
    (lambda c: {**c, "mid_block_add_attention": True}, None, "mid_block_add_attention is True"),
    # a setting the file leaves out takes VQModel's default, as diffusers reads it (False here)
    (lambda c: {k: v for k, v in c.items() if k != "lookup_from_codebook"}, None, "lookup_from_codebook is False"),
    (lambda c: {**c, "up_block_types": ["AttnUpDecoderBlock2D"] + c["up_block_types"][1:]}, None, "up_block_types"),
    (lambda c: {**c, "_class_name": "AutoencoderKL"}, None, "not a VQModel"),
    (lambda c: {**c, "norm_num_groups": 3}, None, "do not split into 3 norm groups"),
    (lambda c: [c], None, "not a JSON object"),
])
def test_amused_vq_loader_errors(amused_dir, tmp_path, config, state, message):
    folder = _copy_folder(amused_dir / "vqvae", tmp_path / "vqvae", config, state)
    with pytest.raises(CheckpointError, match=message):
        load_amused_vq(folder, grid=4)


def test_amused_vq_reads_no_pickles(amused_dir, tmp_path):
    folder = _copy_folder(amused_dir / "vqvae", tmp_path / "vqvae")
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="a .bin is a pickle"):
        load_amused_vq(folder, grid=4)
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"x" * 16)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08" + b"\x00" * 15)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_amused_vq(folder, grid=4)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_amused_vq(tmp_path / "elsewhere")


# ---- both: our checkpoint format, ONNX, the pipeline ----

@pytest.fixture(scope="module")
def decoders(amused_dir, tmp_path_factory):
    path = write_lightning(tmp_path_factory.mktemp("halton") / "last.ckpt", taming_state(HALTON))
    return {"halton-vqgan": load_halton_vqgan(path, HALTON), "amused-vq": load_amused_vq(amused_dir, grid=4)}


@pytest.mark.parametrize("kind", ["halton-vqgan", "amused-vq"])
def test_checkpoint_round_trip(decoders, kind, tmp_path):
    model = decoders[kind]
    save_checkpoint(model, tmp_path / "vq", meta={"source": "synthetic"})
    back = load_checkpoint(tmp_path / "vq", kinds=VQ_KINDS)
    assert type(back) is type(model) and back.cfg == model.cfg and back.meta == {"source": "synthetic"}
    t = tokens()
    with torch.no_grad():
        assert torch.equal(back.decoder(t), model.decoder(t))
    # a config that does not fit the weights is refused from the header, before anything is built
    doc = json.loads((tmp_path / "vq.json").read_text())
    doc["config"]["block_out_channels"] = [16, 16, 64]
    (tmp_path / "vq.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(tmp_path / "vq", kinds=VQ_KINDS)
    doc["config"]["block_out_channels"] = [16, True, 32]
    (tmp_path / "vq.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="block_out_channels must be a positive int"):
        load_checkpoint(tmp_path / "vq", kinds=VQ_KINDS)
    with pytest.raises(CheckpointError, match=f"is a {kind} checkpoint; expected vqvae"):
        load_checkpoint(tmp_path / "vq", kinds=("vqvae",))


@pytest.mark.slow  # ONNX export of the decoders
@pytest.mark.parametrize("kind", ["halton-vqgan", "amused-vq"])
def test_decoder_exports_to_onnx(decoders, kind, tmp_path):
    base = MaskGIT(BASE).eval()
    comp = next(c for c in components(base, decoders[kind].decoder, batch=2) if c.name == "decoder")
    path = export_component(comp, tmp_path / "decoder.onnx")
    rows = parity(comp, path, batches=(2, 1, 5))  # dynamic batch: the graph was traced at 2
    assert [r["batch"] for r in rows] == [2, 1, 5]
    assert max(r["rel_l2"] for r in rows) < TOL, rows


@pytest.mark.parametrize("kind", ["halton-vqgan", "amused-vq"])
def test_pipeline_decodes_with_it(decoders, kind):
    torch.manual_seed(0)
    pipe = Pipeline.from_models(MaskGIT(BASE).eval(), decoders[kind], device="cpu", precision="fp32")
    images = pipe.generate([0, 2], steps=2, seed=0)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
