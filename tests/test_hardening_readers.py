"""Every reader of others' files is bounded before it allocates, and released checkpoints load
without running code (SECURITY.md, "What each reader guarantees").

Cases that test allocation run in a subprocess whose address space is capped (RLIMIT_AS), so a
regression fails cleanly here instead of taking the machine's memory: the child must end with
one `Error:` line, not a MemoryError, a traceback or a kill."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from migm.errors import BundleError, CheckpointError, ConfigError
from migm.fileio import read_json, read_regular
from migm.models.loaders import load_halton_maskgit, load_maskgit_shortcut
from migm.models.maskgit import MaskGIT, MaskGITConfig
from migm.models.torchzip import load_state
from migm.models.vq_diffusers import HaltonVQGANConfig
from migm.models.vq_loaders import load_halton_vqgan

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_loaders import MG, halton_state  # noqa: E402
from test_vq_diffusers import HALTON, taming_state, write_lightning  # noqa: E402

CAP = 3 << 30  # the child's address space: torch's own mapping fits, a 2 GiB tensor on top does not


def declaring_files(directory: Path, declared: int = 2 << 30) -> dict:
    """A ~100 KB Halton-MaskGIT .pth whose tok_emb is a stride-0 view declaring `declared` bytes,
    and a small valid VQGAN last.ckpt to go with it (what `convert maskgit` takes)."""
    directory.mkdir(parents=True, exist_ok=True)
    st = halton_state(MaskGITConfig(codebook_size=16, num_classes=3, grid=8, width=32, depth=2, heads=4, mlp=64))
    st["tok_emb.weight"] = torch.zeros(1).expand(declared // (4 * 32), 32)
    torch.save({"iter": 1, "model_state_dict": st}, directory / "base.pth")
    vq = HaltonVQGANConfig(grid=8, codebook_size=16, code_dim=8, latent_channels=12, block_out_channels=(32, 32, 64),
                           layers_per_block=1, norm_groups=32)
    write_lightning(directory / "last.ckpt", taming_state(vq))
    return {"base": directory / "base.pth", "vqgan": directory / "last.ckpt"}


def run_capped(code: str, cap: int = CAP, timeout: float = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose address space is capped at `cap` bytes."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _clean_error(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "MemoryError" not in out, out
    assert [line for line in out.splitlines() if line.strip()][-1].startswith("Error:"), out
    for n in needles:
        assert n in out, out


# ---- one bounded reader ----

def test_reader_refuses_links_devices_fifos_and_sparse_giants(tmp_path):
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="symbolic link"):
        read_json(tmp_path / "zero.json")
    os.mkfifo(tmp_path / "fifo.json")  # a plain open would wait forever for a writer
    t = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        read_json(tmp_path / "fifo.json")
    assert time.monotonic() - t < 5
    with open(tmp_path / "sparse.json", "wb") as fh:  # 4 GiB on paper, nothing on disk: never read whole
        fh.truncate(4 << 30)
    with pytest.raises(ConfigError, match="has 4294967296 bytes; at most"):
        read_json(tmp_path / "sparse.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_regular(tmp_path, 10)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nests deeper than 64 levels"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "ok.json").write_text('{"a": ["[[[[", {"b": 1}]}')
    assert read_json(tmp_path / "ok.json") == {"a": ["[[[[", {"b": 1}]}


def test_saved_pipeline_and_index_files_go_through_it(tmp_path):
    from migm.models.loaders import dimoo_config
    from migm.runtime import saved

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model_index.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="symbolic link"):
        saved.load(tmp_path / "p")
    with open(tmp_path / "p" / "big", "wb") as fh:
        fh.truncate(4 << 30)
    (tmp_path / "p" / "model_index.json").unlink()
    os.replace(tmp_path / "p" / "big", tmp_path / "p" / "model_index.json")
    with pytest.raises(CheckpointError, match="bytes; at most 65536"):
        saved.load(tmp_path / "p")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "model.safetensors.index.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        dimoo_config(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors.index.json").unlink()
    (tmp_path / "d" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a.safetensors"]}))
    with pytest.raises(CheckpointError, match="weight_map is not an object"):
        dimoo_config(tmp_path / "d")


def test_a_deeply_nested_manifest_is_refused(tmp_path):
    from migm.engines.bundle import read_manifest

    (tmp_path / "x.plan").mkdir()
    (tmp_path / "x.plan" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests deeper than 64 levels"):
        read_manifest(tmp_path / "x.plan")


# ---- released checkpoints: framework objects load, code never runs ----

def _fake_module(name: str, **classes) -> types.ModuleType:
    mod = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__, cls.__name__ = name, cls_name, cls_name
        setattr(mod, cls_name, cls)
    return mod


def _lightning_checkpoint(path: Path, state: dict) -> list[str]:
    """A Lightning-style checkpoint carrying look-alikes of pytorch_lightning's AttributeDict and
    ModelCheckpoint state, omegaconf's DictConfig and argparse's Namespace. Their modules exist only
    while saving (sys.modules fakes), so at load those libraries' code is not there to run."""

    class AttributeDict(dict):
        pass

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path, self.monitor = "/ckpt/epoch=3.ckpt", "val/rec_loss"

    class DictConfig:
        def __init__(self, content):
            self._content, self._metadata = content, {"ref_type": "typing.Any", "flags": {"readonly": False}}

        def __getstate__(self):
            return dict(self.__dict__)

    class Namespace:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    mods = {"pytorch_lightning.utilities.parsing": _fake_module("pytorch_lightning.utilities.parsing",
                                                                AttributeDict=AttributeDict),
            "pytorch_lightning.callbacks.model_checkpoint": _fake_module(
                "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint),
            "omegaconf.dictconfig": _fake_module("omegaconf.dictconfig", DictConfig=DictConfig),
            "argparse_lookalike": _fake_module("argparse_lookalike", Namespace=Namespace)}
    for name in list(mods):  # `import a.b.c` needs a and a.b too
        parts = name.split(".")
        for i in range(1, len(parts)):
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        hp = AttributeDict(lr=4.5e-6, ddconfig=DictConfig({"ch": 128, "ch_mult": [1, 1, 2, 2, 4]}))
        ckpt = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                "hyper_parameters": hp, "hparams_name": "kwargs",
                "callbacks": {ModelCheckpoint: {"state": ModelCheckpoint()}},
                "args": Namespace(gpus=8, base=["configs/vqgan.yaml"]),
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}],
                "lr_schedulers": []}
        torch.save(ckpt, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return sorted(m for m in mods if saved[m] is None)


def test_lightning_checkpoint_with_framework_objects_loads(tmp_path):
    state = taming_state(HALTON)
    modules = _lightning_checkpoint(tmp_path / "last.ckpt", state)
    assert not any(m in sys.modules for m in modules)
    refs, archive = load_state(tmp_path / "last.ckpt", ("state_dict",))
    # the four foreign classes became placeholders; nothing else of the file was resolved
    assert {"pytorch_lightning.utilities.parsing.AttributeDict", "omegaconf.dictconfig.DictConfig",
            "argparse_lookalike.Namespace", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"} \
        <= set(archive.ignored)
    assert sorted(refs) == sorted(state)  # the state dict's tensors, and only those (optimizer state dropped)
    archive.close()
    model = load_halton_vqgan(tmp_path / "last.ckpt", HALTON)
    ref = load_halton_vqgan(write_lightning(tmp_path / "plain.ckpt", state), HALTON)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(m in sys.modules for m in modules)  # nothing was imported to load it


class _Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.check_call", "in-state-dict"])
def test_malicious_checkpoints_run_nothing(tmp_path, kind):
    import builtins
    import subprocess as sp

    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    payload = {"os.system": _Payload(os.system, (cmd,)),
               "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
               "subprocess.check_call": _Payload(sp.check_call, (["touch", str(marker)],)),
               "in-state-dict": _Payload(os.system, (cmd,))}[kind]
    state = halton_state(MG)
    if kind == "in-state-dict":
        state["tok_emb.weight"] = payload  # where a tensor should be: dropped, so the key is missing
        torch.save({"model_state_dict": state}, tmp_path / "m.pth")
        with pytest.raises(CheckpointError, match="missing"):
            load_halton_maskgit(tmp_path / "m.pth", MG)
    else:
        torch.save({"model_state_dict": state, "evil": payload, "nested": [{"x": payload}]}, tmp_path / "m.pth")
        model = load_halton_maskgit(tmp_path / "m.pth", MG)  # the tensors load; the payload is an inert placeholder
        assert isinstance(model, MaskGIT)
    assert not marker.exists()


def test_a_pickle_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "raw.pth").write_bytes(pickle.dumps(_Payload(os.system, ("touch /nonexistent/x",)), protocol=2))
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_state(tmp_path / "raw.pth")


# ---- sizes from someone else's file: checked before anything is allocated ----

@pytest.mark.slow  # a capped subprocess
def test_stride_zero_view_is_refused_before_allocating(tmp_path):
    st = halton_state(MG)
    st["tok_emb.weight"] = torch.zeros(1).expand(1 << 20, 1 << 14)  # 64 GiB declared, 4 bytes held
    torch.save({"model_state_dict": st}, tmp_path / "big.pth")
    assert (tmp_path / "big.pth").stat().st_size < 200_000
    proc = run_capped(f"""
        from migm.models.loaders import halton_config, load_halton_maskgit
        from migm.cli.common import one_line_errors
        import click
        @click.command()
        @one_line_errors
        def main():
            load_halton_maskgit({str(tmp_path / 'big.pth')!r})
        main()
    """)
    _clean_error(proc, "declares [1048576, 16384]", "over a storage of 1 elements")


@pytest.mark.slow  # a capped subprocess
def test_convert_maskgit_on_a_file_declaring_2_gib(tmp_path):
    f = declaring_files(tmp_path)
    proc = run_capped(f"""
        import sys
        from migm.cli.export import main
        sys.argv = ["migm-export", "convert", "maskgit", "--base", {str(f['base'])!r}, "--vqgan", {str(f['vqgan'])!r},
                    "--heads", "4", "--out", {str(tmp_path / 'out')!r}]
        main()
    """)
    _clean_error(proc, "declares [16777216, 32]")
    assert not (tmp_path / "out").exists()


def test_shortcut_with_a_huge_bottleneck_is_a_clean_error(tmp_path):
    base = MaskGIT(MG).eval()
    torch.save({"proj_in.weight": torch.zeros(1).expand(1 << 20, 32)}, tmp_path / "sc.pth")
    with pytest.raises(CheckpointError, match=r"proj_in.weight is \[1048576, 32\]"):
        load_maskgit_shortcut(tmp_path / "sc.pth", base)
    torch.save({"proj_in.weight": torch.zeros(64, 32)}, tmp_path / "sc2.pth")  # ratio 32/64 rounds to 0
    with pytest.raises(CheckpointError, match="bottleneck that divides it"):
        load_maskgit_shortcut(tmp_path / "sc2.pth", base)


@pytest.mark.slow  # a capped subprocess
def test_a_tiny_vq_config_with_huge_channels_allocates_nothing(tmp_path):
    vq = tmp_path / "vqvae"
    vq.mkdir()
    (vq / "config.json").write_text(json.dumps({
        "_class_name": "VQModel", "block_out_channels": [32768, 32768], "up_block_types": ["UpDecoderBlock2D"] * 2,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "latent_channels": 64, "num_vq_embeddings": 8192,
        "vq_embed_dim": 64, "layers_per_block": 2, "norm_num_groups": 32, "mid_block_add_attention": False,
        "lookup_from_codebook": True, "out_channels": 3, "act_fn": "silu", "norm_type": "group"}))
    save_file({"quantize.embedding.weight": torch.zeros(8192, 64)}, str(vq / "diffusion_pytorch_model.safetensors"))
    proc = run_capped(f"""
        from migm.models.vq_loaders import load_amused_vq
        from migm.cli.common import one_line_errors
        import click
        @click.command()
        @one_line_errors
        def main():
            load_amused_vq({str(tmp_path)!r})
        main()
    """)
    _clean_error(proc, "does not fit the aMUSEd VQ decoder")



def test_vqgan_codebook_view_and_missing_keys_are_clean_errors(tmp_path):
    from migm.models.loaders import halton_config

    st = taming_state(HALTON)
    st["quantize.embedding.weight"] = torch.zeros(1).expand(1 << 24, HALTON.code_dim)
    write_lightning(tmp_path / "big.ckpt", st)
    with pytest.raises(CheckpointError, match="quantize.embedding.weight declares"):
        load_halton_vqgan(tmp_path / "big.ckpt", HALTON)
    state = halton_state(MG)
    del state["tok_emb.weight"]
    torch.save({"model_state_dict": state}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="is not a Halton-MaskGIT checkpoint: it has no tok_emb.weight"):
        halton_config(tmp_path / "m.pth", 16, 4)
