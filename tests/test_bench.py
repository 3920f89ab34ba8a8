import json

import pytest
import torch
from click.testing import CliRunner
from conftest import needs_data

from migm import assets
from migm.cli.bench import main as bench_main
from migm.cli.run import main as run_main
from migm.models.checkpoint import checkpoint_digest, load_checkpoint, save_checkpoint
from migm.models.shortcut import Shortcut, ShortcutConfig
from migm.runtime import Pipeline


@pytest.fixture(scope="module")
def shortcut_path(tmp_path_factory):
    """An untrained shortcut for the shipped base (it starts as feature reuse)."""
    base = load_checkpoint(assets.BASE)
    c = base.cfg
    sc = Shortcut(ShortcutConfig(width=c.width, codebook_size=c.codebook_size, vocab=c.vocab,
                                 num_tokens=c.num_tokens))
    sc.load_base_embeddings(base)
    torch.nn.init.normal_(sc.proj_out.weight, std=0.01)
    path = tmp_path_factory.mktemp("sc") / "sc"
    save_checkpoint(sc, path, meta={"base_digest": checkpoint_digest(assets.BASE)})
    return path


@pytest.mark.slow  # a benchmark
@needs_data
def test_quality_sweep_writes_rows_and_plot(tmp_path, shortcut_path):
    out = tmp_path / "q.json"
    res = CliRunner().invoke(bench_main, [
        "quality", "--steps", "6", "--budget", "2", "--strategies",
        f"vanilla,fewer,reuse,extrapolate,mlcache,shortcut,shortcut={shortcut_path}",
        "--num", "20", "--err-num", "4", "--batch-size", "10", "--seed", "0", "--json", str(out),
        "--shortcut", str(shortcut_path)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert len(rows) == 1 + 6
    for r in rows:
        assert {"strategy", "steps", "budget", "fd", "class_acc", "feature_rel_err", "base_calls", "seconds"} <= set(r)
        assert r["base_calls"] == r["budget"] and r["fd"] > 0 and 0 <= r["class_acc"] <= 1
    by = {(r["strategy"], r["shortcut"], r["budget"]): r for r in rows}
    assert by[("vanilla", None, 6)]["feature_rel_err"] is None
    assert by[("reuse", None, 2)]["feature_rel_err"] > 0
    assert by[("mlcache", None, 2)]["cost"] > 2
    # the same shortcut twice (shipped slot and named) gives the same samples
    assert by[("shortcut", "shipped", 2)]["fd"] == by[("shortcut", "sc", 2)]["fd"]
    assert (tmp_path / "q.png").stat().st_size > 10_000
    assert "| reuse | 6 | 2 |" in res.output
    # --resume keeps finished rows
    res = CliRunner().invoke(bench_main, ["quality", "--steps", "6", "--budget", "2", "--strategies", "vanilla,reuse",
                                          "--num", "20", "--err-num", "0", "--json", str(out), "--resume",
                                          "--shortcut", str(shortcut_path)])
    assert res.exit_code == 0 and "0 rows to run" in res.output


@pytest.mark.parametrize("args,message", [
    (["--budget", "40"], "exceeds every N"),
    (["--strategies", "magic"], "unknown strategy"),
    (["--num", "1"], "at least 2"),
    (["--steps", "a,b"], "comma-separated integers"),
])
def test_quality_bad_input(tmp_path, args, message):
    res = CliRunner().invoke(bench_main, ["quality", "--json", str(tmp_path / "q.json"), *args])
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "q.json").exists()


def test_shortcut_for_another_base_is_refused(tmp_path, shortcut_path):
    sc = load_checkpoint(shortcut_path)
    save_checkpoint(sc, tmp_path / "other", meta={"base_digest": "0123456789abcdef"})
    with pytest.raises(ValueError, match="trained for another base"):
        Pipeline.from_checkpoints(shortcut=tmp_path / "other")


@pytest.mark.slow  # a benchmark
def test_run_with_shortcut_strategy(tmp_path, shortcut_path):
    res = CliRunner().invoke(run_main, ["--num", "2", "--steps", "6", "--budget", "2", "--strategy", "shortcut",
                                        "--shortcut", str(shortcut_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "run-0001" / "grid.png").exists()
    res = CliRunner().invoke(run_main, ["--steps", "6", "--budget", "7", "--out", str(tmp_path / "p")])
    assert res.exit_code != 0 and "budget B=7" in res.output


def test_speed_caches_a_random_bundle_per_depth(tmp_path, monkeypatch):
    """A random-weight bundle cached for one --depth must not be timed in place of another."""
    import migm.cli.bench as bench

    built = []
    monkeypatch.setattr(bench, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(bench, "random_models", lambda *a, **k: tuple(torch.nn.Linear(1, 1) for _ in range(3)))
    monkeypatch.setattr(bench, "save_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(bench, "build_bundle", lambda out, *a, **k: built.append(out.name))
    monkeypatch.setattr(bench.Pipeline, "from_bundle", classmethod(lambda cls, path, **k: path.name))
    names = [bench._speed_pipeline("maskgit-imagenet512", "ort", None, "cpu", depth)[0] for depth in (None, 2, 4)]
    assert len(set(names)) == 3 and built == names
    assert names[1] == "maskgit-imagenet512-depth2-random-ort-fp32.plan"
