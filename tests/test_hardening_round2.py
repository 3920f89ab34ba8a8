"""`migm-generate` trusts nothing it did not verify, bundles copy only the tokenizer's own regular
files, and a killed `migm-run` leaves a folder the next run recognises (SECURITY.md)."""

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from migm import assets
from migm.cli.export import main as export_main
from migm.cli.generate import main as generate_main
from migm.cli.run import main as run_main
from migm.errors import CheckpointError
from migm.fileio import sha256_file
from migm.models.text import load_tokenizer
from migm.runtime.images import ImageFolder

ARGS = ["--model", "tiny-animals", "--classes", "cat,dog", "--seeds", "0-3", "--steps", "2", "--shard-size", "4",
        "--batch-size", "4"]


def _one_line_error(res, *needles):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    assert lines and lines[-1].startswith("Error:"), res.output
    for n in needles:
        assert n in res.output, res.output


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _gen(*args):
    return CliRunner().invoke(generate_main, [*ARGS, *args])


def test_generate_refuses_a_folder_of_the_users(tmp_path):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "manifest.jsonl").write_text("my notes\n")
    (out / "images" / "000000-cat-s0.png").write_bytes(b"my photo")
    before = _files(out)
    res = _gen("--out", str(out))
    _one_line_error(res, "holds files migm-generate did not write")
    assert _files(out) == before


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    res = _gen("--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def _resume(done, tmp_path, change):
    out = tmp_path / "run"
    shutil.copytree(done, out)
    first = _files(out)
    change(out)
    res = _gen("--out", str(out))
    return out, first, res


def _rewrite_line(out, k, edit):
    f = out / "shards" / f"{k:05d}.jsonl"
    lines = [json.loads(s) for s in f.read_text().splitlines()]
    edit(lines)
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize("case,said", [
    ("path-escape", "names 'images/../../../../etc/passwd', not its image"),
    ("deleted-image", "the image of row 1 is missing"),
    ("changed-image", "does not match its recorded sha256"),
    ("empty-shard", "it lists 0 rows; the job gives it 4"),
    ("not-json", "is not valid JSON"),
    ("other-rows", "its lines do not match rows 0..3"),
])
def test_generate_remakes_shards_that_do_not_verify(done, tmp_path, case, said):
    def change(out):
        if case == "path-escape":
            _rewrite_line(out, 0, lambda ls: ls[0].__setitem__("file", "images/../../../../etc/passwd"))
        elif case == "deleted-image":
            (out / "images" / "000001-cat-s1.png").unlink()
        elif case == "changed-image":
            (out / "images" / "000001-cat-s1.png").write_bytes(b"not the image")
        elif case == "empty-shard":
            (out / "shards" / "00000.jsonl").write_text("")
        elif case == "not-json":
            (out / "shards" / "00000.jsonl").write_text("{not json\n")
        else:
            _rewrite_line(out, 0, lambda ls: ls[0].__setitem__("seed", 99))
        (out / "manifest.jsonl").unlink()

    out, first, res = _resume(done, tmp_path, change)
    assert res.exit_code == 0, res.output
    assert "shard 0: " in res.output and said in res.output and "it is made again" in res.output
    assert _files(out) == first  # remade to the same bytes; the manifest names only its own images
    lines = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(sha256_file(out / x["file"]) == x["sha256"] for x in lines)


def test_generate_job_file_and_seed_errors(done, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done, out)
    doc = json.loads((out / "job.json").read_text())
    del doc["conditions"]
    (out / "job.json").write_text(json.dumps(doc))
    _one_line_error(_gen("--out", str(out)), "does not hold a migm-generate job", "lists no conditions")
    t = time.monotonic()
    res = CliRunner().invoke(generate_main, ["--model", "tiny-animals", "--classes", "cat", "--seeds",
                                             "0-10000000000", "--out", str(tmp_path / "s")])
    _one_line_error(res, "10000000001 seeds is over 100000")
    assert time.monotonic() - t < 10 and not (tmp_path / "s").exists()
    res = CliRunner().invoke(generate_main, ["--model", "tiny-animals", "--classes", "cat", "--batch-size", "4096",
                                             "--out", str(tmp_path / "b")])
    _one_line_error(res, "4096 is not in the range 1<=x<=1024")


def test_generate_checks_settings_before_making_out(tmp_path):
    res = CliRunner().invoke(generate_main, ["--model", "tiny-animals", "--classes", "cat", "--steps", "256",
                                             "--out", str(tmp_path / "o")])
    _one_line_error(res, "steps")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # builds a bundle of the shipped tiny-scenes model
def test_bundle_takes_only_the_tokenizer_files_of_the_format(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("base.json", "base.safetensors", "vq.json", "vq.safetensors"):
        shutil.copy(assets.SCENES / name, src / name)
    shutil.copytree(assets.SCENES / "base.tokenizer", src / "base.tokenizer")
    secret = tmp_path / "private.txt"
    secret.write_text("a private file outside the folder")
    (src / "base.tokenizer" / "notes.json").symlink_to(secret)  # not a tokenizer file: never read
    (src / "base.tokenizer" / "vocab.json").symlink_to("/dev/zero")  # a tokenizer name, but a link: refused
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_tokenizer(src / "base.tokenizer")
    (src / "base.tokenizer" / "vocab.json").unlink()
    res = CliRunner().invoke(export_main, ["build", "--base", str(src / "base"), "--vq", str(src / "vq"),
                                           "--no-shortcut", "--precision", "fp32", "--out", str(tmp_path / "s.plan")])
    assert res.exit_code == 0, res.output
    plan = tmp_path / "s.plan"
    assert sorted(p.name for p in (plan / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert b"private" not in b"".join(p.read_bytes() for p in plan.rglob("*") if p.is_file())


def test_a_killed_run_leaves_a_folder_the_next_run_recognises(tiny, tmp_path):
    out = tmp_path / "o"
    folder = ImageFolder(out).open()  # killed right after the first image
    (folder.path / "0000_0.png").write_bytes(b"half a run")
    # the marker is there before any image: the folder says it is migm-run's, with no finished list
    assert json.loads((folder.path / ".migm-run.json").read_text())["files"] == []
    res = CliRunner().invoke(run_main, ["--model", "tiny-animals", "--num", "2", "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    nxt = out / "run-0002"  # the next run takes the next folder and leaves the killed one as it was
    assert (nxt / "grid.png").exists() and len(json.loads((nxt / ".migm-run.json").read_text())["files"]) == 3
    assert (folder.path / "0000_0.png").read_bytes() == b"half a run"


# ---- bundles: declared shapes cross-checked at load ----

@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    from migm.engines.build import BuildSettings, build_bundle

    root = tiny[0]
    return build_bundle(tmp_path_factory.mktemp("io") / "t.plan", BuildSettings(precision="fp32", backend="ort"),
                        root / "base", root / "vq")


def _edit(plan, change):
    from migm.engines.bundle import manifest_digest

    doc = json.loads((plan / "manifest.json").read_text())
    change(doc)
    doc["digest"] = manifest_digest(doc)
    (plan / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.slow  # the bundle fixture exports ONNX (shared by these 5 tests only)
def test_a_graph_swapped_for_another_is_refused_at_load(bundle, tmp_path):
    from migm.errors import BundleError
    from migm.runtime import Pipeline

    plan = Path(shutil.copytree(bundle, tmp_path / "x.plan"))

    def swap(d):
        base, dec = d["components"]["base"], d["components"]["decoder"]
        base.update(file=dec["file"], sha256=dec["sha256"], bytes=dec["bytes"])

    _edit(plan, swap)
    with pytest.raises(BundleError, match="the graph of component base has inputs \\['tokens'\\]"):
        Pipeline.from_bundle(plan, backend="ort")


@pytest.mark.slow  # the bundle fixture
@pytest.mark.parametrize("change,message", [
    (lambda d: d["components"]["base"]["outputs"][1].__setitem__("shape", ["batch", 16, 99]), "logits is"),
    (lambda d: d.__setitem__("sampling", []), "sampling settings must be a JSON object"),
    (lambda d: d.__setitem__("sampling", "ab"), "sampling settings must be a JSON object"),
])
def test_manifest_fields_that_disagree_are_refused(bundle, tmp_path, change, message):
    from migm.engines.bundle import verify_bundle
    from migm.errors import BundleError

    plan = Path(shutil.copytree(bundle, tmp_path / "x.plan"))
    _edit(plan, change)
    with pytest.raises(BundleError, match=message):
        verify_bundle(plan)


@pytest.mark.slow  # the bundle fixture
def test_codebook_size_that_disagrees_with_the_graphs(bundle, tmp_path):
    from migm.engines.bundle import verify_bundle
    from migm.errors import BundleError
    from migm.families import family

    plan = Path(shutil.copytree(bundle, tmp_path / "x.plan"))

    def bigger(d):
        d["config"]["base"]["codebook_size"] *= 2
        d["config"]["vq"]["codebook_size"] *= 2
        d["spec"] = family(d["family"]).spec_from_config(d["config"]["base"]).to_dict()

    _edit(plan, bigger)
    with pytest.raises(BundleError, match="codebook_size, num_tokens, width or grid disagree with the graphs"):
        verify_bundle(plan)


@pytest.mark.parametrize("meta,message", [
    ({"class_names": "abc"}, "meta.class_names must be a list"),
    ({"class_names": ["a"]}, "meta.class_names has 1 names for 3 classes"),
    ({"sampling": "ab"}, "meta.sampling must be a JSON object"),
])
def test_checkpoint_meta_is_checked_at_load(tiny, tmp_path, meta, message):
    from migm.models.checkpoint import load_checkpoint

    root = tiny[0]
    shutil.copy(root / "base.safetensors", tmp_path / "b.safetensors")
    doc = json.loads((root / "base.json").read_text())
    doc["meta"] = {**doc.get("meta", {}), **meta}
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "b")


# ---- one Error line where the input is the user's to fix ----

def test_trajectory_sets_that_are_damaged(tmp_path):
    from migm.errors import DataError
    from migm.models.maskgit import MaskGIT, MaskGITConfig
    from migm.sampling.config import SamplerConfig
    from migm.training.trajectories import TrajectorySet, collect_trajectories

    base = MaskGIT(MaskGITConfig(codebook_size=16, num_classes=3, grid=4, width=32, depth=1, heads=2, mlp=64)).eval()
    collect_trajectories(base, tmp_path / "t", SamplerConfig(steps=4, guidance=2.0), torch.arange(3), 4, seed=0,
                         shard_size=2, base_digest="abc")
    mf = tmp_path / "t" / "manifest.json"
    doc = json.loads(mf.read_text())
    features = sorted((tmp_path / "t").glob("features-*.npy"))[0]
    features.write_bytes(features.read_bytes()[: features.stat().st_size // 2])  # truncated
    with pytest.raises(DataError, match="truncated or not numpy arrays"):
        TrajectorySet(tmp_path / "t")
    mf.write_text(json.dumps({k: v for k, v in doc.items() if k != "shards"}))
    with pytest.raises(DataError, match="lists no shards"):
        TrajectorySet(tmp_path / "t")


def test_bench_inputs(tmp_path):
    from migm.cli.bench import main as bench_main

    res = CliRunner().invoke(bench_main, ["speed", "--batch", "0", "--json", str(tmp_path / "s.json")])
    _one_line_error(res, "batch sizes must be in 1..4096")
    (tmp_path / "garbage.json").write_text('{"not": "rows"}')
    res = CliRunner().invoke(bench_main, ["plot", str(tmp_path / "garbage.json")])
    _one_line_error(res, "does not hold `migm-bench speed` rows")
    (tmp_path / "q.json").write_text("[1, 2, {oops")
    res = CliRunner().invoke(bench_main, ["quality", "--resume", "--json", str(tmp_path / "q.json")])
    _one_line_error(res, "is not valid JSON")


# ---- smaller ones ----

def test_row_errors_quote_at_most_200_characters_of_input():
    from migm.runtime import Pipeline
    from migm.serving.rows import read_row

    pipe = Pipeline.from_checkpoints(model="tiny-animals")
    row = read_row(pipe, "x" * (1 << 20), 0)
    assert row.error.startswith("unknown class 'xxx") and len(row.error) < 500 and "1048576 characters" in row.error


def test_served_model_counts_what_the_drain_cut():
    import numpy as np

    from migm.runtime import Pipeline
    from migm.serving.triton import ServedModel

    logged = []
    model = ServedModel(Pipeline.from_checkpoints(model="tiny-animals"), "t", max_batch=2, log=logged.append)
    inputs = {"class": np.array([[b"cat"]], dtype=object), "seed": np.array([[0]]), "steps": np.array([[2]]),
              "budget": np.array([[0]]), "strategy": np.array([[b""]], dtype=object),
              "guidance": np.array([[1.0]], dtype=np.float32)}
    model.infer(**inputs)
    assert model.dropped() == 0
    model.deadline = time.monotonic() - 1  # the drain timeout passed while this batch ran
    model.infer(**inputs)
    assert model.dropped() == 1 and "were not delivered" in logged[-1]


@pytest.mark.slow  # builds bundles
def test_a_build_that_fails_its_own_checks_is_not_swapped_in(tiny, tmp_path, monkeypatch):
    from migm.engines import build as build_mod
    from migm.engines.build import BuildSettings, build_bundle
    from migm.errors import BundleError

    root = tiny[0]
    out = tmp_path / "k.plan"
    build_bundle(out, BuildSettings(precision="fp32"), root / "base", root / "vq")
    before = _files(out)
    real = build_mod.fill_bundle

    def wrong_names(stage, manifest, files):  # as a base whose meta names 2 classes for 3
        real(stage, dataclasses.replace(manifest, class_names=["a", "b"]), files)

    monkeypatch.setattr(build_mod, "fill_bundle", wrong_names)
    with pytest.raises(BundleError, match="class_names has 2 names for 3 classes"):
        build_bundle(out, BuildSettings(precision="fp32"), root / "base", root / "vq")
    assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["k.plan"]


def test_rebuild_gives_the_parser_only_hashed_files(tmp_path):
    from migm.engines.build import _hashed_graph
    from migm.engines.manifest import GraphFile

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "base.onnx").write_bytes(b"graph")
    (tmp_path / "b" / "base.onnx.data").write_bytes(b"weights")
    (tmp_path / "b" / "unlisted.bin").write_bytes(b"not hashed")
    files = {"onnx/base.onnx": tmp_path / "b" / "base.onnx", "onnx/base.onnx.data": tmp_path / "b" / "base.onnx.data"}
    graph = _hashed_graph(files, GraphFile(file="onnx/base.onnx", data_file="onnx/base.onnx.data"), tmp_path / "w")
    assert graph.read_bytes() == b"graph" and sorted(p.name for p in graph.parent.iterdir()) == [
        "base.onnx", "base.onnx.data"]
