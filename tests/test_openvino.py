"""OpenVINO bundles: build (bf16 by default on a CPU, int8 through NNCF), run against torch, the
`auto` choices, and the bad-input cases (no OpenVINO, a corrupted .bin, an IR that does not match
its manifest, a precision the backend does not run)."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from migm.cli.export import main as export_main
from migm.cli.run import main as run_main
from migm.engines import build as build_mod
from migm.engines import openvino as ov_engine
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import manifest_digest, verify_bundle
from migm.engines.targets import default_backend
from migm.errors import BackendUnavailable, BundleError, ConfigError
from migm.fileio import sha256_file
from migm.runtime.pipeline import Pipeline

pytestmark = [pytest.mark.slow,  # builds OpenVINO bundles
              pytest.mark.skipif(not ov_engine.available(),
                                reason='OpenVINO is not installed (pip install "migm[openvino]"; make installs it)')]

CLASSES = [0, 1, 2, 0, 1, 2]


def _ckpt_args(root):
    return ["--base", str(root / "base"), "--vq", str(root / "vq"), "--shortcut", str(root / "sc")]


@pytest.fixture(scope="module")
def ov_bf16(tiny, tmp_path_factory):
    """`migm-export build` with neither --backend nor --precision: on a CPU with OpenVINO, a bf16 openvino bundle."""
    out = tmp_path_factory.mktemp("ov") / "bf16.plan"
    res = CliRunner().invoke(export_main, ["build", *_ckpt_args(tiny[0]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def ov_int8(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "int8.plan"
    root = tiny[0]
    return build_bundle(out, BuildSettings(precision="int8", backend="openvino", calibration_size=32),
                        root / "base", root / "vq", root / "sc")


def _agreement(pipe, ref, budget=3):
    a = pipe.generate_tokens(CLASSES, steps=6, budget=budget, seed=0)
    b = ref.generate_tokens(CLASSES, steps=6, budget=budget, seed=0)
    return (a == b).float().mean().item()


def test_default_build_is_openvino_bf16_and_auto_runs_it(ov_bf16):
    doc = verify_bundle(ov_bf16)
    assert doc.backend == "openvino" and doc.precision == "bf16"
    assert {e.file for e in doc.components.values()} == {"base.xml", "shortcut.xml", "decoder.xml"}
    assert all(e.data_file == e.file.replace(".xml", ".bin") and len(e.data_sha256) == 64
               for e in doc.components.values())
    assert doc.openvino.inference_precision == ov_engine.inference_precision()
    assert doc.tools["openvino"] and doc.tools["nncf"]
    pipe = Pipeline.from_bundle(ov_bf16)  # auto
    assert pipe.backend.name == "openvino"
    assert pipe.backend.inference_precision == ("bf16" if ov_engine.cpu_has_bf16() else "f32")
    assert set(pipe.backend.hints.values()) == {pipe.backend.inference_precision}
    ref = Pipeline.from_bundle(ov_bf16, backend="torch")
    assert _agreement(pipe, ref) >= 0.9  # bf16 arithmetic may flip a near-tie, not the picture
    images = pipe.generate([0, 1], steps=6)
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_fp32_ir_matches_torch_closely(ov_bf16, tiny):
    """An fp32 component is compiled with the f32 hint: torch's numbers to float rounding."""
    doc = verify_bundle(ov_bf16)
    compiled = ov_engine.compile_ir(ov_bf16 / "base.xml", "fp32")
    ov_engine.check_io(compiled, doc.components["base"], ov_bf16 / "base.xml")
    base = tiny[1]
    tokens = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        ref = base(tokens, labels)[1].numpy()
    got = ov_engine.run_ir(compiled, {"tokens": tokens.numpy(), "labels": labels.numpy()})[1]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


