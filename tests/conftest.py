import pytest
import torch

from migm.data.animals import has_animals
from migm.models.checkpoint import checkpoint_digest, save_checkpoint
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.models.vqvae import VQVAE, VQConfig
from migm.sampling.config import SamplerConfig
from migm.training.trajectories import collect_trajectories

TINY = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _hermetic_caches(tmp_path_factory, monkeypatch):
    """Every cache a test (or a subprocess it starts) could write lands in one folder of this session's
    temporary directory, never in the user's ~/.cache: migm's bundles, and the HOME-derived caches of
    the libraries below it. One folder per session, so the default bundle is built once per run."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("MIGM_CACHE", str(root / "migm"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))


needs_data = pytest.mark.skipif(not has_animals(), reason="animal-mnist not installed (make install adds it)")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random base, VQ-VAE (8x8 images -> 4x4 tokens) and shortcut, saved as checkpoints,
    plus a few trajectories: (root, base, vq, shortcut)."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    base = MaskGIT(TINY).eval()
    base.meta = {"sampling": {"steps": 6, "cfg": 2.0, "tau": 4.5}}
    vq = VQVAE(VQConfig(width=16, codebook_size=16, code_dim=8, n_down=1, image_size=8)).eval()
    sc = Shortcut(ShortcutConfig(width=32, codebook_size=16, vocab=TINY.vocab, num_tokens=16, heads=2)).eval()
    sc.load_base_embeddings(base)
    torch.nn.init.normal_(sc.proj_out.weight, std=0.05)
    save_checkpoint(base, root / "base", meta=base.meta)
    save_checkpoint(vq, root / "vq")
    save_checkpoint(sc, root / "sc", meta={"base_digest": checkpoint_digest(root / "base")})
    collect_trajectories(base, root / "traj", SamplerConfig(steps=6, guidance=2.0), torch.arange(3), num=6,
                         shard_size=6)
    return root, base, vq, sc
