import pytest
import torch

from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.sampling.plan import full_step_plan


@pytest.mark.parametrize("steps,budget", [(32, 6), (32, 8), (32, 12), (16, 4), (16, 6), (7, 7), (5, 1), (64, 9)])
def test_full_step_plan(steps, budget):
    plan = full_step_plan(steps, budget)
    assert len(plan) == budget and plan[0] == 0
    assert plan == sorted(set(plan)) and plan[-1] < steps
    for k in range(1, budget):
        assert plan[k] == max(plan[k - 1] + 1, round(steps * k / budget))


def test_full_step_plan_examples_and_errors():
    assert full_step_plan(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert full_step_plan(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="budget"):
        full_step_plan(8, 9)
    with pytest.raises(ValueError, match="budget"):
        full_step_plan(8, 0)


def _small():
    base = MaskGIT(MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64))
    cfg = ShortcutConfig(width=32, codebook_size=16, vocab=base.cfg.vocab, num_tokens=16, heads=2)
    return base, cfg


@pytest.mark.parametrize("cross", [True, False])
def test_shortcut_starts_as_feature_reuse_and_uses_tokens(cross):
    base, cfg = _small()
    cfg.cross_attention = cross
    sc = Shortcut(cfg)
    sc.load_base_embeddings(base)
    assert torch.equal(sc.tok_emb, base.tok_emb.weight)
    f = torch.randn(2, 16, 32)
    pos = torch.tensor([[1, 5, 0], [2, 0, 0]])
    tok = torch.tensor([[3, 4, 0], [7, 0, 0]])
    keep = torch.tensor([[True, True, False], [True, False, False]])
    r = torch.tensor([0.8, 0.5])
    assert torch.equal(sc(f, pos, tok, keep, r), f)  # zero-initialised output
    torch.nn.init.normal_(sc.proj_out.weight)
    out = sc(f, pos, tok, keep, r)
    assert out.shape == f.shape
    # padded keys do not matter; real tokens do (only with cross-attention)
    tok2 = tok.clone()
    tok2[0, 2] = 9
    assert torch.allclose(sc(f, pos, tok2, keep, r), out, atol=1e-6)
    tok2[0, 0] = 9
    assert torch.allclose(sc(f, pos, tok2, keep, r), out, atol=1e-6) != cross
