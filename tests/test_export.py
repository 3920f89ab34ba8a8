"""ONNX export, precision conversion, INT8 calibration, bundles and `migm-export`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from migm.cli.export import main as export_main
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import BundleError, read_manifest, verify_bundle
from migm.engines.ort import ort_session
from migm.engines.verify import parity
from migm.errors import DataError
from migm.export.calibration import load_calibration, sample_calibration, save_calibration, shortcut_feeds
from migm.export.int8 import head_matmuls, quantize_int8
from migm.export.onnx import components, export_component, io_spec
from migm.export.precision import component_precisions, to_fp16
from migm.models.maskgit import MaskGITConfig
from migm.sampling.config import SamplerConfig

CFG = MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    root, base, vq, sc = tiny
    out = tmp_path_factory.mktemp("onnx")
    comps = components(base, vq.decoder, sc)
    return {c.name: (c, export_component(c, out / f"{c.name}.onnx")) for c in comps}


@pytest.mark.slow  # exports ONNX (the exported fixture)
def test_fp32_export_matches_torch(exported):
    for name, (comp, path) in exported.items():
        rows = parity(comp, path)
        assert {r["batch"] for r in rows} == {1, 3, 16}
        assert max(r["rel_l2"] for r in rows) < 1e-4, name
    # the shortcut's new-token count is a dynamic axis: M = 1, 7 and 16 (all positions) all ran
    assert {r["new_tokens"] for r in parity(*exported["shortcut"])} == {1, 7, 16}
    inputs, outputs = io_spec(exported["shortcut"][1])
    assert [i["name"] for i in inputs] == ["features", "new_pos", "new_tok", "key_mask", "mask_ratio"]
    assert inputs[1]["shape"] == ["batch", "new_tokens"] and outputs[0]["shape"] == ["batch", 17, 32]
    assert io_spec(exported["decoder"][1])[1][0]["shape"][0] == "batch"


@pytest.mark.slow  # the exported fixture
def test_fp16_graph_keeps_norms_in_fp32(exported, tmp_path):
    import onnx

    comp, path = exported["base"]
    half = to_fp16(path, tmp_path / "base.fp16.onnx")
    model = onnx.load(str(half))
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    weights = {i.name: i for i in model.graph.initializer}
    assert ln and all(weights[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in ln if n.input[1] in weights)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    feeds = {k: v.numpy() for k, v in comp.inputs.items()}
    a, b = ort_session(path).run(None, feeds)[0], ort_session(half).run(None, feeds)[0]
    assert b.dtype == np.float32 and np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2


@pytest.mark.slow  # the exported fixture, quantizes
def test_int8_shortcut_from_sampled_calibration(tiny, exported, tmp_path):
    import onnx

    base = tiny[1]
    data = sample_calibration(base, SamplerConfig(guidance=2.0), count=24, steps=6)
    assert data["features"].shape == (24, 17, 32) and len(set(data["steps"].tolist())) > 1
    save_calibration(tmp_path / "c.npz", data)
    data = load_calibration(tmp_path / "c.npz")
    comp, path = exported["shortcut"]
    q = quantize_int8(path, tmp_path / "sc.int8.onnx", data)
    model = onnx.load(str(q))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    zero_points = [i for i in model.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert head_matmuls(onnx.load(str(path)))  # the head stays FP32
    fp32, int8 = ort_session(path), ort_session(q)
    errs = []
    for feed in list(shortcut_feeds(data))[:8]:
        a, b = fp32.run(None, feed)[0], int8.run(None, feed)[0]
        errs.append(np.linalg.norm(a - b) / np.linalg.norm(a))
    assert np.mean(errs) < 0.1


def test_calibration_errors(tmp_path):
    with pytest.raises(DataError, match="migm-export calibrate"):
        load_calibration(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt"):
        load_calibration(tmp_path / "bad.npz")


def test_precisions():
    assert component_precisions("best") == {"base": "fp16", "shortcut": "int8", "decoder": "fp16"}
    with pytest.raises(ValueError, match="unknown precision"):
        component_precisions("fp8")


def _build(tiny, out, precision, **kw):
    root = tiny[0]
    return build_bundle(out, BuildSettings(precision=precision, calibration_size=16, **kw), root / "base",
                        root / "vq", root / "sc")


@pytest.mark.slow  # builds a best (fp16 + int8) bundle
def test_bundle_build_inspect_and_hash_check(tiny, tmp_path):
    out = _build(tiny, tmp_path / "tiny.plan", "best")
    doc = verify_bundle(out)
    assert doc.precision == "best" and doc.model_spec.grid == 4 and doc.sampling.steps == 6
    assert {k: v.precision for k, v in doc.components.items()} == {"base": "fp16", "shortcut": "int8",
                                                                    "decoder": "fp16"}
    assert sorted(p.name for p in out.iterdir()) == ["base.onnx", "calibration.npz", "decoder.onnx",
                                                     "manifest.json", "shortcut.onnx", "torch"]
    assert sorted(doc.checkpoints) == ["base", "shortcut", "vq"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    res = CliRunner().invoke(export_main, ["inspect", str(out)])
    assert res.exit_code == 0 and "shortcut" in res.output and "int8" in res.output
    # a modified artifact is caught by its hash, the torch checkpoints' too
    with open(out / "torch" / "base.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="torch/base.safetensors does not match its hash"):
        verify_bundle(out)
    with open(out / "decoder.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"decoder.onnx has \d+ bytes, the manifest says \d+ \(corrupt or modified"):
        verify_bundle(out)
    res = CliRunner().invoke(export_main, ["inspect", str(out)])
    assert res.exit_code != 0 and "corrupt or modified" in res.output and "Traceback" not in res.output


@pytest.mark.slow  # builds INT8 bundles
def test_rebuild_reuses_calibration_and_replaces_atomically(tiny, tmp_path):
    out = _build(tiny, tmp_path / "a.plan", "int8")
    first = np.load(out / "calibration.npz")["counts"]
    messages = []
    root = tiny[0]
    build_bundle(out, BuildSettings(precision="int8", calibration_size=16), root / "base", root / "vq", root / "sc",
                 progress=messages.append)
    assert "calibration: reusing the previous bundle's" in messages
    assert np.array_equal(np.load(out / "calibration.npz")["counts"], first)
    assert read_manifest(out).components["base"].precision == "fp32"


def test_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        read_manifest(tmp_path / "missing.plan")
    (tmp_path / "x.plan").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path / "x.plan")
    (tmp_path / "x.plan" / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path / "x.plan")
    (tmp_path / "x.plan" / "manifest.json").write_text(json.dumps({"format": "migm-bundle", "version": 99}))
    with pytest.raises(BundleError, match="version 99"):
        read_manifest(tmp_path / "x.plan")


@pytest.mark.parametrize("args,message", [
    (["--backend", "trt", "--trt-flavour", "tensorrt-rtx", "--compute-capability", "9.0", "--out", "t.plan"],
     "TensorRT for RTX"),
    (["--out", "noplan"], "NAME.plan"),
    (["--precision", "int8", "--no-shortcut", "--out", "n.plan"], "no shortcut checkpoint"),
])
def test_build_errors_leave_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(export_main, ["build", *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not list(tmp_path.iterdir())
