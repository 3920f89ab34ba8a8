"""Serving without a server: rows read and checked one by one, generated in padded groups of equal
settings, and the batched inference function Triton calls (migm/serving/rows.py, triton.py)."""

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from migm.cli.serve import main as serve_main
from migm.engines.build import BuildSettings, build_bundle
from migm.runtime import Pipeline
from migm.serving.rows import generate_rows, padded_size, preferred_sizes, read_row
from migm.serving.triton import ServedModel, model_name


@pytest.fixture(scope="module")
def pipe(tiny, tmp_path_factory):
    root = tiny[0]
    out = tmp_path_factory.mktemp("serving") / "tiny.plan"
    bundle = build_bundle(out, BuildSettings(precision="fp32", backend="ort"), root / "base", root / "vq", root / "sc")
    return Pipeline.from_bundle(bundle, backend="ort")  # 3 classes (no names), N = 6 by default, w = 2


@pytest.mark.slow  # the pipe fixture builds a bundle (exports ONNX)
@pytest.mark.parametrize("kwargs,message", [
    (dict(condition="7"), "class 7 is out of range 0..2"),
    (dict(condition="cat"), "unknown class 'cat'; choose from 0..2"),
    (dict(steps=0), "steps must be an integer between 1 and"),
    (dict(steps=4, budget=5), "budget B=5 must be between 1 and the number of steps N=4"),
    (dict(strategy="fastest", budget=3), "unknown strategy 'fastest'"),
    (dict(strategy="mlcache", budget=3), "the mlcache strategy needs the torch backend"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(seed=-1), "seed must be an integer between 0 and"),
    (dict(condition=b"\xff\xfe"), "the class is not UTF-8 text"),
    (dict(condition="  "), "empty class"),
])
def test_a_bad_row_carries_its_error(pipe, kwargs, message):
    args = {"condition": "1", "seed": 0, **kwargs}
    row = read_row(pipe, args.pop("condition"), args.pop("seed"), **args)
    assert row.error is not None and message in row.error and row.settings is None


@pytest.mark.slow  # the pipe fixture
def test_rows_of_a_mixed_batch_equal_the_same_rows_alone(pipe):
    spec = [("0", 5, dict(steps=6, budget=3)), ("2", 9, dict(steps=6, budget=3)), ("1", 5, dict(steps=4)),
            ("9", 1, dict(steps=6)), ("2", 9, dict(steps=6, budget=3, strategy="reuse")),
            ("0", 5, dict(steps=6, budget=3)), ("1", 2, dict(steps=6, budget=3))]
    rows = [read_row(pipe, c, s, **kw) for c, s, kw in spec]
    mixed = generate_rows(pipe, rows, sizes=(1, 2, 4))
    assert mixed[3].error.startswith("class 9 is out of range") and mixed[3].image is None
    for (c, s, kw), got in zip(spec, mixed):
        if got.error is None:
            alone = generate_rows(pipe, [read_row(pipe, c, s, **kw)], sizes=(1,))[0]
            assert torch.equal(got.tokens, alone.tokens) and torch.equal(got.image, alone.image)
    # four rows share N=6 B=3 shortcut: one group, padded to 4; the reuse row is its own group
    assert mixed[0].stats == {**mixed[0].stats, "steps": 6, "budget": 3, "strategy": "shortcut", "rows": 4,
                              "padded_to": 4, "base_calls": 3}
    assert mixed[4].stats["strategy"] == "reuse" and mixed[4].stats["rows"] == 1
    assert mixed[2].stats["strategy"] == "vanilla" and mixed[2].stats["base_calls"] == 4
    assert torch.equal(mixed[0].tokens, mixed[5].tokens)  # same class, seed and settings
    assert not torch.equal(mixed[0].tokens, mixed[6].tokens)


