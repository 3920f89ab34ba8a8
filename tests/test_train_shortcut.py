import os
import subprocess
import sys

import pytest
import torch

from migm.models.checkpoint import load_checkpoint, save_checkpoint
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.sampling.config import SamplerConfig
from migm.sampling.plan import full_step_plan
from migm.training.train_shortcut import (
    Batch,
    Model,
    ShortcutTrainSettings,
    load_batch,
    new_tokens,
    plateaued,
    train_shortcut,
    window_losses,
    windows,
)
from migm.training.trajectories import TrajectorySet, collect_trajectories

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)
SC = ShortcutConfig(width=32, codebook_size=16, vocab=CFG.vocab, num_tokens=16, heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc")
    torch.manual_seed(0)
    base = MaskGIT(CFG).eval()
    save_checkpoint(base, root / "base")
    collect_trajectories(base, root / "traj", SamplerConfig(steps=8, guidance=2.0), torch.arange(3), 24, shard_size=8)
    return root, base, TrajectorySet(root / "traj")


def test_windows_follow_the_plans():
    assert windows(8, 1, []) == [(s, 1) for s in range(7)]
    assert windows(8, 3, [])[-1] == (4, 3)
    # N=32, B=8: full steps every 4 -> chains of 3 shortcut steps from each full step
    assert windows(32, 6, [8]) == [(s, 3) for s in full_step_plan(32, 8)]
    assert all(k <= 2 for _, k in windows(32, 2, [6]))
    with pytest.raises(ValueError, match="no shortcut steps"):
        windows(6, 1, [6])


def test_new_tokens_are_padded_with_a_key_mask():
    reveal = torch.tensor([[0, 1, 1, 2], [1, 0, 0, 0]])
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    batch = Batch(torch.zeros(2, 1, 2, 4, 8), tokens, reveal, torch.tensor([1, 0]), torch.tensor([0, 1]))
    pos, tok, keys = new_tokens(batch, batch.start)
    assert keys.tolist() == [[True, True, False], [True, True, True]]
    assert pos[0, :2].tolist() == [1, 2] and tok[0, :2].tolist() == [6, 7]
    assert pos[1].tolist() == [1, 2, 3] and tok[1].tolist() == [10, 11, 12]


@pytest.mark.slow  # training
def test_training_lowers_the_loss_and_saves_a_loadable_checkpoint(data, tmp_path):
    root, base, ts = data
    items = [(i, s) for i in range(8) for s in (0, 3)]
    batch = load_batch(ts, items, 2)
    init = Shortcut(SC)
    init.load_base_embeddings(base)
    before, _ = window_losses(init, batch, 2, ts.sampler, 2, 0.0, Model.of(base))
    s = ShortcutTrainSettings(steps=60, batch_size=8, lr=3e-3, rollout=2, kl=0.5, eval_every=30, ema_decay=0.9)
    model, val = train_shortcut(str(tmp_path / "sc"), base, ts, SC, s, meta={"base_digest": "x"})
    after, _ = window_losses(model, batch, 2, ts.sampler, 2, 0.0, Model.of(base))
    assert after < 0.8 * before
    assert set(val) >= {"rel_err_1", "rel_err_chain", "kl_1", "kl_chain", "reuse_rel_err_1"}
    loaded = load_checkpoint(tmp_path / "sc")
    assert isinstance(loaded, Shortcut) and loaded.meta["step"] == 60 and loaded.meta["base_digest"] == "x"
    assert loaded.meta["train"]["rollout"] == 2 and "validation" in loaded.meta
    assert [e["step"] for e in loaded.meta["curve"]] == [30, 60]  # the validation curve
    assert loaded.meta["curve"][-1]["kl_chain"] == pytest.approx(val["kl_chain"], rel=1e-4)
    # resuming a finished run does no more steps
    s.steps = 60
    again, _ = train_shortcut(str(tmp_path / "sc"), base, ts, SC, s)
    for a, b in zip(again.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_plateau_rule():
    curve = [{"kl_chain": v} for v in (1.0, 0.8, 0.7, 0.7, 0.71)]
    assert not plateaued(curve, 0)  # off
    assert plateaued(curve, 2)  # the last two brought nothing below 0.7
    assert not plateaued(curve, 3)  # 0.7 at the third-last is below 0.8
    assert not plateaued(curve[:2], 2)  # too few evaluations to tell


@pytest.mark.slow  # training
def test_patience_stops_training_that_no_longer_improves(data, tmp_path):
    root, base, ts = data
    # lr 0: the validation KL cannot fall, so patience 1 stops at the second evaluation
    s = ShortcutTrainSettings(steps=60, batch_size=4, lr=0.0, eval_every=10, patience=1)
    train_shortcut(str(tmp_path / "sc"), base, ts, SC, s)
    assert [e["step"] for e in load_checkpoint(tmp_path / "sc").meta["curve"]] == [10, 20]


def test_rejects_trajectories_of_another_base(data, tmp_path):
    _, _, ts = data
    other = MaskGIT(MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=64, depth=1, heads=2, mlp=64))
    cfg = ShortcutConfig(width=64, codebook_size=16, vocab=CFG.vocab, num_tokens=16, heads=2)
    with pytest.raises(ValueError, match="another width"):
        train_shortcut(str(tmp_path / "x"), other, ts, cfg, ShortcutTrainSettings(steps=1))


def _torchrun(args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "migm.cli.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # subprocesses, training
def test_torchrun_two_processes_collect_and_train(data, tmp_path):
    """Trajectory collection and DDP shortcut training with 2 CPU processes (gloo)."""
    root, _, _ = data
    res = _torchrun(["trajectories", "--base", str(root / "base"), "--out", str(tmp_path / "t"), "--images", "12",
                     "--steps", "6", "--cfg", "2", "--shard-size", "3"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ts = TrajectorySet(tmp_path / "t")
    assert len(ts) == 12 and len(ts.manifest["shards"]) == 4
    # shard k holds the same images whatever the process count
    single = tmp_path / "single"
    collect_trajectories(load_checkpoint(root / "base"), single, SamplerConfig(steps=6, guidance=2.0), torch.arange(3),
                         12, shard_size=3)
    assert torch.equal(TrajectorySet(single).window(7, 0, 6), ts.window(7, 0, 6))

    res = _torchrun(["shortcut", "--trajectories", str(tmp_path / "t"), "--base", str(root / "base"),
                     "--out", str(tmp_path / "sc"), "--steps", "6", "--batch-size", "4", "--eval-every", "3",
                     "--heads", "2", "--rollout", "2", "--kl", "0.1", "--layout", "migm"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("saved") == 1  # only rank 0 reports and writes
    sc = load_checkpoint(tmp_path / "sc")
    assert isinstance(sc, Shortcut) and sc.meta["step"] == 6 and sc.cfg.layout == "migm"
