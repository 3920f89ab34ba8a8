"""The runtime: backends over bundles, the step loop, `Pipeline.from_bundle`, `migm-run --engine`."""

import copy
import json
import shutil
import threading

import pytest
import torch
from click.testing import CliRunner

from migm.cli.bench import main as bench_main
from migm.cli.run import main as run_main
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import BundleError, manifest_digest
from migm.evaluation.plain_loop import plain_generate
from migm.families.presets import random_models
from migm.runtime import Pipeline
from migm.runtime.backends import Capabilities
from migm.sampling.config import SamplerConfig
from migm.sampling.loop import Fns, generate_tokens

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI machines)")


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    root = tiny[0]
    out = tmp_path_factory.mktemp("rt") / "tiny.plan"
    return build_bundle(out, BuildSettings(precision="fp32", backend="ort"), root / "base", root / "vq", root / "sc")


@pytest.mark.parametrize("strategy,budget", [("vanilla", None), ("shortcut", 3), ("reuse", 3), ("extrapolate", 3)])
def test_ort_matches_torch_on_fp32_bundle(bundle, strategy, budget):
    ort = Pipeline.from_bundle(bundle, backend="ort")
    ref = Pipeline.from_bundle(bundle, backend="torch", device="cpu")  # the same (CPU) random stream
    assert ort.backend.name == "ort" and ref.backend.name == "torch" and ref.backend.precision == "fp32"
    kw = dict(steps=6, budget=budget, strategy=strategy, seed=3, batch_size=5)
    a = ort.generate_tokens([0, 1, 2] * 4, **kw)
    b = ref.generate_tokens([0, 1, 2] * 4, **kw)
    assert (a == b).float().mean() >= 0.99
    images = ort.decode(a)
    assert images.shape == (12, 1, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_runtime_equals_training_time_sampler(tiny, bundle):
    """The pipeline's torch backend gives exactly the sampling loop's tokens for the same seed."""
    _, base, _, sc = tiny
    pipe = Pipeline.from_bundle(bundle, backend="torch")
    got = pipe.generate_tokens([2, 0, 1], steps=6, budget=2, seed=7)  # budget < N: the shortcut by default
    head = base.head
    models = Fns(lambda t, lab: base(t, lab), head, lambda f, p, t, k, r, c: (sc(f, p, t, k, r), None))
    ref = generate_tokens(models, torch.tensor([2, 0, 1]), torch.tensor([3]), SamplerConfig(steps=6, guidance=2.0),
                          num_tokens=16, mask_id=16, budget=2, strategy="shortcut",
                          generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, ref)


def test_ort_buffers_are_allocated_once_per_shape(bundle):
    be = Pipeline.from_bundle(bundle, backend="ort").backend
    tokens, labels = torch.full((2, 16), 16), torch.tensor([0, 3])
    ptrs = [be.base(tokens, labels)[0].data_ptr() for _ in range(4)]
    assert ptrs[0] == ptrs[2] and ptrs[1] == ptrs[3] and ptrs[0] != ptrs[1]  # two sets, alternating
    f, _ = be.base(tokens, labels)
    ref = Pipeline.from_bundle(bundle, backend="torch").backend.base(tokens, labels)[0]
    assert torch.allclose(f, ref, atol=1e-5)


def test_pipeline_is_thread_safe(bundle):
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    want = {s: pipe.generate_tokens([0, 1, 2], steps=6, budget=3, seed=s) for s in range(4)}
    got = {}

    def work(s):
        got[s] = pipe.generate_tokens([0, 1, 2], steps=6, budget=3, seed=s)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[s], want[s]) for s in range(4))


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_per_row_seeds_make_each_image_independent_of_its_batch(bundle, backend):
    """One seed per condition: a row's tokens are those of the same condition and seed run alone,
    whatever it is batched with, wherever it sits and however the call is chunked (serving)."""
    pipe = Pipeline.from_bundle(bundle, backend=backend)
    classes, seeds = [0, 1, 2, 0, 2], [11, 12, 13, 14, 11]
    kw = dict(steps=6, budget=3)  # guided (the tiny model's w = 2): both CFG branches per row
    alone = torch.cat([pipe.generate_tokens([c], seed=[s], **kw) for c, s in zip(classes, seeds)])
    batched = pipe.generate_tokens(classes, seed=seeds, batch_size=4, **kw)
    reversed_ = pipe.generate_tokens(classes[::-1], seed=seeds[::-1], batch_size=2, **kw).flip(0)
    assert torch.equal(batched, alone) and torch.equal(reversed_, alone)
    assert torch.equal(alone[:1], pipe.generate_tokens([0], seed=11, **kw))  # one row: the same as a plain seed
    assert not torch.equal(alone[0], alone[3])  # same class, other seed
    with pytest.raises(ValueError, match="2 seeds for 3 conditions"):
        pipe.generate_tokens([0, 1, 2], seed=[1, 2], **kw)