def test_int8_quantizes_base_and_shortcut(ov_int8):
    doc = verify_bundle(ov_int8)
    assert {k: e.precision for k, e in doc.components.items()} == \
        {"base": "int8", "shortcut": "int8", "decoder": "bf16"}
    assert doc.calibration.file == "calibration.npz"
    with np.load(ov_int8 / "calibration.npz") as z:  # the base's own inputs along trajectories
        assert z["base_tokens"].shape == (32, 16) and (z["base_tokens"] == 16).any() and z["base_cond"].shape == (32,)
    xml = (ov_int8 / "base.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml  # NNCF's quantizers are in the IR
    pipe = Pipeline.from_bundle(ov_int8)
    assert pipe.backend.name == "openvino"
    assert _agreement(pipe, Pipeline.from_bundle(ov_int8, backend="torch")) >= 0.75


def test_openvino_precisions_and_build_errors(tiny, tmp_path, monkeypatch):
    assert ov_engine.component_precisions("int8", ("fp32", "int8")) == \
        {"base": "int8", "shortcut": "int8", "decoder": "bf16"}
    assert ov_engine.component_precisions("best", ("best",))["decoder"] == "bf16"
    with pytest.raises(ConfigError, match="--precision bf16"):
        ov_engine.component_precisions("fp16", ("fp16",))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(export_main, ["build", "--backend", "openvino", "--precision", "fp16",
                                           *_ckpt_args(tiny[0]), "--out", "x.plan"])
    assert res.exit_code != 0 and "--precision bf16" in res.output and "Traceback" not in res.output
    assert res.output.count("Error:") == 1 and not list(tmp_path.iterdir())  # nothing written
    res = CliRunner().invoke(export_main, ["build", "--backend", "ort", "--precision", "bf16", *_ckpt_args(tiny[0]),
                                           "--out", "y.plan"])
    assert res.exit_code != 0 and "--backend openvino" in res.output and not list(tmp_path.iterdir())


def test_auto_targets(monkeypatch):
    assert default_backend() == ("openvino" if not torch.cuda.is_available() else default_backend())
    monkeypatch.setattr(build_mod.openvino, "available", lambda: False)
    if not torch.cuda.is_available():
        assert default_backend() == "ort"


def test_run_says_the_backend(ov_bf16, tmp_path):
    res = CliRunner().invoke(run_main, ["--engine", str(ov_bf16), "--num", "2", "--steps", "6", "--budget", "3",
                                        "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "openvino backend" in res.output
    res = CliRunner().invoke(run_main, ["--engine", str(ov_bf16), "--backend", "ort", "--num", "1",
                                        "--out", str(tmp_path / "p")])
    assert res.exit_code != 0 and "holds OpenVINO IR: use --backend openvino" in res.output


# ---- bad input ----

def test_no_openvino_says_what_would_run(ov_bf16, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.setattr(ov_engine, "_CORE", None)
    assert not ov_engine.available()
    with pytest.raises(BackendUnavailable) as e:
        Pipeline.from_bundle(ov_bf16)
    msg = str(e.value)
    assert str(ov_bf16) in msg and 'pip install "migm[openvino]"' in msg and "--backend ort" in msg
    assert "\n" not in msg
    res = CliRunner().invoke(run_main, ["--engine", str(ov_bf16), "--num", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and res.output.count("Error:") == 1 and "Traceback" not in res.output
    assert Pipeline.from_bundle(ov_bf16, backend="torch").backend.name == "torch"  # its checkpoints still run


def _rewrite(bundle, edit):
    """Change a bundle's manifest (and rehash its files), as someone handing over a bad bundle would."""
    doc = json.loads((bundle / "manifest.json").read_text())
    edit(doc)
    for e in doc["components"].values():
        xml, bin_ = bundle / e["file"], bundle / e["data_file"]
        e["sha256"], e["bytes"] = sha256_file(xml), xml.stat().st_size
        e["data_sha256"], e["data_bytes"] = sha256_file(bin_), bin_.stat().st_size
    doc["digest"] = manifest_digest(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))


def test_corrupted_bin_names_the_file(ov_bf16, tmp_path):
    bad = shutil.copytree(ov_bf16, tmp_path / "bad.plan")
    data = bytearray((bad / "base.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "base.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"base.bin does not match its hash .*rebuild the bundle"):
        Pipeline.from_bundle(bad)


def test_ir_that_does_not_match_the_manifest(ov_bf16, tmp_path):
    bad = shutil.copytree(ov_bf16, tmp_path / "swapped.plan")
    shutil.copyfile(bad / "decoder.xml", bad / "base.xml")  # the decoder's graph under the base's name
    shutil.copyfile(bad / "decoder.bin", bad / "base.bin")
    _rewrite(bad, lambda doc: None)
    with pytest.raises(BundleError, match=r"base.xml takes \['tokens'\] -> \['images'\], the manifest says"):
        Pipeline.from_bundle(bad)


def test_unsupported_component_precision(ov_bf16, tmp_path):
    bad = shutil.copytree(ov_bf16, tmp_path / "fp16.plan")
    _rewrite(bad, lambda doc: doc["components"]["shortcut"].update(precision="fp16"))
    with pytest.raises(BundleError, match=r"shortcut.xml is fp16, which the openvino backend does not run"):
        Pipeline.from_bundle(bad)


def test_manifest_openvino_entry_is_checked(ov_bf16, tmp_path):
    bad = shutil.copytree(ov_bf16, tmp_path / "info.plan")
    _rewrite(bad, lambda doc: doc["openvino"].update(inference_precision="fp8"))
    with pytest.raises(BundleError, match=r"openvino.inference_precision is 'fp8', which is unknown \(one of bf16"):
        verify_bundle(bad)
