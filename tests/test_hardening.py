"""The reliability suite: files from others are data, never code; no command destroys what it did
not make or writes outside its folder; every bad input is one clear line and a non-zero exit.

Grouped by the classes of failure found when the tools were tried as an attacker and a careless
user would (SECURITY.md): each case asserts the error, the exit code, and that nothing outside the
intended folder (and nothing of the user's) was touched.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from migm.cli.export import main as export_main
from migm.cli.run import main as run_main
from migm.cli.train import main as train_main
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import BundleError, manifest_digest, verify_bundle
from migm.errors import CheckpointError, ConfigError, PromptError
from migm.fileio import HOST, atomic_dir, staged_files
from migm.models.text import encode_prompts, load_tokenizer
from migm.runtime import Pipeline
from migm.training.state import load_train_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    root = tiny[0]
    out = tmp_path_factory.mktemp("hard") / "tiny.plan"
    return build_bundle(out, BuildSettings(precision="fp32", backend="ort"), root / "base", root / "vq", root / "sc")


def _copy(bundle, tmp_path, name="x.plan") -> Path:
    return Path(shutil.copytree(bundle, tmp_path / name))


def _edit(plan: Path, change) -> None:
    """Change the manifest as an attacker would: and fix its digest, so only the checks stop it."""
    doc = json.loads((plan / "manifest.json").read_text())
    change(doc)
    if isinstance(doc, dict):
        doc["digest"] = manifest_digest(doc)
    (plan / "manifest.json").write_text(json.dumps(doc))


def _one_line_error(res, *needles):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    assert lines and lines[-1].startswith("Error:"), res.output
    error = [line for line in lines if line.startswith("Error:")]
    assert len(error) == 1, res.output
    for n in needles:
        assert n in res.output, res.output


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- 1. untrusted files run no code ----

class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MIGM_PWNED', '/tmp/migm-pwned')}",))


@pytest.mark.parametrize("payload", ["pickle", "empty", "garbage"])
def test_1_training_state_runs_no_code(tmp_path, payload, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("MIGM_PWNED", str(flag))
    state = tmp_path / "run.train.pt"
    if payload == "pickle":
        torch.save({"step": 3, "model": Evil()}, state)
    else:
        state.write_bytes(b"" if payload == "empty" else b"\x00garbage")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="not a migm training state"):
        load_train_state(tmp_path / "run", model, opt)
    assert not flag.exists()


def test_1_resume_with_other_settings_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": 5, "ema": None,
                "rng": torch.get_rng_state(), "settings": json.dumps({"lr": 0.1})}, tmp_path / "run.train.pt")
    assert load_train_state(tmp_path / "run", model, opt, settings={"lr": 0.1}) == 5
    with pytest.raises(ConfigError, match="other settings .*lr 0.1 then, 0.2 now"):
        load_train_state(tmp_path / "run", model, opt, settings={"lr": 0.2})


# ---- 2. --out is never someone else's ----

@pytest.mark.parametrize("kind", ["user-dir", "file", "symlink"])
def test_2_build_refuses_an_out_it_did_not_make(tiny, tmp_path, kind):
    out = tmp_path / "mine.plan"
    if kind == "user-dir":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif kind == "file":
        out.write_bytes(b"a TensorRT engine of the user's")
    else:
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    before = _snapshot(tmp_path)
    root = tiny[0]
    res = CliRunner().invoke(export_main, ["build", "--precision", "fp32", "--base", str(root / "base"), "--vq",
                                           str(root / "vq"), "--no-shortcut", "--out", str(out)])
    _one_line_error(res, "migm replaces only what it made")
    assert _snapshot(tmp_path) == before  # nothing created, moved or deleted beside it


@pytest.mark.slow  # builds bundles
def test_2_build_replaces_its_own_bundle_and_an_empty_dir(bundle, tiny, tmp_path):
    root = tiny[0]
    empty = tmp_path / "empty.plan"
    empty.mkdir()
    build_bundle(empty, BuildSettings(precision="fp32"), root / "base", root / "vq")
    build_bundle(empty, BuildSettings(precision="fp32"), root / "base", root / "vq")  # its own: replaced
    assert verify_bundle(empty).precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.plan"]  # no staging or old copies left


# ---- 3. names from data never name paths ----

def test_3_class_names_become_slugs_inside_out(bundle, tmp_path):
    plan = _copy(bundle, tmp_path)
    _edit(plan, lambda d: d.__setitem__("class_names", ["/../../../x/pwn", "..", "a b\\c"]))
    out = tmp_path / "sandbox" / "out"
    res = CliRunner().invoke(run_main, ["--engine", str(plan), "--num", "3", "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "run-0001").iterdir() if p.suffix == ".png") == [
        "0000_xpwn.png", "0001_image.png", "0002_a-bc.png", "grid.png"]
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["out"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("names,message", [
    (["n" * 300, "b", "c"], "class_names must be names of 1..200"),
    ("abc", "class_names must be a list"),
    (["a", "b"], "class_names has 2 names for 3 classes"),
])
def test_3_bad_class_names_refused_at_load(bundle, tmp_path, names, message):
    plan = _copy(bundle, tmp_path)
    _edit(plan, lambda d: d.__setitem__("class_names", names))
    res = CliRunner().invoke(run_main, ["--engine", str(plan), "--out", str(tmp_path / "o")])
    _one_line_error(res, message)
    assert not (tmp_path / "o").exists()


# ---- 4. a bundle reads nothing outside itself, and cannot hang the loader ----

@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "../other.plan/base.onnx"])
def test_4_paths_outside_the_bundle_are_refused(bundle, tmp_path, target):
    plan = _copy(bundle, tmp_path)
    _copy(bundle, tmp_path, "other.plan")
    _edit(plan, lambda d: d["components"]["base"].__setitem__("file", target))
    with pytest.raises(BundleError, match="leaves the bundle"):
        verify_bundle(plan)
    res = CliRunner().invoke(export_main, ["inspect", str(plan)])
    _one_line_error(res, "leaves the bundle")


def test_4_symlinks_out_of_the_bundle_are_refused(bundle, tmp_path):
    plan = _copy(bundle, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(plan / "base.onnx", outside)
    (plan / "base.onnx").unlink()
    (plan / "base.onnx").symlink_to(outside)  # same bytes, same hash: only the link check stops it
    with pytest.raises(BundleError, match="symbolic link"):
        verify_bundle(plan)
    plan2 = _copy(bundle, tmp_path, "y.plan")
    shutil.rmtree(plan2 / "torch")
    (plan2 / "torch").symlink_to(plan / "torch")
    with pytest.raises(BundleError, match="symbolic link"):
        verify_bundle(plan2)


@pytest.mark.parametrize("kind", ["fifo", "devzero", "manifest-devzero", "manifest-huge"])
def test_4_special_files_do_not_hang_the_loader(bundle, tmp_path, kind):
    plan = _copy(bundle, tmp_path)
    if kind == "fifo":
        (plan / "decoder.onnx").unlink()
        os.mkfifo(plan / "decoder.onnx")
        match = "not a regular file"
    elif kind == "devzero":
        (plan / "decoder.onnx").unlink()
        (plan / "decoder.onnx").symlink_to("/dev/zero")
        match = "symbolic link"
    elif kind == "manifest-devzero":
        (plan / "manifest.json").unlink()
        (plan / "manifest.json").symlink_to("/dev/zero")
        match = "not a regular file"
    else:
        with open(plan / "manifest.json", "a") as fh:
            fh.write(" " * (2 << 20))
        match = "a bundle manifest has at most"
    t = time.monotonic()
    with pytest.raises(BundleError, match=match):
        Pipeline.from_bundle(plan, backend="ort")
    assert time.monotonic() - t < 10


# ---- 5. only hashed files change behaviour ----

@pytest.mark.slow  # builds a bundle
def test_5_unhashed_tokenizer_files_are_not_read(tmp_path):
    res = CliRunner().invoke(export_main, ["build", "--backend", "ort", "--model", "tiny-scenes", "--precision", "fp32",
                                           "--no-shortcut",
                                           "--out", str(tmp_path / "s.plan")])
    assert res.exit_code == 0, res.output
    plan = tmp_path / "s.plan"
    before = Pipeline.from_bundle(plan, backend="ort").conditions(prompts=["a small cat on the left"])
    (plan / "tokenizer" / "special_tokens_map.json").write_text(json.dumps({"pad_token": "cat"}))
    after = Pipeline.from_bundle(plan, backend="ort").conditions(prompts=["a small cat on the left"])
    assert torch.equal(before, after)


# ---- 6. non-finite and out-of-range settings ----

@pytest.mark.parametrize("args,message", [
    (["--guidance", "nan"], "guidance must be a finite number"),
    (["--cfg", "inf"], "guidance must be a finite number"),
    (["--tau", "nan"], "tau must be a finite number"),
    (["--guidance", "-1"], "guidance must be >= 0.0"),
])
def test_6_non_finite_settings(bundle, tmp_path, args, message):
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--out", str(tmp_path / "o"), *args])
    _one_line_error(res, message)
    assert not (tmp_path / "o").exists()


def test_6_non_finite_manifest_and_api(bundle, tmp_path):
    plan = _copy(bundle, tmp_path)
    text = (plan / "manifest.json").read_text().replace('"guidance": 2.0', '"guidance": NaN')
    (plan / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="NaN is not a number a manifest may hold"):
        verify_bundle(plan)
    pipe = Pipeline.from_bundle(bundle, backend="ort")
    with pytest.raises(ConfigError, match="temperature must be > 0.0"):
        pipe.generate_tokens([0], temperature=0)
    with pytest.raises(ConfigError, match="seed must be an integer in 0..2"):
        pipe.generate_tokens([0], seed=2**70)


# ---- 7. resumable jobs refuse a changed setting; multi-file outputs land as one ----

def test_7_trajectory_resume_with_other_settings(tiny, tmp_path):
    root = tiny[0]
    args = ["trajectories", "--base", str(root / "base"), "--out", str(tmp_path / "t"), "--images", "4",
            "--shard-size", "2"]
    res = CliRunner().invoke(train_main, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output
    (tmp_path / "t" / "manifest.json").unlink()  # as if it had been killed before finishing
    (tmp_path / "t" / "labels-00001.npy").unlink()
    res = CliRunner().invoke(train_main, [*args, "--steps", "6"])
    _one_line_error(res, "collected with other settings", "sampling")
    assert not (tmp_path / "t" / "manifest.json").exists()


def test_7_failed_ship_leaves_the_shipped_model(tiny, tmp_path):
    root = tiny[0]
    dest = tmp_path / "assets"
    dest.mkdir()
    (dest / "vq.json").write_text("the shipped vq")
    before = _snapshot(dest)
    res = CliRunner().invoke(train_main, ["ship", "--vq", str(root / "vq"), "--classifier", str(root / "vq"),
                                          "--base", str(root / "base"), "--out", str(dest)])
    _one_line_error(res, "is a vqvae checkpoint; expected classifier")
    assert _snapshot(dest) == before


def test_7_interrupted_file_swap_is_completed(tmp_path):
    dest = tmp_path / "assets"
    dest.mkdir()
    (dest / "a.json").write_text("old a")
    (dest / "b.json").write_text("old b")

    class Killed(Exception):
        pass

    real = os.replace
    calls = []

    def dying(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the journal was written, the first file moved: killed here
            raise Killed
        real(src, dst)

    with pytest.raises(Killed):
        with staged_files(dest) as stage:
            (stage / "a.json").write_text("new a")
            (stage / "b.json").write_text("new b")
            os.replace = dying
    os.replace = real
    with staged_files(dest):  # the next run completes the journal first
        pass
    assert (dest / "a.json").read_text() == "new a" and (dest / "b.json").read_text() == "new b"
    assert sorted(p.name for p in dest.iterdir()) == ["a.json", "b.json"]


# ---- 8. bounded memory ----

def test_8_huge_counts_are_refused_at_once(bundle, tmp_path):
    t = time.monotonic()
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--num", "1000000000", "--out", str(tmp_path / "o")])
    _one_line_error(res, "is not in the range")
    plan = _copy(bundle, tmp_path)
    _edit(plan, lambda d: d["config"]["base"].__setitem__("num_classes", 10**9))
    res = CliRunner().invoke(run_main, ["--engine", str(plan), "--out", str(tmp_path / "o")])
    _one_line_error(res, "config.base does not describe a maskgit model")
    assert time.monotonic() - t < 30


def test_8_a_config_that_does_not_fit_its_weights_allocates_nothing(tiny, tmp_path):
    root = tiny[0]
    shutil.copy(root / "base.safetensors", tmp_path / "b.safetensors")
    doc = json.loads((root / "base.json").read_text())
    doc["config"]["depth"] = 10**9
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="depth = 1000000000 is out of range"):
        Pipeline.from_checkpoints(base=tmp_path / "b", vq=root / "vq")
    doc["config"]["depth"], doc["config"]["width"] = 1, 4096
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not match its config"):
        Pipeline.from_checkpoints(base=tmp_path / "b", vq=root / "vq")


# ---- 9. one clear line instead of a traceback ----

@pytest.mark.parametrize("doc,message", [
    ([], "the manifest is not a JSON object"),
    (None, "the manifest is not a JSON object"),
    ({"format": "migm-bundle", "version": 2}, "manifest lacks"),
])
def test_9_malformed_manifests(bundle, tmp_path, doc, message):
    plan = _copy(bundle, tmp_path)
    (plan / "manifest.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(export_main, ["inspect", str(plan)])
    _one_line_error(res, message)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.__setitem__("surprise", 1), "manifest has unknown keys surprise"),
    (lambda d: d["components"]["base"].pop("sha256"), "components.base lacks sha256"),
    (lambda d: d["components"]["base"].__setitem__("bytes", "many"), "components.base.bytes must be a count"),
    (lambda d: d.__setitem__("sampling", {"steps": "six"}), "sampling: steps must be an integer"),
    (lambda d: d["config"]["base"].__setitem__("heads", "two"), "config.base does not describe"),
])
def test_9_wrong_types_and_unknown_keys(bundle, tmp_path, change, message):
    plan = _copy(bundle, tmp_path)
    _edit(plan, change)
    res = CliRunner().invoke(export_main, ["inspect", str(plan)])
    _one_line_error(res, message)


@pytest.mark.parametrize("args,message", [
    (["--vq", "CLASSIFIER"], "is a classifier checkpoint; expected vqvae"),
    (["--seed", str(2**70)], "is not in the range"),
    (["--classes", "0,1,2", "--num", "16", "--engine", "BUNDLE3"], "class_names has 3 names for 10 classes"),
])
def test_9_cli_lines(bundle, tmp_path, args, message):
    from migm import assets

    if "BUNDLE3" in args:
        plan = _copy(bundle, tmp_path)
        _edit(plan, lambda d: (d["config"]["base"].__setitem__("num_classes", 10),
                               d.__setitem__("spec", {**d["spec"], "num_classes": 10}),
                               d.__setitem__("class_names", ["a", "b", "c"])))
        args = [str(plan) if a == "BUNDLE3" else a for a in args]
    args = [str(assets.CLASSIFIER) if a == "CLASSIFIER" else a for a in args]
    res = CliRunner().invoke(run_main, [*args, "--out", str(tmp_path / "o")])
    _one_line_error(res, message)


def test_9_training_options(tmp_path):
    res = CliRunner().invoke(train_main, ["shortcut", "--ratio", "0", "--out", str(tmp_path / "s")])
    _one_line_error(res, "'--ratio': 0 is not in the range")


# ---- 10. nothing claimed, nothing written early ----

def test_10_zero_steps_and_unwritable_out(tmp_path):
    res = CliRunner().invoke(train_main, ["vq", "--steps", "0", "--out", str(tmp_path / "vq")])
    _one_line_error(res, "'--steps': 0 is not in the range")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(train_main, ["vq", "--steps", "1", "--out", str(blocker / "vq")])
    _one_line_error(res, "cannot write to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_10_run_validates_before_creating_out(bundle, tmp_path, monkeypatch):
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--classes", "nope", "--out", str(tmp_path / "a/b")])
    _one_line_error(res, "unknown class 'nope'")
    assert not (tmp_path / "a").exists()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--out", ""])
    _one_line_error(res, "--out is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_10_run_keeps_user_files_and_earlier_runs(bundle, tmp_path):
    out = tmp_path / "o"
    (out / "run-0007x").mkdir(parents=True)  # not a run folder's name: neither counted nor touched
    (out / "holiday.png").write_bytes(b"a photo")
    for num in ("3", "1"):
        res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--num", num, "--steps", "2", "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["holiday.png", "run-0001", "run-0002", "run-0007x"]
    assert (out / "holiday.png").read_bytes() == b"a photo"
    assert sorted(p.name for p in (out / "run-0001").iterdir() if p.suffix == ".png") == [
        "0000_0.png", "0001_1.png", "0002_2.png", "grid.png"]
    assert sorted(p.name for p in (out / "run-0002").iterdir() if p.suffix == ".png") == ["0000_0.png", "grid.png"]
    assert "to " + str(out / "run-0002") in res.output
    file = tmp_path / "f"
    file.write_text("x")
    res = CliRunner().invoke(run_main, ["--engine", str(bundle), "--num", "1", "--steps", "2", "--out", str(file)])
    _one_line_error(res, "is a file")


# ---- 11. prompts ----

@pytest.mark.parametrize("prompt,message", [
    ("", "has no words"), ("   ", "has no words"), ("?!.", "has no words"),
    ("a <|mask|> cat", "control token <|mask|>"), ("<|boi|> a small cat", "control token <|boi|>"),
])
def test_11_prompts(prompt, message):
    from migm import assets

    tok = load_tokenizer(assets.SCENES / "base.tokenizer")
    with pytest.raises(PromptError, match=message):
        encode_prompts(tok, [prompt], 16, 256)
    res = CliRunner().invoke(run_main, ["--model", "tiny-scenes", "--prompt", prompt, "--out", "/nonexistent/x"])
    _one_line_error(res, message)


# ---- 12. leftovers and the crash window ----

def test_12_interrupted_swap_is_restored(bundle, tmp_path):
    plan = _copy(bundle, tmp_path, "b.plan")
    dead = _dead_pid()
    os.replace(plan, tmp_path / f".b.plan.old-{HOST}-{dead}")  # killed between the swap's two renames
    stage = tmp_path / f".b.plan.stage-{HOST}-{dead}-abc"
    stage.mkdir()
    (stage / "half.onnx").write_bytes(b"half")
    with atomic_dir(tmp_path / "other.plan"):  # any staged write beside it: nothing of b.plan's
        pass
    assert not plan.exists()
    from migm.fileio import recover_dir

    recover_dir(plan)  # what every build and the default bundle do first
    assert verify_bundle(plan).precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.plan", "other.plan"]


@pytest.mark.slow  # a build in a subprocess
def test_12_killed_build_leaves_the_old_bundle_and_no_leftovers(tiny, tmp_path):
    root = tiny[0]
    out = tmp_path / "k.plan"
    build_bundle(out, BuildSettings(precision="fp32"), root / "base", root / "vq", root / "sc")
    before = _snapshot(out)
    tmp_before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    cmd = [sys.executable, "-m", "migm.cli.export", "build", "--backend", "ort", "--precision", "fp16", "--base",
           str(root / "base"), "--vq", str(root / "vq"), "--shortcut", str(root / "sc"), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".k.plan.stage-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _snapshot(out) == before  # the old bundle, whole
    leftover_tmp = {n for n in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - tmp_before
                    if n.startswith("migm-build")}
    assert not leftover_tmp  # no work folders in the temp dir: the work happens in the stage
    build_bundle(out, BuildSettings(precision="fp32"), root / "base", root / "vq", root / "sc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.plan"]  # the next build removed the stage
