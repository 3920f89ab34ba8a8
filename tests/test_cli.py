import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from migm.cli.run import main as run_main


def _run(args):
    return CliRunner().invoke(run_main, args)


@pytest.mark.slow  # builds the shipped model's bundle
def test_generates_grid_and_images(tmp_path):
    out = tmp_path / "out"
    res = _run(["--num", "3", "--steps", "4", "--classes", "cat,dog", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["run-0001"]  # each run in a new numbered subfolder
    out = out / "run-0001"
    files = sorted(p.name for p in out.iterdir())
    assert files == [".migm-run.json", "0000_cat.png", "0001_dog.png", "0002_cat.png", "grid.png"]
    assert Image.open(out / "0000_cat.png").size == (128, 128)
    assert "images/s" in res.output


# the class and step checks need the model: migm-run builds the default bundle first (once per session)
@pytest.mark.parametrize("args,message", [
    pytest.param(["--classes", "unicorn"], "unknown class 'unicorn'", marks=pytest.mark.slow),
    pytest.param(["--classes", "12"], "out of range", marks=pytest.mark.slow),
    (["--steps", "0"], "0 is not in the range 1<=x<=4096"),
    pytest.param(["--steps", "999"], "cannot exceed", marks=pytest.mark.slow),
    (["--num", "0"], "0 is not in the range"),
])
def test_bad_input_one_line_error(tmp_path, args, message):
    res = _run(args + ["--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # builds the default bundle (before --out is checked)
def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run(["--num", "1", "--steps", "1", "--out", str(blocker / "sub")])
    assert res.exit_code != 0
    assert "cannot write to" in res.output and "Not a directory" in res.output


@pytest.mark.slow  # subprocess
def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "migm.cli.run", "--classes", "unicorn", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    # stderr also carries the log (a cold cache says it builds the default bundle): one error line, last
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error:") and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], proc.stderr


@pytest.mark.slow  # subprocess
def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch):
    from migm.cli import common

    monkeypatch.setitem(common._debug, "on", False)
    proc = subprocess.run([sys.executable, "-m", "migm.cli.run", "--debug", "--classes", "unicorn", "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError: unknown class" in proc.stderr

    @common.one_line_errors
    def buggy():
        return {}["dir"]  # a real bug: not a MigmError, so it is not turned into one line

    with pytest.raises(KeyError):
        buggy()