@pytest.mark.slow  # the pipe fixture
def test_a_group_larger_than_the_biggest_size_runs_in_chunks(pipe):
    rows = [read_row(pipe, str(i % 3), i, steps=4) for i in range(5)]
    got = generate_rows(pipe, rows, sizes=(1, 2))
    assert [r.stats["padded_to"] for r in got] == [2, 2, 2, 2, 1]
    alone = generate_rows(pipe, rows[4:], sizes=(1,))[0]
    assert torch.equal(got[4].tokens, alone.tokens)


@pytest.mark.slow  # the pipe fixture
def test_vanilla_rows_with_and_without_a_budget_are_one_group(pipe):
    a = read_row(pipe, "0", 1, steps=6, strategy="vanilla", budget=3)
    b = read_row(pipe, "1", 2, steps=6)
    assert a.settings == b.settings


def test_sizes():
    assert preferred_sizes(8) == [1, 2, 4, 8] and preferred_sizes(6) == [1, 2, 4, 6] and preferred_sizes(1) == [1]
    assert padded_size(3, [1, 2, 4, 8]) == 4 and padded_size(8, [1, 2, 4, 8]) == 8
    assert model_name("/x/tiny.plan/") == "tiny" and model_name("a b.plan") == "a_b"


def _batch(model, classes, seeds, **optional):
    n = len(classes)
    inputs = {model.kind: np.array([[c.encode() if isinstance(c, str) else c] for c in classes], dtype=object),
              "seed": np.array(seeds, dtype=np.int64).reshape(n, 1)}
    for name, default in model.defaults().items():  # what PyTriton's fill_optionals does
        values = optional.get(name, [default[0]] * n)
        inputs[name] = np.array(values, dtype=default.dtype).reshape(n, 1)
    return inputs


@pytest.mark.slow  # the pipe fixture
def test_served_model_answers_each_row(pipe):
    model = ServedModel(pipe, "tiny", max_batch=4)
    out = model.infer(**_batch(model, ["0", "cat", "2", "1"], [3, 3, 4, 5], steps=[6, 6, 0, 6],
                                budget=[3, 0, 0, 7], strategy=[b"", b"", b"", b""]))
    errors = [e.decode() for e in out["error"][:, 0]]
    assert errors[0] == "" and "unknown class 'cat'" in errors[1] and "steps must be" in errors[2] \
        and "budget B=7" in errors[3]
    assert out["image"].shape == (4, 8, 8, 1) and out["image"].dtype == np.uint8 and not out["image"][1:].any()
    png = Image.open(io.BytesIO(out["png"][0, 0]))
    assert png.size == (8, 8) and np.array_equal(np.asarray(png), out["image"][0, ..., 0])
    assert out["png"][1, 0] == b"" and out["tokens"].shape == (4, 16) and out["tokens"].dtype == np.int32
    stats = json.loads(out["stats"][0, 0])
    assert stats["budget"] == 3 and stats["strategy"] == "shortcut" and stats["rows"] == 1
    alone = model.infer(**_batch(model, ["0"], [3], budget=[3]))
    assert np.array_equal(alone["tokens"][0], out["tokens"][0]) and np.array_equal(alone["image"], out["image"][:1])


@pytest.mark.slow  # samples the shipped model
def test_served_text_model_names_unknown_words():
    scenes = Pipeline.from_checkpoints(model="tiny-scenes")
    model = ServedModel(scenes, "tiny-scenes", max_batch=2)
    assert model.kind == "prompt"
    out = model.infer(**_batch(model, ["a small cat on the left", "a small unicorn on the left"], [0, 0],
                                steps=[2, 2]))
    assert out["error"][0, 0] == b"" and b"unicorn" in out["error"][1, 0]
    assert out["image"].shape == (2, 64, 64, 1) and out["image"][0].any()


def test_serve_help_and_usage_errors():
    result = CliRunner().invoke(serve_main, ["--help"])
    assert result.exit_code == 0 and "--drain-timeout" in result.output and "/v2/models/NAME/ready" in result.output
    result = CliRunner().invoke(serve_main, ["--engine", "x.plan", "--model", "tiny-animals"])
    assert result.exit_code != 0 and ("give --engine or --model, not both" in result.output
                                      or "needs PyTriton" in result.output)
