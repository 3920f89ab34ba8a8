"""The shipped tiny-animals checkpoints: present, consistent, deterministic."""

import torch

from migm import assets
from migm.families.presets import PRESETS
from migm.models.checkpoint import load_checkpoint
from migm.runtime import Pipeline


def test_shipped_checkpoints_match_presets():
    base = load_checkpoint(assets.BASE)
    assert base.cfg == PRESETS["tiny-animals"].base
    assert load_checkpoint(assets.VQ).cfg == PRESETS["tiny-animals"].vq
    clf = load_checkpoint(assets.CLASSIFIER)
    assert clf.meta["val_acc"] >= 0.9
    assert base.meta["class_names"][2] == "cat"
    assert {"steps", "cfg", "tau"} <= set(base.meta["sampling"])
    size = sum(p.stat().st_size for p in assets.ASSETS.glob("*.safetensors"))
    assert size < 20e6  # all shipped checkpoints together


def test_pipeline_is_deterministic_and_class_aware():
    pipe = Pipeline.from_checkpoints()
    a = pipe.generate_tokens(["cat", "zebra"], steps=4, seed=3)
    b = pipe.generate_tokens([2, 9], steps=4, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe.generate_tokens(["cat", "zebra"], steps=4, seed=4))
    images = pipe.decode(a)
    assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_shipped_shortcut_belongs_to_the_shipped_base():
    from migm.models.checkpoint import checkpoint_digest
    from migm.models.shortcut import Shortcut

    sc = load_checkpoint(assets.SHORTCUT)
    assert isinstance(sc, Shortcut) and sc.cfg.cross_attention
    assert sc.meta["base_digest"] == checkpoint_digest(assets.BASE)
    assert {"rel_err_1", "reuse_rel_err_1"} <= set(sc.meta["validation"])
    pipe = Pipeline.from_checkpoints()
    assert pipe.has_shortcut
    tokens = pipe.generate_tokens(["cat", "dog"], steps=8, strategy="shortcut", budget=3, seed=0)
    assert tokens.shape == (2, 256) and (tokens < 64).all()
