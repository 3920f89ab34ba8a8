"""What every CLI shares: --config files, --version/--verbose/--quiet, one-line usage errors, logging."""

import json
import logging
import warnings

import pytest
from click.testing import CliRunner

from migm import __version__
from migm.cli import common
from migm.cli import train as train_cli
from migm.cli.bench import main as bench_main
from migm.cli.export import main as export_main
from migm.cli.generate import main as generate_main
from migm.cli.run import main as run_main
from migm.cli.serve import main as serve_main
from migm.cli.train import main as train_main
from migm.errors import DataError
from migm.models.checkpoint import load_checkpoint
from migm.training.train_shortcut import ShortcutTrainSettings


def _train(tiny, tmp_path, *args):
    root = tiny[0]
    out = tmp_path / "sc"
    res = CliRunner().invoke(train_main, ["shortcut", "--trajectories", str(root / "traj"), "--base",
                                          str(root / "base"), "--out", str(out), *args])
    return res, out


def _trained_with(out) -> dict:
    return load_checkpoint(out).meta["train"]


@pytest.fixture
def settings_seen(monkeypatch):
    """What `migm-train shortcut` would train with, caught before any training."""
    seen = {}

    def stop(out, base, ts, cfg, settings, **kw):
        seen.update(settings=settings, cfg=cfg)
        raise DataError("stopped before training (test)")

    monkeypatch.setattr(train_cli, "train_shortcut", stop)
    return seen


@pytest.mark.slow  # trains (two steps of a tiny shortcut)
def test_config_file_only(tiny, tmp_path):
    cfg = tmp_path / "sc.json"
    cfg.write_text(json.dumps({"steps": 2, "lr": 0.002, "eval-every": 1, "heads": 2, "plan_budgets": [2, 3],
                               "ema": 0.5}))
    res, out = _train(tiny, tmp_path, "--config", str(cfg))
    assert res.exit_code == 0, res.output
    train = _trained_with(out)
    assert (train["steps"], train["lr"], train["eval_every"], train["plan_budgets"], train["ema_decay"]) == \
        (2, 0.002, 1, [2, 3], 0.5)
    assert load_checkpoint(out).cfg.heads == 2


def test_config_toml_and_command_line_override(tiny, tmp_path, settings_seen):
    cfg = tmp_path / "sc.toml"
    cfg.write_text('steps = 2\nlr = 0.002\neval_every = 1\nheads = 2\nkl = 0.5\nno-cross-attention = true\n')
    res, out = _train(tiny, tmp_path, "--steps", "3", "--config", str(cfg), "--kl", "0")
    assert res.exit_code == 1 and "stopped before training" in res.output, res.output
    s = settings_seen["settings"]
    assert (s.steps, s.lr, s.kl, s.eval_every) == (3, 0.002, 0.0, 1)  # the options win, wherever they stand
    assert settings_seen["cfg"].heads == 2 and not settings_seen["cfg"].cross_attention


def test_without_config_the_defaults_are_the_dataclass_defaults(tiny, tmp_path, settings_seen):
    res, _ = _train(tiny, tmp_path, "--heads", "2", "--plan-budgets", "2,3")
    assert res.exit_code == 1, res.output
    assert settings_seen["settings"] == ShortcutTrainSettings(plan_budgets=[2, 3])


@pytest.mark.parametrize("content,suffix,message", [
    ({"steps": 2, "stepz": 3}, ".json", "unknown key 'stepz'"),
    ({"steps": 1.5}, ".json", "steps must be an integer, got 1.5"),
    ({"steps": "2"}, ".json", "steps must be an integer, got '2'"),
    ({"no_cross_attention": 1}, ".json", "must be true or false"),
    ({"plan_budgets": "6,8"}, ".json", "must be a list of integers"),
    ([1, 2], ".json", "expected an object of settings"),
    ("steps = ", ".toml", "not valid TOML"),
    ({"steps": 2}, ".yaml", "NAME.json or NAME.toml"),
])
def test_config_refused_with_one_line(tiny, tmp_path, content, suffix, message):
    cfg = tmp_path / f"bad{suffix}"
    cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    res, out = _train(tiny, tmp_path, "--config", str(cfg))
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--config'"), res.output
    assert message in lines[0] and "--help" in lines[0], res.output
    assert not out.with_suffix(".safetensors").exists()