def test_pipeline_errors(bundle, tmp_path):
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    with pytest.raises(ValueError, match="budget B=9 must be between 1 and the number of steps N=6"):
        pipe.generate_tokens([0], steps=6, budget=9)
    with pytest.raises(ValueError, match="out of range"):
        pipe.generate_tokens([3])
    with pytest.raises(ValueError, match="mlcache strategy needs the torch backend"):
        pipe.generate_tokens([0], steps=6, budget=3, strategy="mlcache")
    pipe.backend.caps = Capabilities(shortcut=True, max_rows=4)  # what a TensorRT bundle's profile sets
    with pytest.raises(ValueError, match="needs 6 rows with guidance, but the engines' profile allows at most 4"):
        pipe.generate_tokens([0, 1, 2], batch_size=8)
    assert pipe.generate_tokens([0, 1, 2], batch_size=2).shape == (3, 16)
    with pytest.raises(ValueError, match="unknown backend"):
        Pipeline.from_bundle(bundle, backend="tpu")
    with pytest.raises(BundleError, match="not TensorRT engines"):
        Pipeline.from_bundle(bundle, backend="trt")
    broken = shutil.copytree(bundle, tmp_path / "broken.plan")
    (broken / "torch" / "vq.json").write_text("{}")
    with pytest.raises(BundleError, match="torch/vq.json does not match its hash"):
        Pipeline.from_bundle(broken, backend="ort")
    doc = json.loads((bundle / "manifest.json").read_text())
    del doc["checkpoints"]["shortcut"]
    (tmp_path / "noshort.plan").mkdir()
    for f in ("base.onnx", "decoder.onnx", "manifest.json"):
        shutil.copy(bundle / f, tmp_path / "noshort.plan" / f)
    shutil.copytree(bundle / "torch", tmp_path / "noshort.plan" / "torch")
    del doc["components"]["shortcut"]
    doc["digest"] = manifest_digest(doc)  # an edit the digest would catch: made as a build would
    (tmp_path / "noshort.plan" / "manifest.json").write_text(json.dumps(doc))
    plain = Pipeline.from_bundle(tmp_path / "noshort.plan", backend="ort")
    with pytest.raises(ValueError, match="needs a shortcut model"):
        plain.generate_tokens([0], steps=6, budget=3)
    assert plain.generate_tokens([0], steps=6, budget=3, strategy="reuse").shape == (1, 16)


def test_migm_run_engine(bundle, tmp_path):
    out = tmp_path / "imgs"
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--num", "8", "--steps", "6", "--budget", "3",
                                        "--seed", "0", "--backend", "ort", "--out", str(out)])
    assert res.exit_code == 0, res.output
    out = out / "run-0001"
    assert (out / "grid.png").exists() and len(list(out.glob("0*.png"))) == 8
    assert "images/s" in res.output and "ort backend" in res.output


