import pytest
import torch

from migm.families.maskgit import CachedMaskGIT
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.sampling.config import SamplerConfig
from migm.sampling.loop import Fns, HybridStats, generate_tokens

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)
UNCOND = torch.tensor([CFG.no_class_id])


def _setup():
    base = MaskGIT(CFG).eval()
    sc = Shortcut(ShortcutConfig(width=32, codebook_size=16, vocab=CFG.vocab, num_tokens=16, heads=2)).eval()
    sc.load_base_embeddings(base)
    return base, sc


def _models(base, sc):
    shortcut = None if sc is None else (lambda f, pos, tok, keys, r, cond: (sc(f, pos, tok, keys, r), None))
    return Fns(base, base.head, shortcut, CachedMaskGIT(base, autocast=False))


def _hybrid(base, sc, strategy, steps, budget, seed=0, cfg=1.0, stats=None, **kw):
    return generate_tokens(_models(base, sc), torch.tensor([0, 1, 2]), UNCOND, SamplerConfig(steps=steps, guidance=cfg),
                           num_tokens=16, mask_id=CFG.mask_id, budget=budget, strategy=strategy,
                           generator=torch.Generator().manual_seed(seed), stats=stats, **kw)


def _vanilla(base, steps, seed=0, cfg=1.0):
    return generate_tokens(Fns(base), torch.tensor([0, 1, 2]), UNCOND, SamplerConfig(steps=steps, guidance=cfg),
                           num_tokens=16, mask_id=CFG.mask_id, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", ["vanilla", "reuse", "extrapolate", "mlcache", "shortcut"])
@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_budget_equal_steps_is_vanilla(strategy, cfg):
    base, sc = _setup()
    assert torch.equal(_hybrid(base, sc, strategy, 6, 6, cfg=cfg), _vanilla(base, 6, cfg=cfg))


def test_fewer_is_vanilla_with_budget_steps():
    base, sc = _setup()
    stats = HybridStats()
    assert torch.equal(_hybrid(base, sc, "fewer", 8, 3, stats=stats), _vanilla(base, 3))
    assert stats.base_calls == 3 and stats.predicted_steps == 0


@pytest.mark.parametrize("strategy", ["reuse", "extrapolate", "mlcache", "shortcut"])
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


def test_subset_forward_of_every_position_is_the_full_forward():
    base, _ = _setup()
    tok = torch.randint(0, CFG.mask_id + 1, (2, 16))
    lab = torch.tensor([0, CFG.no_class_id])
    with torch.no_grad():
        f, logits, cache = base.forward_cached(tok, lab)
        torch.testing.assert_close(f, base(tok, lab)[0])
        tok2 = tok.clone()
        tok2[:, [2, 9]] = 3
        sub = base.forward_subset(tok2, lab, torch.arange(16).expand(2, 16), cache)
        torch.testing.assert_close(sub, base(tok2, lab)[0][:, :16], atol=1e-5, rtol=1e-5)  # the grid rows


def test_mlcache_recomputes_new_and_least_confident_tokens():
    base, sc = _setup()
    stats, seen = HybridStats(), []
    _hybrid(base, sc, "mlcache", 8, 3, stats=stats, recompute=0.25, probe=lambda i, f, seq, labs: seen.append(i))
    assert stats.base_calls == 3 and seen == [1, 2, 4, 6, 7]
    assert stats.recomputed_tokens > 5 * 4 and 3 < stats.cost(16) < 8
    none = HybridStats()
    a = _hybrid(base, sc, "mlcache", 8, 3, stats=none, recompute=0.0)
    assert none.recomputed_tokens > 0  # the tokens just sampled are always recomputed
    assert (a != CFG.mask_id).all()


def test_mlcache_needs_the_cached_base():
    base, _ = _setup()
    with pytest.raises(ValueError, match="mlcache strategy needs"):
        generate_tokens(Fns(base, base.head), torch.tensor([0]), UNCOND, SamplerConfig(steps=8), num_tokens=16,
                        mask_id=CFG.mask_id, budget=3, strategy="mlcache")


@pytest.mark.parametrize("strategy", ["reuse", "extrapolate", "mlcache", "shortcut"])
def test_strategies_draw_the_same_noise_as_vanilla(strategy):
    """Paired fidelity rests on this: at the same N every strategy draws the same random numbers at
    the same steps as vanilla sampling (the generator ends in the same state, having made the same
    draws in the same order), so a hybrid sample and its full-N reference share all their noise."""
    base, sc = _setup()
    states = []
    for strat, budget in (("vanilla", None), (strategy, 3)):
        g = torch.Generator().manual_seed(4)
        generate_tokens(_models(base, sc), torch.tensor([0, 1, 2]), UNCOND, SamplerConfig(steps=8, guidance=1.0),
                        num_tokens=16, mask_id=CFG.mask_id, budget=budget, strategy=strat, generator=g)
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])
