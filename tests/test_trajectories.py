import json

import numpy as np
import pytest
import torch

from migm.errors import DataError
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.sampling.config import SamplerConfig
from migm.sampling.schedules import mask_schedule
from migm.training.trajectories import TrajectorySet, collect_trajectories

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)


def _collect(path, num=5, steps=6, cfg=2.0, seed=0):
    torch.manual_seed(0)
    base = MaskGIT(CFG).eval()
    collect_trajectories(base, path, SamplerConfig(steps=steps, guidance=cfg), torch.arange(3), num, seed=seed,
                         shard_size=2, base_digest="abc")
    return base, TrajectorySet(path)


def test_layout_and_reveal_steps(tmp_path):
    _, ts = _collect(tmp_path / "t")
    m = ts.manifest
    assert len(ts) == 5 and ts.branches == 2 and m["branches"] == ["cond", "uncond"]
    assert [s["count"] for s in m["shards"]] == [2, 2, 1] and m["base"]["digest"] == "abc"
    assert m["reveal_counts"] == mask_schedule("arccos", 6, 16)
    assert m["mask_ratio_after"][0] == 1 - m["reveal_counts"][0] / 16 and m["mask_ratio_after"][-1] == 0
    # features at every position the base sees: the 16 grid rows and the class row
    assert ts.features[0].dtype == np.float16 and ts.features[0].shape == (2, 2, 6, 17, 32)
    for i in range(5):
        tokens, reveal, label = ts.record(i)
        assert label == i % 3 and (tokens < 16).all()
        # every step unmasked exactly the scheduled number of positions
        assert torch.bincount(reveal, minlength=6).tolist() == m["reveal_counts"]


@pytest.mark.slow  # collects trajectories
def test_features_are_the_base_models_on_each_step(tmp_path):
    base, ts = _collect(tmp_path / "t")
    tokens, reveal, label = ts.record(3)
    for step in range(6):
        seq = torch.where(reveal >= step, torch.tensor(CFG.mask_id), tokens)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            f, _ = base(torch.stack([seq, seq]), torch.tensor([int(label), CFG.no_class_id]))
        torch.testing.assert_close(ts.window(3, step, step + 1)[:, 0], f.float(), atol=2e-2, rtol=1e-2)


@pytest.mark.slow  # collects trajectories
def test_shards_do_not_depend_on_resuming(tmp_path):
    _, ts = _collect(tmp_path / "a")
    ref = ts.window(4, 0, 6).clone()
    # an interrupted run: no manifest, one shard missing -> only that shard is redone
    (tmp_path / "a" / "manifest.json").unlink()
    (tmp_path / "a" / "labels-00002.npy").unlink()
    _, again = _collect(tmp_path / "a")
    assert torch.equal(again.window(4, 0, 6), ref)


def test_refuses_finished_set_and_reports_missing(tmp_path):
    _collect(tmp_path / "t", num=2)
    with pytest.raises(DataError, match="already holds"):
        _collect(tmp_path / "t", num=2)
    with pytest.raises(DataError, match="manifest.json missing"):
        TrajectorySet(tmp_path / "nothing")
    (tmp_path / "t" / "features-00000.npy").unlink()
    with pytest.raises(DataError, match="shard file missing"):
        TrajectorySet(tmp_path / "t")
    (tmp_path / "t" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a migm trajectory"):
        TrajectorySet(tmp_path / "t")


def test_unguided_has_one_branch(tmp_path):
    _, ts = _collect(tmp_path / "t", num=2, cfg=0.0)
    assert ts.branches == 1 and ts.window(0, 0, 2).shape == (1, 2, 17, 32)


def test_on_policy_trajectories_follow_the_hybrid_sampler(tmp_path):
    """With a shortcut and a budget the tokens are the hybrid sampler's, and the features recorded at
    every step are still the base model's on those tokens (the targets the shortcut should hit)."""
    from migm.models.shortcut import Shortcut, ShortcutConfig

    torch.manual_seed(0)
    base = MaskGIT(CFG).eval()
    sc = Shortcut(ShortcutConfig(width=32, codebook_size=16, vocab=CFG.vocab, num_tokens=16, heads=2)).eval()
    sc.load_base_embeddings(base)
    torch.nn.init.normal_(sc.proj_out.weight, std=3.0)  # far from reuse: its own token paths
    s = SamplerConfig(steps=6, guidance=2.0)
    collect_trajectories(base, tmp_path / "on", s, torch.arange(3), 4, shard_size=4, shortcut=sc, budget=2)
    collect_trajectories(base, tmp_path / "off", s, torch.arange(3), 4, shard_size=4)
    on, off = TrajectorySet(tmp_path / "on"), TrajectorySet(tmp_path / "off")
    assert on.manifest["policy"]["budget"] == 2 and off.manifest["policy"] is None
    assert any(not torch.equal(on.record(i)[0], off.record(i)[0]) for i in range(4))  # other token paths
    tokens, reveal, label = on.record(1)
    for step in (1, 4):  # shortcut steps (the plan is [0, 3])
        seq = torch.where(reveal >= step, torch.tensor(CFG.mask_id), tokens)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            f, _ = base(torch.stack([seq, seq]), torch.tensor([int(label), CFG.no_class_id]))
        torch.testing.assert_close(on.window(1, step, step + 1)[:, 0], f.float(), atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="budget B < N"):
        collect_trajectories(base, tmp_path / "x", s, torch.arange(3), 4, shortcut=sc, budget=6)
