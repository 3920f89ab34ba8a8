"""The shipped models' default run (shortcut at the budget the quality tables support), how migm-run
uses it and says so, and its labelled grid."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from migm import assets
from migm.cli.run import main as run_main
from migm.errors import BundleError
from migm.models.checkpoint import checkpoint_digest
from migm.runtime import defaults
from migm.runtime.images import labelled_grid


def test_default_runs_are_the_tables_rows():
    for name in assets.MODELS:
        run = defaults.default_run(name)
        assert (run.strategy, run.steps, run.budget) == ("shortcut", 32, 6)
    with pytest.raises(ValueError, match="unknown shipped model"):
        defaults.default_run("nope")


@pytest.mark.parametrize("given,expected", [
    ((None, None, None), (32, 6, "shortcut")),  # the default run
    ((None, None, "reuse"), (32, 6, "reuse")),  # another strategy at the same budget
    ((None, None, "vanilla"), (32, None, "vanilla")),  # the full sampler
    ((None, 32, None), (32, 32, None)),  # --budget N: the full sampler too
    ((None, 4, None), (32, 4, None)),
    ((16, None, None), (16, None, None)),  # another N without a budget: the full sampler at that N
    ((32, None, None), (32, 6, "shortcut")),
])
def test_fill(given, expected):
    assert defaults.fill(defaults.default_run("tiny-animals"), *given) == expected
    assert defaults.fill(None, *given) == given  # a model that is not shipped keeps what was given


def test_bundles_are_recognised_by_their_sources(tmp_path):
    d = assets.model_dir("tiny-scenes")
    plan = tmp_path / "x.plan"
    plan.mkdir()
    sources = {"base": checkpoint_digest(d / "base"), "shortcut": checkpoint_digest(d / "shortcut")}
    (plan / "manifest.json").write_text(json.dumps({"sources": sources}))
    assert defaults.for_bundle(plan).model == "tiny-scenes"
    (plan / "manifest.json").write_text(json.dumps({"sources": dict(sources, shortcut="0" * 16)}))
    assert defaults.for_bundle(plan) is None  # another shortcut: not the shipped model's evidence
    (plan / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not a JSON object"):
        defaults.for_bundle(plan)
    assert defaults.for_checkpoints(d / "base", d / "shortcut").model == "tiny-scenes"
    assert defaults.for_checkpoints(d / "base", None) is None


def test_speedups():
    assert defaults.speedups(32, 6, 26, "shortcut", 0.25) == (32 / 6, 32 / (6 + 26 * 0.25))
    assert defaults.speedups(32, 6, 26, "shortcut", None) == (32 / 6, None)
    assert defaults.speedups(32, 6, 26, "reuse", 0.25) == (32 / 6, 32 / 6)


def test_labelled_grid_writes_each_label_under_its_image():
    images = torch.zeros(3, 1, 8, 8)
    grid = labelled_grid(images, ["cat", "a very long prompt that cannot fit under an image", "dog"], ncol=3, scale=4)
    arr = np.asarray(grid.convert("L"))
    assert grid.width == 3 * (32 + 4) + 4
    below = arr[4 + 32:, :]  # the label strip of the row
    for col in range(3):
        x = 4 + col * 36
        assert (below[:, x:x + 32] < 128).any(), f"no label under image {col}"
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        labelled_grid(images, ["a", "b"])


@pytest.mark.slow  # three migm-runs of the shipped model at N=32
def test_migm_run_defaults_to_the_shortcut_and_says_against_what(tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(run_main, ["--model", "tiny-animals", "--classes", "cat", "--num", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "shortcut, N=32, B=6: against the full sampler (vanilla N=32) 5.3x fewer base calls" in res.output
    assert "faster by the cost model (c=" in res.output
    grid = Image.open(out / "run-0001" / "grid.png")
    assert grid.size[1] > 128  # the image and its label
    for args in (["--strategy", "vanilla"], ["--budget", "32"]):
        res = CliRunner().invoke(run_main, ["--model", "tiny-animals", "--classes", "cat", "--num", "1",
                                            "--out", str(out), *args])
        assert res.exit_code == 0, res.output
        assert "vanilla, N=32, B=32: the full sampler" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["run-0001", "run-0002", "run-0003"]


def test_migm_run_other_checkpoints_keep_their_own_defaults(tmp_path):
    d = assets.model_dir("tiny-animals")
    for name in ("base", "vq"):
        for ext in (".json", ".safetensors"):
            shutil.copy(f"{d / name}{ext}", tmp_path / f"{name}{ext}")
    res = CliRunner().invoke(run_main, ["--base", str(tmp_path / "base"), "--classes", "cat", "--num", "1",
                                        "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "vanilla, N=16, B=16: the full sampler" in res.output  # no shortcut: the checkpoint's sampler
