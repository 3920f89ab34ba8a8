"""The demo page's work without a browser: the comparison, the batch grid, bad input as messages, and
the committed results read as cost-vs-quality tables."""

import json

import pytest

from migm.demo import app, results
from migm.errors import MigmError


@pytest.fixture(scope="module")
def models():
    return app.Models()


def test_compare_same_seed_side_by_side(models):
    r = app.compare(models, "tiny-animals", "cat", 3, 4, 2, "shortcut", 3.0)
    assert r.vanilla.size == r.fast.size == (256, 256)  # 32x32 enlarged 8x, nearest
    assert r.vanilla_info.startswith("vanilla N=4: ") and "4 base calls" in r.vanilla_info
    assert "shortcut N=4, B=2: " in r.fast_info and "2 base calls" in r.fast_info and "speedup" in r.fast_info
    assert 0 <= r.agreement <= 1
    same = app.compare(models, "tiny-animals", "cat", 3, 4, 2, "vanilla", 3.0)
    assert same.agreement == 1.0 and same.vanilla.tobytes() == same.fast.tobytes()
    assert same.vanilla.tobytes() == r.vanilla.tobytes()  # the same seed gives the same vanilla image


@pytest.mark.parametrize("args,message", [
    (("tiny-animals", "unicorn", 0, 4, 2, "shortcut", 3.0), "unknown class 'unicorn'"),
    (("tiny-scenes", "a <|mask|> cat", 0, 4, 2, "shortcut", 6.0), "control token <|mask|>"),
    (("tiny-animals", "cat", 0, 4, 5, "shortcut", 3.0), "B=5 is more than N=4"),
    (("tiny-animals", "cat", 0, 65, 5, "shortcut", 3.0), "between 1 and 64"),
    (("tiny-animals", "cat", 0, 4.5, 2, "shortcut", 3.0), "whole number"),
    (("tiny-animals", "", 0, 4, 2, "shortcut", 3.0), "give a class or a prompt"),
    (("nope", "cat", 0, 4, 2, "shortcut", 3.0), "unknown model"),
])
def test_bad_input_is_a_message(models, args, message):
    with pytest.raises(MigmError, match=message.replace("|", r"\|")):
        app.compare(models, *args)


def test_batch_grid_and_its_bound(models):
    grid, info = app.batch(models, "tiny-animals", "cat, dog", 2, 0, 2, 1, "reuse", 3.0)
    assert info.startswith("4 images, reuse N=2, B=1")
    assert grid.width == 2 * (128 + 4) + 4 and grid.height > 2 * 128
    with pytest.raises(MigmError, match="more than this page makes at once"):
        app.batch(models, "tiny-animals", "cat, dog", 20, 0, 2, 1, "reuse", 3.0)


def test_results_tables_read_only_rows_of_the_right_shape(tmp_path):
    rows = [{"strategy": "vanilla", "steps": 8, "budget": 8, "cost": 8.0, "fd": 20.0, "token_agreement": 1.0},
            {"strategy": "shortcut", "steps": 8, "budget": 2, "cost": 2.0, "fd": 30.0, "token_agreement": 0.5},
            {"strategy": "shortcut", "steps": 8, "budget": 2, "cost": 2.0, "fd": 32.0, "token_agreement": 0.7},
            {"strategy": "reuse", "steps": 8, "budget": "2", "cost": 2.0, "fd": 1.0},  # wrong type: skipped
            "junk"]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "big.json").write_text(" " * (results.MAX_FILE_BYTES + 1))
    tables = results.load_tables(tmp_path)
    assert [t.name for t in tables] == ["q.json, N=8"]
    assert tables[0].lines == {"shortcut": [(2.0, 31.0, 0.6)], "vanilla": [(8.0, 20.0, 1.0)]}  # seeds averaged


def test_the_committed_results_make_tables():
    names = [t.name for t in results.load_tables(app.Path(__file__).resolve().parent.parent / "benchmarks/results")]
    assert "quality_lowbudget_n32.json, N=32" in names and "scenes/geneval_lowbudget.json, N=32" in names
