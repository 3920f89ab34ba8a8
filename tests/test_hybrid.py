import re
from pathlib import Path

import pytest
import torch

from migm.families.llada import LLADA
from migm.families.maskgit import MASKGIT, CachedMaskGIT
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.sampling.config import SamplerConfig
from migm.sampling.loop import Fns, HybridStats, generate_tokens
from migm.sampling.predictors import PREDICTORS
from migm.sampling.strategies import ALL, EXTRAPOLATE, MLCACHE, REUSE, STRATEGIES, check_strategy, get_strategy

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


def test_every_strategy_has_its_tensor_code():
    assert set(PREDICTORS) == set(ALL)
    assert STRATEGIES == tuple(s.name for s in ALL)


def test_the_loop_and_the_pipeline_ask_the_strategy_objects():
    """No branch on a strategy's name where the loop runs or is set up: sampling/strategies.py answers."""
    root = Path(__file__).resolve().parent.parent / "migm"
    pattern = re.compile(r"""strategy["'\]]*\s*(==|!=|not in|in)\s*[("']""")
    hits = [f"{p}:{i}" for p in ("sampling/loop.py", "sampling/predictors.py", "runtime/pipeline.py")
            for i, line in enumerate((root / p).read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_extrapolate_reuses_until_its_second_full_step():
    """Before the second full step there is no slope: extrapolate's named fallback, reuse, runs."""
    base, sc = _setup()
    assert EXTRAPOLATE.fallback is REUSE
    seen = {}
    for name in ("reuse", "extrapolate"):
        feats = seen[name] = {}
        _hybrid(base, sc, name, 8, 4, probe=lambda i, f, seq, c, feats=feats: feats.__setitem__(i, f.clone()))
    # full steps 0, 2, 4, 6: step 1 has one full step behind it, step 3 two
    assert torch.equal(seen["extrapolate"][1], seen["reuse"][1])
    assert not torch.equal(seen["extrapolate"][3], seen["reuse"][3])


def test_one_answer_to_can_this_strategy_run_here():
    with pytest.raises(ValueError, match="the reuse strategy needs the base model's head .*choose one these models "
                                         r"run \(vanilla, fewer\)"):
        check_strategy("reuse", Fns(None).provides)
    assert check_strategy("mlcache", {"head", "cached"}) is MLCACHE
    assert get_strategy("fewer").steps_and_budget(8, 3) == (3, 3)
    assert get_strategy("vanilla").steps_and_budget(8, 3) == (8, 8)  # B is ignored
    assert get_strategy("reuse").steps_and_budget(8, None) == (8, 8)
    with pytest.raises(ValueError, match="budget B=9 must be between 1 and the number of steps N=8"):
        get_strategy("shortcut").steps_and_budget(8, 9)
    # what a family's models can run on some backend: llada has no cached forward
    assert check_strategy("mlcache", MASKGIT.provides) is MLCACHE
    with pytest.raises(ValueError, match="mlcache strategy needs the torch backend and a maskgit model"):
        check_strategy("mlcache", LLADA.provides)
