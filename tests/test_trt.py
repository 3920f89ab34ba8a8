"""TensorRT engines built for real: every component of the shipped models at every precision,
the network checked against the manifest, trt bundles (kept ONNX, hashes, rebuild), the INT8
graph TensorRT's parser takes, and one-line errors. TensorRT for RTX builds without a GPU, so
all of this runs on CI machines (`make install` adds it); running engines needs a GPU."""

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from migm import assets
from migm.cli.export import main as export_main
from migm.engines import build as build_mod
from migm.engines import refit, trt
from migm.engines.build import BuildSettings, build_bundle, convert_precision, rebuild_bundle
from migm.engines.bundle import BundleError, manifest_digest, verify_bundle
from migm.engines.manifest import TensorSpec
from migm.errors import BackendUnavailable, ConfigError
from migm.export.calibration import sample_calibration, shortcut_feeds
from migm.export.int8 import check_qdq, head_matmuls
from migm.export.onnx import components, export_component, fold_constants, io_spec
from migm.export.precision import component_precisions
from migm.families import family_of
from migm.models.checkpoint import BASE_KINDS, load_checkpoint, load_shortcut
from migm.runtime import Pipeline
from migm.sampling.config import SamplerConfig

pytestmark = pytest.mark.slow  # TensorRT engine builds

RTX = trt.RTX
needs_rtx = pytest.mark.skipif(trt.version(RTX) is None,
                               reason="TensorRT for RTX is not installed (`make install` adds it: "
                                      "pip install 'migm[trt-rtx]')")
# the distinct graphs the four bundle precisions use: best = fp16 base/decoder + int8 shortcut,
# int8 = fp32 base/decoder + int8 shortcut
GRAPHS = sorted({(c, p) for prec in ("fp32", "fp16", "int8", "best") for c, p in component_precisions(prec).items()})


def _profiles(comp, max_batch=8):
    out = {}
    for name, t in comp.inputs.items():
        lo, mid, hi = list(t.shape), list(t.shape), list(t.shape)
        for axis, axis_name in comp.dynamic.get(name, {}).items():
            lo[axis], mid[axis], hi[axis] = 1, (2 if axis_name == "batch" else 4), max_batch
        out[name] = (tuple(lo), tuple(mid), tuple(hi))
    return out


@pytest.fixture(scope="module", params=["tiny-animals", "tiny-scenes"])
def shipped_graphs(request, tmp_path_factory):
    """Every component of a shipped model exported once, and converted to each precision it is built in."""
    d = assets.model_dir(request.param)
    base = load_checkpoint(d / "base", kinds=BASE_KINDS)
    vq = load_checkpoint(d / "vq", kinds=("vqvae",))
    sc = load_shortcut(d / "shortcut", d / "base")
    fam = family_of(base)
    sampler = SamplerConfig.from_dict(base.meta.get("sampling"), default=fam.sampler)
    work = tmp_path_factory.mktemp(request.param)
    comps = {c.name: c for c in components(base, vq.decoder, sc)}
    graphs = {}
    for name, comp in comps.items():
        fp32 = export_component(comp, work / "fp32" / f"{name}.onnx")
        fold_constants(fp32)
        for c, prec in GRAPHS:
            if c == name:
                graphs[name, prec] = convert_precision(
                    fp32, prec, work, calibration=lambda: sample_calibration(base, sampler, 16, steps=8))
    return request.param, comps, graphs


