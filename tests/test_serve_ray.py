"""`migm-generate --ray` on a real local Ray cluster (2 CPUs, loopback) started here: the same files as
a single-process run, a worker killed mid-job, the driver killed and the job resumed. Needs the ray
extra (`make test-serve` installs it)."""

import os
import re
import secrets
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from migm.cli.generate import main as generate_main
from migm.serving.ports import free_ports

pytestmark = pytest.mark.slow  # starts a Ray cluster

pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]' (make test-serve)")

# 16 images in 8 shards of 2: small enough for two CPU cores, enough shards to kill something mid-job
JOB = ["--model", "tiny-animals", "--classes", "cat,dog,zebra,bird", "--seeds", "0-3", "--steps", "8", "--budget", "4",
       "--shard-size", "2", "--batch-size", "2"]
# every Ray process on loopback (Ray takes the machine's address otherwise), token auth on both sides
# with a token made here (as `ray get-auth-token --generate` makes one): a clean machine has no ~/.ray
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head --block` with 2 CPUs on free loopback ports; its address."""
    tmp = tmp_path_factory.mktemp("ray")
    gcs, *ports = free_ports(8)
    names = ["node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"]
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--include-dashboard", "false",
           "--disable-usage-stats", "--temp-dir", str(tmp)]
    cmd += [arg for name, port in zip(names, ports) for arg in (f"--{name}", str(port))]
    log = tmp / "ray-start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **RAY_ENV})
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        assert head.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    yield f"127.0.0.1:{gcs}"
    head.send_signal(signal.SIGTERM)  # --block: stops every process of the cluster
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job in this process, no Ray."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = CliRunner().invoke(generate_main, JOB + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    return _files(out)


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _start(cluster, out, *extra):
    cmd = [sys.executable, "-m", "migm.cli.generate", *JOB, "--out", str(out), "--ray", "--ray-address", cluster,
           *extra]
    log = out.parent / f"{out.name}-{len(list(out.parent.glob('*.log')))}.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV})
    return proc, log


def _wait_for(log, pattern, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not (m := re.search(pattern, log.read_text())):
        assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return m


def test_two_ray_workers_write_what_one_process_writes(cluster, reference, tmp_path):
    proc, log = _start(cluster, tmp_path / "ray", "--workers", "2")
    assert proc.wait(180) == 0, log.read_text()
    text = log.read_text()
    pids = set(re.findall(r"by pid (\d+)", text))
    assert "2 Ray workers ready" in text and len(pids) == 2, text  # both workers made shards
    assert _files(tmp_path / "ray") == reference


def test_a_worker_killed_mid_job_loses_nothing(cluster, reference, tmp_path):
    out = tmp_path / "killed"
    proc, log = _start(cluster, out, "--workers", "2")
    pids = _wait_for(log, r"pids (\d+), (\d+)\)", proc).groups()
    _wait_for(log, r"shard \d+: 2 rows by pid", proc)  # some work done; both workers busy with more
    os.kill(int(pids[0]), signal.SIGKILL)
    assert proc.wait(180) == 0, log.read_text()
    text = log.read_text()
    assert "a worker died making shard" in text and "new worker started" in text, text
    assert _files(out) == reference
    proc, log = _start(cluster, out)  # and a rerun has nothing left to do
    assert proc.wait(120) == 0 and "8 shards already done, skipped" in log.read_text()


def test_a_killed_job_resumes_where_it_stopped(cluster, reference, tmp_path):
    out = tmp_path / "resumed"
    proc, log = _start(cluster, out, "--workers", "2")
    _wait_for(log, r"\(2/8 done\)", proc)
    proc.kill()  # the driver, and with it its workers
    proc.wait()
    done = len(list((out / "shards").glob("*.jsonl")))
    assert 2 <= done < 8 and not (out / "manifest.jsonl").exists()
    proc, log = _start(cluster, out, "--workers", "2")
    assert proc.wait(180) == 0, log.read_text()
    # a worker may finish its shard in the moment before Ray notices its driver is gone
    skipped = int(re.search(r"(\d+) shards already done, skipped", log.read_text()).group(1))
    assert done <= skipped < 8
    assert _files(out) == reference
