import json

import pytest
import torch

from migm.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from migm.models.maskgit import MaskGIT, MaskGITConfig

CFG = MaskGITConfig(codebook_size=8, num_classes=2, grid=2, width=16, depth=1, heads=2, mlp=32)


def test_roundtrip_fp16(tmp_path):
    model = MaskGIT(CFG)
    save_checkpoint(model, tmp_path / "m", meta={"hello": 1}, dtype=torch.float16)
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.meta == {"hello": 1}
    assert loaded.cfg == CFG
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == torch.float32
        assert torch.allclose(a.half().float(), b), k
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(MaskGIT(CFG), tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "m")


def test_config_mismatch(tmp_path):
    save_checkpoint(MaskGIT(CFG), tmp_path / "m")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["config"]["depth"] = 2
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m")


def test_written_files_are_not_private(tmp_path):
    import os
    import stat

    save_checkpoint(MaskGIT(CFG), tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode)
    # the umask's usual permissions, not mkstemp's 0600 (that would hide shipped assets from other users)
    assert mode == 0o666 & ~umask, oct(mode)