@needs_rtx
@pytest.mark.parametrize("component,precision", GRAPHS)
def test_shipped_engine_builds(shipped_graphs, component, precision, tmp_path):
    model, comps, graphs = shipped_graphs
    graph = graphs[component, precision]
    inputs, outputs = ([TensorSpec(**t) for t in ts] for ts in io_spec(graph))
    engine = tmp_path / f"{component}.engine"
    said = []
    built = trt.build_engine(graph, engine, trt.BuildOptions(flavour=RTX, profiles=_profiles(comps[component])),
                             component=component, precision=precision, inputs=inputs, outputs=outputs,
                             progress=said.append)
    if hasattr(trt.import_flavour(RTX), "IProgressMonitor"):  # the build's phases, "Building engine 3/7"
        assert said and all(re.search(r" \d+/\d+$", m) for m in said), said
    data = engine.read_bytes()
    assert len(data) > 100_000, f"{model} {component} {precision}: {len(data)} bytes"
    assert built["compute_capabilities"] and "7.5" not in built["compute_capabilities"]
    validity, diagnostics = trt.engine_validity(RTX, data)
    assert "MALFORMED_ENGINE" not in diagnostics  # without a GPU: INVALID with no diagnostic
    if precision == "int8":
        assert check_qdq(onnx.load(str(graph))) > 0


@needs_rtx
def test_network_is_checked_against_the_manifest(shipped_graphs, tmp_path):
    _, comps, graphs = shipped_graphs
    graph = graphs["decoder", "fp32"]
    inputs, outputs = ([TensorSpec(**t) for t in ts] for ts in io_spec(graph))
    opts = trt.BuildOptions(flavour=RTX, profiles=_profiles(comps["decoder"]))
    wrong = [dataclasses.replace(inputs[0], dtype="int32")]
    with pytest.raises(BundleError, match=r"decoder \(fp32\) network's tokens is int64.*manifest's int32"):
        trt.build_engine(graph, tmp_path / "d.engine", opts, component="decoder", precision="fp32", inputs=wrong,
                         outputs=outputs)
    static = [dataclasses.replace(inputs[0], shape=[2, *inputs[0].shape[1:]])]  # the batch axis is dynamic there
    with pytest.raises(BundleError, match="manifest's int64"):
        trt.build_engine(graph, tmp_path / "d.engine", opts, component="decoder", precision="fp32", inputs=static,
                         outputs=outputs)
    with pytest.raises(BundleError, match="has outputs"):
        trt.build_engine(graph, tmp_path / "d.engine", opts, component="decoder", precision="fp32", inputs=inputs,
                         outputs=[dataclasses.replace(outputs[0], name="pixels")])
    assert not list(tmp_path.iterdir())


def _int32_bias_int8(src, dst, calibration):
    """The INT8 graph as migm quantized it before: ONNX Runtime's default QuantizeBias (INT32 bias Q/DQ)."""
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(shortcut_feeds(calibration))

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=head_matmuls(onnx.load(str(src))), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return dst


@pytest.fixture(scope="module")
def tiny_shortcut(tiny, tmp_path_factory):
    root, base, vq, sc = tiny
    comp = [c for c in components(base, vq.decoder, sc) if c.name == "shortcut"][0]
    path = export_component(comp, tmp_path_factory.mktemp("sc") / "shortcut.onnx")
    return comp, path, sample_calibration(base, SamplerConfig(guidance=2.0), count=16, steps=6)


@needs_rtx
def test_int32_bias_qdq_is_what_tensorrt_refused(tiny_shortcut, tmp_path):
    """The old INT8 graph: check_qdq names its INT32 bias DequantizeLinear, and TensorRT's parser
    fails on exactly that node; the error names component, node and precision, and no engine is left."""
    comp, src, calib = tiny_shortcut
    legacy = _int32_bias_int8(src, tmp_path / "legacy.onnx", calib)
    with pytest.raises(BundleError, match=r"DequantizeLinear node \S+bias_DequantizeLinear quantizes to INT32"):
        check_qdq(onnx.load(str(legacy)))
    inputs, outputs = ([TensorSpec(**t) for t in ts] for ts in io_spec(legacy))
    with pytest.raises(BundleError) as err:
        trt.build_engine(legacy, tmp_path / "sc.engine", trt.BuildOptions(flavour=RTX, profiles=_profiles(comp)),
                         component="shortcut", precision="int8", inputs=inputs, outputs=outputs)
    msg = str(err.value)
    assert "could not parse the shortcut graph (int8)" in msg and "bias_DequantizeLinear (DequantizeLinear)" in msg
    assert "Int32" in msg and "\n" not in msg
    assert not (tmp_path / "sc.engine").exists()


