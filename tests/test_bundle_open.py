"""Bundles open fast and never delete what they do not own: the verification stamp in the user's
cache (first open hashes everything, later opens only what changed, --verify everything), and
the target lock that keeps recovery away from directories another process or host may be writing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from migm.cli.run import main as run_main
from migm.engines import bundle as bundle_mod
from migm.engines import stamps
from migm.engines.build import BuildSettings, build_bundle
from migm.engines.bundle import BundleError, verify_bundle
from migm.fileio import HOST, LockBusy, atomic_dir, dir_lock, lock_path, recover_dir
from migm.runtime import Pipeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    root = tiny[0]
    out = tmp_path_factory.mktemp("open") / "tiny.plan"
    return build_bundle(out, BuildSettings(precision="fp32"), root / "base", root / "vq", root / "sc")


@pytest.fixture
def plan(built, tmp_path, monkeypatch):
    """A fresh copy of the bundle, and a fresh user cache (no stamps yet)."""
    monkeypatch.setenv("MIGM_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(built, tmp_path / "site" / "b.plan"))


@pytest.fixture
def hashed(monkeypatch):
    """The bundle files hashed, by name, as verify_bundle hashes them."""
    seen = []
    real = bundle_mod.sha256

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(bundle_mod, "sha256", counting)
    return seen


def _files(plan: Path) -> int:
    doc = json.loads((plan / "manifest.json").read_text())
    return sum(1 + bool(e.get("data_file")) for e in doc["components"].values()) + 2 * len(doc["checkpoints"])


def test_first_open_hashes_all_and_second_none(plan, hashed):
    verify_bundle(plan, full=False)
    assert len(hashed) == _files(plan) > 0
    stamp = stamps.stamp_path(plan, json.loads((plan / "manifest.json").read_text())["digest"])
    assert stamp.is_file() and stamp.is_relative_to(Path(os.environ["MIGM_CACHE"]))  # the cache, not the bundle
    assert not any(p.name.startswith(".") or "stamp" in p.name for p in plan.iterdir())
    hashed.clear()
    verify_bundle(plan, full=False)
    assert hashed == []  # the stamp hit: nothing re-read
    verify_bundle(plan)  # inspect and build: full, always
    assert len(hashed) == _files(plan)


def test_a_modified_file_is_rehashed_even_with_its_mtime_put_back(plan, hashed):
    verify_bundle(plan, full=False)
    target = plan / "decoder.onnx"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime says nothing changed; ctime does
    assert target.stat().st_mtime_ns == st.st_mtime_ns and target.stat().st_size == st.st_size
    hashed.clear()
    with pytest.raises(BundleError, match="decoder.onnx does not match its hash"):
        verify_bundle(plan, full=False)
    assert hashed == ["decoder.onnx"]  # only the changed file was read again


def test_a_touched_file_is_rehashed_alone_and_stamped_again(plan, hashed):
    verify_bundle(plan, full=False)
    os.utime(plan / "base.onnx")  # same bytes, new times
    hashed.clear()
    verify_bundle(plan, full=False)
    assert hashed == ["base.onnx"]
    hashed.clear()
    verify_bundle(plan, full=False)
    assert hashed == []


def test_verify_forces_the_full_check(plan, hashed):
    Pipeline.from_bundle(plan, backend="ort")
    hashed.clear()
    Pipeline.from_bundle(plan, backend="ort")
    assert hashed == []
    Pipeline.from_bundle(plan, backend="ort", verify=True)
    assert len(hashed) == _files(plan)
    hashed.clear()
    out = plan.parent / "out"
    res = CliRunner().invoke(run_main, ["--engine", str(plan), "--verify", "--num", "1", "--steps", "2",
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(hashed) == _files(plan)


@pytest.mark.parametrize("garbage", [b"{not json", b'{"format": "migm-stamp", "version": 1, "files": []}', None])
def test_a_corrupt_or_foreign_stamp_means_a_full_check(plan, hashed, tmp_path, garbage):
    verify_bundle(plan, full=False)
    digest = json.loads((plan / "manifest.json").read_text())["digest"]
    stamp = stamps.stamp_path(plan, digest)
    if garbage is None:  # another bundle's stamp, moved to this key
        other = Path(shutil.copytree(plan, tmp_path / "other.plan"))
        verify_bundle(other, full=False)
        stamp.write_bytes(stamps.stamp_path(other, digest).read_bytes())
    else:
        stamp.write_bytes(garbage)
    hashed.clear()
    verify_bundle(plan, full=False)
    assert len(hashed) == _files(plan)
    assert json.loads(stamp.read_text())["bundle"] == str(plan.resolve())  # written afresh


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_foreign_hosts_lock_and_leftovers_are_left_alone(plan):
    """A lock owned by another host (the flock may not reach across a shared filesystem) keeps every
    reader and writer off the target's leftovers, even ones this host's dead processes left."""
    site = plan.parent
    dead = _dead_pid()
    os.replace(plan, site / f".b.plan.old-{HOST}-{dead}")  # a swap cut between its renames
    theirs = site / ".b.plan.stage-0123456789ab-4242-xyz"  # another host's build in progress
    theirs.mkdir()
    (theirs / "base.onnx").write_bytes(b"being written")
    lock_path(plan).write_text(json.dumps({"host": "0123456789ab", "pid": 4242, "name": "other-node"}))
    before = sorted(p.name for p in site.iterdir())
    recover_dir(plan)
    with pytest.raises(BundleError, match="not a bundle directory"):
        verify_bundle(plan, full=False)  # read_manifest recovers nothing without the lock
    assert sorted(p.name for p in site.iterdir()) == before
    with pytest.raises(LockBusy, match="process 4242 on host other-node"):
        with atomic_dir(plan, wait=0.3):
            pass
    assert sorted(p.name for p in site.iterdir()) == before
    # without the lock, another host's staging directory is still not ours to judge: only ours are recovered
    lock_path(plan).unlink()
    recover_dir(plan)
    assert sorted(p.name for p in site.iterdir()) == sorted(["b.plan", theirs.name])
    assert verify_bundle(plan).precision == "fp32"


def test_a_dead_local_lock_is_taken_over_and_recovered(plan):
    site = plan.parent
    dead = _dead_pid()
    os.replace(plan, site / f".b.plan.old-{HOST}-{dead}")
    stage = site / f".b.plan.stage-{HOST}-{dead}-abc"
    stage.mkdir()
    (stage / "half.onnx").write_bytes(b"half")
    lock_path(plan).write_text(json.dumps({"host": HOST, "pid": dead}))  # its owner died holding it
    verify_bundle(plan, full=False)  # the reader takes the dead lock over, puts the bundle back, cleans up
    assert sorted(p.name for p in site.iterdir()) == ["b.plan"]


def test_a_live_lock_keeps_recovery_off_until_its_process_ends(plan):
    """A live local writer (a real flock in another process): its staging directory stays; once that
    process is killed, its leftovers are this host's dead process's and are recovered."""
    site = plan.parent
    code = ("import sys, tempfile, time\nfrom pathlib import Path\nfrom migm.fileio import HOST, dir_lock\n"
            "import os\np = Path(sys.argv[1])\nwith dir_lock(p):\n"
            "    tempfile.mkdtemp(prefix=f'.{p.name}.stage-{HOST}-{os.getpid()}-', dir=p.parent)\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(plan)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        stages = list(site.glob(".b.plan.stage-*"))
        assert len(stages) == 1
        recover_dir(plan)
        verify_bundle(plan, full=False)
        assert stages[0].is_dir()  # a live lock: left alone
        with pytest.raises(LockBusy, match=f"process {proc.pid} on this host"):
            with dir_lock(plan, wait=0.2):
                pass
    finally:
        proc.kill()
        proc.wait()
    recover_dir(plan)
    assert not stages[0].exists() and not lock_path(plan).exists()
    assert sorted(p.name for p in site.iterdir()) == ["b.plan"]
