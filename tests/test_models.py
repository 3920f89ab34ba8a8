import pytest
import torch

from migm.errors import ConfigError
from migm.families.presets import PRESETS, preset
from migm.models.maskgit import MaskGIT
from migm.models.vqvae import VQVAE, VQConfig


@pytest.mark.parametrize("n_down,grid", [(1, 16), (2, 8)])
def test_vq_shapes(n_down, grid):
    vq = VQVAE(VQConfig(n_down=n_down, codebook_size=32)).eval()
    x = torch.rand(3, 1, 32, 32)
    tokens = vq.encode(x)
    assert tokens.shape == (3, grid, grid) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < 32
    img = vq.decode(tokens)
    assert img.shape == (3, 1, 32, 32)
    assert 0 <= img.min() and img.max() <= 1
    recon, loss, t, z = vq(x)
    assert recon.shape == x.shape and loss.ndim == 0 and torch.equal(t, tokens)


def test_tiny_maskgit_forward_and_head():
    cfg = preset("tiny-animals").base
    model = MaskGIT(cfg).eval()
    tokens = torch.randint(0, cfg.codebook_size + 1, (2, cfg.num_tokens))
    feats, logits = model(tokens, torch.tensor([0, cfg.no_class_id]))
    assert feats.shape == (2, cfg.num_tokens + 1, cfg.width)  # the grid rows, then the class row
    assert logits.shape == (2, cfg.num_tokens, cfg.codebook_size)
    assert torch.allclose(model.head(feats), logits)


@pytest.mark.slow  # a full-size model
def test_maskgit_imagenet512_builds_and_runs_one_forward():
    cfg = PRESETS["maskgit-imagenet512"].base
    assert (cfg.depth, cfg.width, cfg.heads, cfg.mlp, cfg.codebook_size, cfg.grid) == (24, 768, 16, 3072, 1024, 32)
    model = MaskGIT(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 170e6 < n_params < 185e6  # the paper's ~176M base
    tokens = torch.full((1, cfg.num_tokens), cfg.mask_id)
    with torch.no_grad():
        feats, logits = model(tokens, torch.tensor([3]))
    assert feats.shape == (1, 1025, 768) and logits.shape == (1, 1024, 1024)
    assert torch.isfinite(logits).all()


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