def test_int8_graph_has_only_qdq_tensorrt_takes(tiny_shortcut, tmp_path):
    comp, src, calib = tiny_shortcut
    q = convert_precision(src, "int8", tmp_path, calibration=lambda: calib)
    model = onnx.load(str(q))
    assert check_qdq(model) > 0
    # no bias went through Q/DQ: every DequantizeLinear reads an INT8 weight or a quantized activation
    inits = {i.name: i.data_type for i in model.graph.initializer}
    dq_inputs = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert all(inits.get(i, onnx.TensorProto.INT8) == onnx.TensorProto.INT8 for i in dq_inputs)


def _trt_build(tiny, out, precision="best", **kw):
    root = tiny[0]
    return build_bundle(out, BuildSettings(precision=precision, backend="trt", calibration_size=16, max_batch=8,
                                           opt_batch=2, **kw), root / "base", root / "vq", root / "sc")


@pytest.fixture(scope="module")
def trt_bundle(tiny, tmp_path_factory):
    if trt.version(RTX) is None:
        pytest.skip("TensorRT for RTX is not installed")
    return _trt_build(tiny, tmp_path_factory.mktemp("trt") / "tiny.plan", trt_flavour=RTX)


@needs_rtx
def test_trt_bundle_keeps_onnx_and_hashes_engines(trt_bundle):
    doc = verify_bundle(trt_bundle)
    assert doc.backend == "trt"
    assert doc.trt.flavour == RTX and doc.trt.version == trt.version(RTX)
    assert doc.trt.compute_capabilities == [c for c in trt.rtx_capabilities(trt.import_flavour(RTX)) if c != "7.5"]
    names = sorted(str(p.relative_to(trt_bundle)) for p in trt_bundle.rglob("*") if p.is_file())
    assert [n for n in names if not n.startswith("torch/")] == [
        "base.engine", "calibration.npz", "decoder.engine", "manifest.json", "onnx/base.onnx", "onnx/decoder.onnx",
        "onnx/shortcut.onnx", "shortcut.engine"]
    for name, e in doc.components.items():
        assert e.file == f"{name}.engine" and e.bytes > 0 and e.onnx.file == f"onnx/{name}.onnx"
        assert e.build_seconds > 0 and e.profile
        # the manifest's I/O is the graph's
        assert [vars(t) for t in e.inputs] == io_spec(trt_bundle / e.onnx.file)[0]
    assert doc.components["shortcut"].precision == "int8"
    res = CliRunner().invoke(export_main, ["inspect", str(trt_bundle)])
    assert res.exit_code == 0 and "TensorRT for RTX" in res.output and "compute capabilities 8.0" in res.output


@needs_rtx
def test_rebuild_makes_new_engines_and_fails_cleanly(trt_bundle, tmp_path):
    import shutil

    plan = tmp_path / "r.plan"
    shutil.copytree(trt_bundle, plan)
    before = verify_bundle(plan)
    res = CliRunner().invoke(export_main, ["rebuild", str(plan), "--compute-capability", "8.6,8.9"])
    assert res.exit_code == 0, res.output
    doc = verify_bundle(plan)
    assert doc.trt.compute_capabilities == ["8.6", "8.9"]
    for name, e in doc.components.items():  # same graphs, new engines (another target set)
        assert e.onnx.sha256 == before.components[name].onnx.sha256
        assert e.sha256 != before.components[name].sha256
    assert doc.calibration == before.calibration and doc.checkpoints == before.checkpoints
    manifest = (plan / "manifest.json").read_text()
    for args, message in ((["--compute-capability", "9.0"], "cannot target compute capability 9.0"),
                          (["--compute-capability", "9"], "expected compute capabilities like 8.6,8.9"),
                          (["--timing-cache", str(tmp_path / "t.cache")], "neither --hardware-compat nor")):
        res = CliRunner().invoke(export_main, ["rebuild", str(plan), *args])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
        assert (plan / "manifest.json").read_text() == manifest  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.plan"]