def test_config_size_cap(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "a" * common.CONFIG_MAX_BYTES}))
    with pytest.raises(ValueError, match="not a settings file"):
        common.read_config(big)


def test_export_build_config_names_its_keys(tmp_path):
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps({"precision": "fp16", "max_batchh": 4}))
    res = CliRunner().invoke(export_main, ["build", "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown key 'max_batchh'" in res.output and "max_batch" in res.output


def test_export_build_required_option_from_config(tmp_path, monkeypatch):
    """`--out` is required: a config file may give it (then the build starts and fails on our bad model)."""
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps({"out": str(tmp_path / "x.plan"), "base": str(tmp_path / "missing")}))
    res = CliRunner().invoke(export_main, ["build", "--config", str(cfg)])
    assert res.exit_code == 1 and "Missing option" not in res.output, res.output


@pytest.mark.parametrize("main,name", [(run_main, "migm-run"), (export_main, "migm-export"),
                                       (train_main, "migm-train"), (bench_main, "migm-bench"),
                                       (serve_main, "migm-serve"), (generate_main, "migm-generate")])
def test_every_tool_has_version_verbose_quiet(main, name):
    res = CliRunner().invoke(main, ["--version"], prog_name=name)
    assert res.exit_code == 0 and res.output.strip() == f"{name} {__version__}"
    helptext = CliRunner().invoke(main, ["--help"]).output
    for flag in ("--verbose", "--quiet", "--version", "--debug"):
        assert flag in helptext, (name, flag)


def test_usage_error_is_one_line_with_a_hint():
    res = CliRunner().invoke(export_main, ["build", "--precision", "fp17", "--out", "x.plan"], prog_name="migm-export")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--precision'"), res.output
    assert lines[0].endswith("(see 'migm-export build --help')")
    res = CliRunner().invoke(run_main, ["--nope"], prog_name="migm-run")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "No such option" in res.output


@pytest.mark.slow  # trains (one step of a tiny shortcut)
def test_subcommand_takes_quiet_too(tiny, tmp_path):
    res, _ = _train(tiny, tmp_path, "--steps", "1", "--heads", "2", "--eval-every", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert "shortcut:" not in res.output  # no progress bar with --quiet
    assert logging.getLogger("migm").level == logging.WARNING


def _warn(path: str, category=UserWarning):
    warnings.warn_explicit("noise", category, path, 1)


def test_third_party_warnings_only_with_verbose(caplog):
    pyw = logging.getLogger("py.warnings")
    try:
        for level, shown in ((0, {"mine", "theirs-user"}), (1, {"mine", "theirs-user", "onnx", "deprecated"})):
            common._verbosity["level"] = level
            logging.captureWarnings(False)  # pytest restored showwarning after an earlier CLI test captured it
            common.setup_logging()
            caplog.clear()
            pyw.addHandler(caplog.handler)  # setup_logging captured warnings into py.warnings
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                _warn(f"{common._MIGM_DIR}/runtime/x.py", FutureWarning)  # ours: always shown
                _warn("/venv/site-packages/torch/onnx/_internal/exporter/_onnx_program.py")
                _warn("/usr/lib/python3.11/copyreg.py", FutureWarning)  # a deprecation reached through copyreg
                _warn("/venv/site-packages/somelib/x.py")  # a third party's user warning: shown
            seen = {r.getMessage().split(":")[0] for r in caplog.records if r.name == "py.warnings"}
            got = {"mine" if p.startswith(common._MIGM_DIR) else "onnx" if "onnx" in p else
                   "deprecated" if "copyreg" in p else "theirs-user" for p in seen}
            assert got == shown, (level, seen)
    finally:
        common._verbosity["level"] = 0
        logging.captureWarnings(False)
