import torch

from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.sampling.config import SamplerConfig
from migm.sampling.kernel import guide, gumbel, sample_step
from migm.sampling.loop import Fns, generate_tokens
from migm.sampling.schedules import mask_schedule

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)


def _run(model, labels, seed, steps=6, cfg=1.5, record=None):
    def fn(tokens, labs):
        if record is not None:
            record.append(tokens[: len(labels)].clone())
        return model(tokens, labs)

    return generate_tokens(Fns(fn), labels, torch.tensor([CFG.no_class_id]), SamplerConfig(steps=steps, guidance=cfg),
                           num_tokens=CFG.num_tokens, mask_id=CFG.mask_id,
                           generator=torch.Generator().manual_seed(seed))


def test_reveals_scheduled_count_and_never_changes_known_tokens():
    model = MaskGIT(CFG).eval()
    labels = torch.tensor([0, 1, 2, 0])
    seen = []
    final = _run(model, labels, seed=3, record=seen)
    states = seen + [final]
    schedule = mask_schedule("arccos", 6, CFG.num_tokens)
    for i, (before, after) in enumerate(zip(states, states[1:])):
        known = before != CFG.mask_id
        assert torch.equal(after[known], before[known]), "a known token changed"
        newly = (before == CFG.mask_id) & (after != CFG.mask_id)
        assert (newly.sum(1) == schedule[i]).all()
    assert (final != CFG.mask_id).all()
    assert final.max() < CFG.codebook_size


def test_seeded_determinism():
    model = MaskGIT(CFG).eval()
    labels = torch.tensor([0, 1, 2])
    a, b = _run(model, labels, seed=7), _run(model, labels, seed=7)
    c = _run(model, labels, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_kernel_picks_confident_positions_without_noise():
    # With tau = 0 the revealed positions are the ones with the most peaked logits.
    logits = torch.zeros(1, 4, 3)
    logits[0, 2, 1] = 20.0
    logits[0, 0, 0] = 10.0
    tokens = torch.full((1, 4), 3)
    new, positions = sample_step(logits, tokens, mask_id=3, reveal=2, ratio=0.0, tau=0.0,
                                 generator=torch.Generator().manual_seed(0))
    assert sorted(positions[0].tolist()) == [0, 2]
    assert new[0, 2] == 1 and new[0, 0] == 0
    assert new[0, 1] == 3 and new[0, 3] == 3


def test_guidance_formula():
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.allclose(guide(c, u, 2.0), 3 * c - 2 * u)
    assert torch.equal(guide(c, u, 0.0), c)


def test_row_generators_draw_what_a_batch_of_one_draws():
    rows = [torch.Generator().manual_seed(s) for s in (3, 9, 3)]
    got = gumbel((3, 5, 4), rows, "cpu")
    alone = gumbel((1, 5, 4), torch.Generator().manual_seed(9), "cpu")
    assert torch.equal(got[1:2], alone) and torch.equal(got[0], got[2]) and not torch.equal(got[0], got[1])