def test_rebuild_refuses_an_ort_bundle(tiny, tmp_path):
    root = tiny[0]
    out = build_bundle(tmp_path / "o.plan", BuildSettings(precision="fp32"), root / "base", root / "vq")
    with pytest.raises(BundleError, match="no engines to rebuild"):
        rebuild_bundle(out)


@needs_rtx
def test_trt_build_failure_is_one_line_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    """A graph TensorRT cannot parse (here: the old INT32-bias INT8 shortcut): `migm-export build`
    exits non-zero with one line naming component, node and precision, and writes nothing."""
    def old_quantizer(src, dst, calibration):
        dst.parent.mkdir(parents=True, exist_ok=True)
        return _int32_bias_int8(src, dst, calibration)

    monkeypatch.setattr(build_mod, "quantize_int8", old_quantizer)
    monkeypatch.chdir(tmp_path)
    root = tiny[0]
    res = CliRunner().invoke(export_main, ["build", "--backend", "trt", "--trt-flavour", RTX, "--precision", "int8",
                                           "--base", str(root / "base"), "--vq", str(root / "vq"), "--shortcut",
                                           str(root / "sc"), "--calibration-size", "8", "--out", "bad.plan"])
    assert res.exit_code == 1
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in res.output
    assert "shortcut graph (int8)" in error[0] and "node " in error[0] and "bias_DequantizeLinear" in error[0]
    assert not list(tmp_path.iterdir())


def test_flavour_choice_and_settings():
    with pytest.raises(ConfigError, match="unknown TensorRT flavour"):
        trt.choose_flavour("tensorrt-llm")
    if trt.version("tensorrt") is None or not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            trt.choose_flavour("tensorrt")
    with pytest.raises(ConfigError, match="--compute-capability is for --trt-flavour tensorrt-rtx"):
        trt.targets(trt.BuildOptions(flavour="tensorrt", compute_capabilities=("8.6",)))
    with pytest.raises(ConfigError, match="neither --hardware-compat nor --timing-cache"):
        trt.targets(trt.BuildOptions(flavour=RTX, hardware_compat="ampere_plus"))


@needs_rtx
def test_engine_problem_names_what_does_not_fit(trt_bundle):
    doc = verify_bundle(trt_bundle)
    engines = [trt_bundle / e.file for e in doc.components.values()]
    if not torch.cuda.is_available():
        assert trt.engine_problem(doc.trt, engines) is None  # nothing to say until there is a GPU
    old = dataclasses.replace(doc.trt, version="1.6.0.0")
    assert "built with TensorRT for RTX 1.6.0.0" in trt.engine_problem(old, engines)
    if trt.version("tensorrt") is None:
        other = dataclasses.replace(doc.trt, flavour="tensorrt", version="10.13.0")
        assert "TensorRT 10.13.0, which is not installed here" in trt.engine_problem(other, engines)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="TensorRT for RTX engines on a CUDA GPU"):
            Pipeline.from_bundle(trt_bundle, backend="auto")


