"""`migm-generate` in one process: deterministic shards, the manifest, resuming (migm/serving/batch.py).
The same job on a Ray cluster is in test_serve_ray.py."""

import json

import pytest
from click.testing import CliRunner

from migm.cli.generate import main as generate_main
from migm.cli.generate import seed_list
from migm.errors import ConfigError
from migm.serving.batch import job, load_pipeline, make_shard, prepare, run_local

ARGS = ["--model", "tiny-animals", "--classes", "cat,dog,zebra", "--seeds", "0-2", "--steps", "4", "--budget", "2",
        "--shard-size", "4", "--batch-size", "2"]


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _generate(*args):
    result = CliRunner().invoke(generate_main, list(args))
    return result.exit_code, result.output


def test_help():
    code, text = _generate("--help")
    assert code == 0 and "--ray" in text and "deterministic shards" in text


def test_shards_are_fixed_by_the_job_alone():
    j = job(["cat", "dog", "zebra"], [0, 1, 2], "tiny-animals", shard_size=4)
    assert j.num_rows == 9 and j.num_shards == 3
    assert j.shard(0) == [(0, "cat", 0), (1, "cat", 1), (2, "cat", 2), (3, "dog", 0)]
    assert j.shard(2) == [(8, "zebra", 2)]
    assert seed_list("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ConfigError, match="neither a bundle"):
        job(["cat"], [0], "no-such.plan")


@pytest.mark.slow  # generates shards of images
def test_writes_images_and_a_manifest_and_resumes(tmp_path):
    out = tmp_path / "run"
    code, log = _generate(*ARGS, "--out", str(out))
    assert code == 0, log
    lines = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(x["index"], x["condition"], x["seed"], x["shard"]) for x in lines][:5] == \
        [(0, "cat", 0, 0), (1, "cat", 1, 0), (2, "cat", 2, 0), (3, "dog", 0, 0), (4, "dog", 1, 1)]
    assert all((out / x["file"]).exists() and x["base_calls"] == 2 and x["strategy"] == "shortcut" for x in lines)
    assert len({x["tokens_sha256"] for x in lines}) == 9
    first = _files(out)
    assert len([f for f in first if f.startswith("images/")]) == 9

    code, log = _generate(*ARGS, "--out", str(out))  # nothing left to do
    assert code == 0 and "3 shards already done, skipped" in log and _files(out) == first
    (out / "shards" / "00001.jsonl").unlink()  # as if the job had died during shard 1
    (out / "images" / "000005-dog-s2.png").unlink()
    (out / "manifest.jsonl").unlink()
    code, log = _generate(*ARGS, "--out", str(out))
    assert code == 0 and "2 shards already done, skipped" in log and "shard 1: 4 rows" in log
    assert _files(out) == first  # the same bytes again

    code, log = _generate(*ARGS[:-1], "3", "--out", str(out))  # another job in the same directory
    assert code == 1 and "holds another job (differs in: batch_size)" in log


def test_bad_rows_are_reported_and_the_others_made(tmp_path):
    code, log = _generate("--model", "tiny-animals", "--classes", "cat,unicorn", "--seeds", "0,1", "--steps", "2",
                          "--out", str(tmp_path / "bad"))
    assert code == 1 and "2 of 4 rows were rejected, the first: unknown class 'unicorn'" in log
    lines = [json.loads(s) for s in (tmp_path / "bad" / "manifest.jsonl").read_text().splitlines()]
    assert [("file" in x, "error" in x) for x in lines] == [(True, False)] * 2 + [(False, True)] * 2


@pytest.mark.parametrize("args,message", [
    (["--classes", "cat", "--prompt", "a cat"], "give --classes (class-conditional model) or --prompt"),
    (["--classes", "cat", "--seeds", "5-x"], "expected seeds like 0-99"),
    (["--classes", "cat", "--workers", "2"], "--ray-address and --workers go with --ray"),
    (["--classes", "cat", "--steps", "0"], "steps must be an integer between 1 and"),
])
def test_usage_errors(tmp_path, args, message):
    code, log = _generate("--model", "tiny-animals", *args, "--out", str(tmp_path / "x"))
    assert code != 0 and message in log, log


@pytest.mark.slow  # generates shards of images
def test_single_process_runs_equal_for_any_shard_order(tmp_path):
    """Rows depend only on their own seed: shards made in any order, or once more, give the same bytes."""
    j = job(["bird", "cow"], [3, 4, 5], "tiny-animals", steps=4, budget=2, shard_size=2, batch_size=2)
    a, b = tmp_path / "a", tmp_path / "b"
    run_local(j, a, say=lambda _: None)
    prepare(j, b)
    pipe = load_pipeline(j)
    for k in (2, 0):  # some shards first, in another order; the rest by run_local
        make_shard(pipe, j, k, b)
    run_local(j, b, say=lambda _: None)
    assert _files(a) == _files(b)