@pytest.mark.parametrize("args,message", [
    (["--budget", "7", "--steps", "6"], "budget B=7 must be between 1"),
    (["--budget", "0"], "0 is not in the range 1<=x<=4096"),
    (["--classes", "9"], "out of range"),
    (["--backend", "trt"], "not TensorRT engines"),
])
def test_migm_run_errors(bundle, tmp_path, args, message):
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_migm_run_missing_engine(tmp_path):
    res = CliRunner().invoke(run_main, ["--engine", str(tmp_path / "none.plan"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not a bundle directory" in res.output


def test_plain_loop_reveals_everything(tiny):
    _, base, _, sc = tiny
    g = torch.Generator().manual_seed(0)
    for budget, shortcut in ((None, None), (2, sc)):
        codes = plain_generate(base, torch.tensor([0, 2]), SamplerConfig(steps=6, guidance=2.0), budget=budget,
                               shortcut=shortcut, generator=g)
        assert codes.shape == (2, 16) and (codes < 16).all()


@pytest.mark.parametrize("strategy,expected_steps", [("vanilla", 6), ("reuse", 6), ("fewer", 2)])
def test_progress_counts_the_steps_the_loop_runs(tiny, strategy, expected_steps):
    _, base, vq, sc = tiny
    pipe = Pipeline.from_models(base, vq, sc, precision="fp32")
    seen = []
    pipe.generate_tokens([0, 1, 2], steps=6, budget=2, strategy=strategy, batch_size=2,
                         progress=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (3 * expected_steps, 3 * expected_steps)
    assert all(b >= a for (a, _), (b, _) in zip(seen, seen[1:])) and all(i <= n for i, n in seen)


def test_random_preset_models():
    base, vq, sc = random_models("tiny-animals")
    assert base.cfg.width == sc.cfg.width and sc.proj_out.weight.abs().sum() > 0
    assert vq.cfg.grid == base.cfg.grid


@pytest.mark.slow  # a benchmark
def test_bench_speed_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "speed.json"
    res = CliRunner().invoke(bench_main, ["speed", "--preset", "tiny-animals", "--backend", "torch", "--batch", "1,2",
                                          "--steps", "4", "--budget", "2", "--repeats", "1", "--warmup", "0",
                                          "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    keys = {"preset", "backend", "device", "batch", "strategy", "steps", "budget", "images_per_s", "ideal_speedup",
            "speedup"}
    assert all(keys <= set(r) for r in rows)
    assert {r["strategy"] for r in rows} == {"vanilla", "shortcut", "reuse", "extrapolate", "fewer",
                                             "plain-vanilla", "plain-shortcut"}
    sc = next(r for r in rows if r["strategy"] == "shortcut" and r["batch"] == 2)
    assert sc["ideal_speedup"] == pytest.approx(4 / (2 + 2 * sc["c"]))
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()


@pytest.mark.gpu
@gpu
def test_cuda_graph_loop_equals_eager(tiny):
    base, vq, sc = (copy.deepcopy(m) for m in tiny[1:])  # the backend moves its modules in place
    pipe = Pipeline.from_models(base, vq, sc, device="cuda", precision="fp32")
    kw = dict(steps=6, budget=3, seed=5)
    graphed = pipe.generate_tokens([0, 1, 2], **kw)
    again = pipe.generate_tokens([0, 1, 2], **kw)  # a replay
    pipe.use_graphs = False
    eager = pipe.generate_tokens([0, 1, 2], **kw)
    assert torch.equal(graphed, again) and torch.equal(graphed, eager)


@pytest.mark.gpu
@gpu
def test_cuda_graph_loop_with_per_row_seeds(tiny):
    """Per-row seeds in whole-loop graphs: replays reseed the same row generators, rows stay independent."""
    base, vq, sc = (copy.deepcopy(m) for m in tiny[1:])
    pipe = Pipeline.from_models(base, vq, sc, device="cuda", precision="fp32")
    kw = dict(steps=6, budget=3)
    graphed = pipe.generate_tokens([0, 1, 2, 1], seed=[5, 6, 7, 8], batch_size=2, **kw)
    swapped = pipe.generate_tokens([1, 2, 1, 0], seed=[6, 7, 8, 5], batch_size=2, **kw)  # replays, other seeds
    pipe.use_graphs = False
    eager = pipe.generate_tokens([0, 1, 2, 1], seed=[5, 6, 7, 8], batch_size=2, **kw)
    assert torch.equal(graphed, eager) and torch.equal(swapped, graphed[[1, 2, 3, 0]])