@needs_rtx
def test_first_load_rebuilds_stale_engines(trt_bundle, tmp_path, monkeypatch):
    """On a GPU an engine built by another release is refused by the runtime and rebuilt by the CLI's
    refit (said on screen); a GPU TensorRT for RTX cannot build for is refused with how to get
    engines for it. The GPU facts are
    faked here: what is tested is the decision, and that the rebuild really happens."""
    import shutil

    plan = tmp_path / "s.plan"
    shutil.copytree(trt_bundle, plan)
    doc = json.loads((plan / "manifest.json").read_text())
    doc["trt"]["version"] = "1.6.0.0"
    doc["digest"] = manifest_digest(doc)  # as an older release would have written it
    (plan / "manifest.json").write_text(json.dumps(doc))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trt, "gpu_capability", lambda index=0: "8.6")
    monkeypatch.setattr(trt, "version", lambda f="tensorrt": trt.import_flavour(RTX).__version__ if f == RTX else None)
    monkeypatch.setattr(trt, "engine_validity", lambda flavour, data: ("VALID", []))
    with pytest.raises(BundleError, match=r"cannot run here: .*1\.6\.0\.0.*migm-export rebuild"):
        Pipeline.from_bundle(plan, backend="trt")  # loading never builds: it names the command
    said = []
    new = refit.fit_engines(plan, "cuda", said.append)  # what migm-run calls first
    assert new.trt.version == trt.import_flavour(RTX).__version__
    assert any("rebuilding its engines" in m and "1.6.0.0" in m for m in said)
    assert verify_bundle(plan).trt.version == new.trt.version
    # a Hopper GPU (9.0): not among TensorRT for RTX's targets, and its own check says so
    monkeypatch.setattr(trt, "gpu_capability", lambda index=0: "9.0")
    monkeypatch.setattr(trt, "engine_validity", lambda flavour, data: ("INVALID", ["UNSUPPORTED_CC"]))
    with pytest.raises(BackendUnavailable, match=r"UNSUPPORTED_CC.*cannot build for this GPU \(compute capability "
                                                 r"9\.0\).*migm\[trt\]"):
        refit.fit_engines(plan, "cuda", said.append)


gpu_trt = pytest.mark.skipif(not torch.cuda.is_available() or not (trt.version(RTX) or trt.version("tensorrt")),
                             reason="needs a CUDA GPU and TensorRT (either flavour): none on CI machines")


@pytest.mark.gpu
@gpu_trt
def test_trt_pipeline_matches_torch_on_gpu(tiny, tmp_path):
    """fp32 engines on the GPU give the torch backend's tokens (>= 99%) for the same seed."""
    out = _trt_build(tiny, tmp_path / "g.plan", precision="fp32")
    pipe = Pipeline.from_bundle(out, backend="trt")
    ref = Pipeline.from_bundle(out, backend="torch")
    ref.use_graphs = False  # the same random stream as the trt loop (no whole-loop graph)
    kw = dict(steps=6, budget=3, seed=3, batch_size=4)
    a, b = pipe.generate_tokens([0, 1, 2] * 3, **kw), ref.generate_tokens([0, 1, 2] * 3, **kw)
    assert (a == b).float().mean() >= 0.99
    images = pipe.decode(a)
    assert images.shape == (9, 1, 8, 8) and np.isfinite(images.numpy()).all()


@needs_rtx
def test_gpu_benchmark_dry_run(tmp_path):
    """benchmarks/trt_gpu.py --dry-run: real builds and manifest checks, the torch side of the comparison,
    the GPU rows planned, every table written; its arguments checked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "trt_gpu.py"
    spec = importlib.util.spec_from_file_location("trt_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit):
        bench.parse_args(["--dry-run", "--models", "tiny-cats"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.parse_args([])  # a GPU run without a GPU
    out = tmp_path / "out"
    bench.main(["--dry-run", "--models", "tiny-animals", "--precisions", "fp32", "--dry-num", "2", "--flavours",
                RTX, "--out", str(out), "--work", str(tmp_path / "work")])
    build = json.loads((out / "build.json").read_text())
    assert [(r["component"], r["result"]) for r in build] == [("base", "builds"), ("shortcut", "builds"),
                                                              ("decoder", "builds")]
    assert all(r["engine_mb"] > 0 and r["build_s"] > 0 and r["flavour"] == RTX for r in build)
    agree = json.loads((out / "agree.json").read_text())
    assert len(agree) == 1 and agree[0]["result"].startswith("not run: no GPU") and agree[0]["num"] == 2
    speed = json.loads((out / "speed.json").read_text())
    assert {(r["backend"], r["precision"]) for r in speed} == {("trt", "fp32"), ("torch", "fp32")}
    table = (out / "build.md").read_text()
    assert "| tiny-animals | fp32 | shortcut | fp32 | tensorrt-rtx | builds |" in table and "dry run" in table
