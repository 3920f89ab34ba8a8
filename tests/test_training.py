import pytest
import torch
from conftest import needs_data

from migm.models.checkpoint import load_checkpoint
from migm.models.maskgit import MaskGITConfig
from migm.models.vqvae import VQConfig

pytestmark = pytest.mark.slow  # trains models


@needs_data
def test_vq_and_base_train_resume(tmp_path):
    from migm.training.state import _state_path
    from migm.training.train_base import animal_tokens, train_base
    from migm.training.train_vq import train_vq

    seen = []
    vq = train_vq(str(tmp_path / "vq"), VQConfig(n_down=2, codebook_size=16, width=16), steps=4, batch_size=8,
                  restart_every=2, progress=lambda s, n, m: seen.append(s))
    assert seen == [2, 4]
    assert load_checkpoint(tmp_path / "vq").meta["step"] == 4
    cfg = MaskGITConfig(codebook_size=16, num_classes=10, grid=8, width=32, depth=1, heads=2, mlp=64)
    steps = []
    data = animal_tokens(vq, cfg)
    train_base(str(tmp_path / "base"), cfg, data, steps=2, batch_size=4, eval_every=2,
               progress=lambda s, n, m: steps.append(s))
    assert steps == [1, 2]
    assert _state_path(tmp_path / "base").exists()
    # resuming continues after the saved step, not from zero
    train_base(str(tmp_path / "base"), cfg, data, steps=3, batch_size=4, eval_every=2,
               progress=lambda s, n, m: steps.append(s))
    assert steps == [1, 2, 3]
    base = load_checkpoint(tmp_path / "base")
    assert base.meta["step"] == 3 and "val_ce" in base.meta
    feats, logits = base(torch.zeros(1, 64, dtype=torch.long), torch.tensor([1]))
    assert logits.shape == (1, 64, 16)


@needs_data
def test_classifier_train_steps(tmp_path):
    from migm.models.classifier import ClassifierConfig
    from migm.training.train_classifier import train_classifier

    model = train_classifier(str(tmp_path / "clf"), ClassifierConfig(width=8, feature_dim=16), steps=2, batch_size=8)
    assert load_checkpoint(tmp_path / "clf").meta["step"] == 2
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
