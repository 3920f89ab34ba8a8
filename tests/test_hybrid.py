import pytest
import torch

from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.sampling.loop import HybridStats, generate_tokens

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)


def _setup():
    base = MaskGIT(CFG).eval()
    sc = Shortcut(ShortcutConfig(width=32, codebook_size=16, vocab=CFG.vocab, num_tokens=16, heads=2)).eval()
    sc.load_base_embeddings(base)
    return base, sc


def _hybrid(base, sc, strategy, steps, budget, seed=0, cfg=1.0, stats=None):
    return generate_tokens(base, torch.tensor([0, 1, 2]), head=base.head, num_tokens=16, mask_id=CFG.mask_id,
                           no_class_id=CFG.no_class_id, steps=steps, budget=budget, strategy=strategy, shortcut=sc,
                           cfg=cfg, generator=torch.Generator().manual_seed(seed), stats=stats)


def _vanilla(base, steps, seed=0, cfg=1.0):
    return generate_tokens(base, torch.tensor([0, 1, 2]), num_tokens=16, mask_id=CFG.mask_id,
                           no_class_id=CFG.no_class_id, steps=steps, cfg=cfg,
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", ["vanilla", "reuse", "extrapolate", "shortcut"])
@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_budget_equal_steps_is_vanilla(strategy, cfg):
    base, sc = _setup()
    assert torch.equal(_hybrid(base, sc, strategy, 6, 6, cfg=cfg), _vanilla(base, 6, cfg=cfg))


def test_fewer_is_vanilla_with_budget_steps():
    base, sc = _setup()
    stats = HybridStats()
    assert torch.equal(_hybrid(base, sc, "fewer", 8, 3, stats=stats), _vanilla(base, 3))
    assert stats.base_calls == 3 and stats.predicted_steps == 0


@pytest.mark.parametrize("strategy", ["reuse", "extrapolate", "shortcut"])
def test_budget_counts_base_calls(strategy):
    base, sc = _setup()
    stats = HybridStats()
    out = _hybrid(base, sc, strategy, 8, 3, stats=stats)
    assert stats.base_calls == 3 and stats.predicted_steps == 5 and stats.full_steps == [0, 3, 5]
    assert (out != CFG.mask_id).all()


def test_zero_initialised_shortcut_equals_reuse():
    base, sc = _setup()
    assert torch.equal(_hybrid(base, sc, "shortcut", 8, 3), _hybrid(base, sc, "reuse", 8, 3))
    torch.nn.init.normal_(sc.proj_out.weight, std=0.5)
    assert not torch.equal(_hybrid(base, sc, "shortcut", 8, 3), _hybrid(base, sc, "reuse", 8, 3))


def test_unknown_strategy_and_missing_shortcut():
    base, _ = _setup()
    with pytest.raises(ValueError, match="unknown strategy"):
        _hybrid(base, None, "magic", 8, 3)
    with pytest.raises(ValueError, match="needs a shortcut"):
        _hybrid(base, None, "shortcut", 8, 3)
