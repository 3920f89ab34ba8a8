"""`migm-serve` for real: a Triton server (PyTriton) on loopback ports serving the shipped model,
asked over HTTP and gRPC with tritonclient. Needs the serve extra (`make test-serve` installs it)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from migm.serving.ports import free_ports

pytest.importorskip("pytriton", reason="needs the serve extra: pip install -e '.[serve]' (make test-serve)")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient (the serve extra)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (the serve extra)")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Triton server

MODEL = "tiny-animals"
FAST = dict(steps=8, budget=4)  # the shortcut on 4 of 8 steps: quick on two cores


class Server:
    """`migm-serve --model tiny-animals` in its own session, on free loopback ports."""

    def __init__(self, tmp, *args):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = tmp / f"serve-{self.http}.log"
        cmd = [sys.executable, "-m", "migm.cli.serve", "--model", MODEL, "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               "--triton-log", str(tmp / f"triton-{self.http}.log"), *args]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
        deadline = time.monotonic() + 120
        while self.get(f"/v2/models/{MODEL}/ready")[0] != 200:
            assert self.proc.poll() is None, f"migm-serve exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"not ready after 120 s:\n{self.log.read_text()}"
            time.sleep(0.5)

    def get(self, path, port=None):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.http}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None, ""

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a long batcher delay, so requests sent together are batched together
    srv = Server(tmp_path_factory.mktemp("serve"), "--queue-delay-ms", "300")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


def _inputs(module, classes, seeds, **optional):
    arrays = {"class": np.array([[c.encode()] for c in classes], dtype=object),
              "seed": np.array(seeds, dtype=np.int64).reshape(-1, 1)}
    for name, values in optional.items():
        dtype = {"steps": np.int64, "budget": np.int64, "strategy": object, "guidance": np.float32}[name]
        arrays[name] = np.array(values, dtype=dtype).reshape(-1, 1)
    out = []
    for name, arr in arrays.items():
        i = module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def _ask(server, classes, seeds, protocol="http", **optional):
    module = httpclient if protocol == "http" else grpcclient
    url = f"127.0.0.1:{server.http if protocol == 'http' else server.grpc}"
    client = module.InferenceServerClient(url=url)
    try:
        r = client.infer(MODEL, _inputs(module, classes, seeds, **optional))
        return {"tokens": r.as_numpy("tokens"), "image": r.as_numpy("image"), "png": r.as_numpy("png")[:, 0],
                "error": [e.decode() for e in r.as_numpy("error")[:, 0]],
                "stats": [json.loads(s) for s in r.as_numpy("stats")[:, 0]]}
    finally:
        client.close()


def test_health_readiness_metrics_and_both_protocols(server):
    assert server.get("/v2/health/live")[0] == 200 and server.get("/v2/health/ready")[0] == 200
    status, body = server.get(f"/v2/models/{MODEL}")
    assert status == 200 and '"name":"class"' in body and '"name":"png"' in body
    by_http = _ask(server, ["cat", "zebra"], [1, 2], **{k: [v] * 2 for k, v in FAST.items()})
    by_grpc = _ask(server, ["cat", "zebra"], [1, 2], protocol="grpc", **{k: [v] * 2 for k, v in FAST.items()})
    assert by_http["error"] == ["", ""] and np.array_equal(by_http["tokens"], by_grpc["tokens"])
    assert by_http["image"].shape == (2, 32, 32, 1) and by_http["png"][0].startswith(b"\x89PNG")
    assert by_http["stats"][0]["base_calls"] == 4 and by_http["stats"][0]["strategy"] == "shortcut"
    status, metrics = server.get("/metrics", port=server.metrics)
    success = [line for line in metrics.splitlines() if line.startswith("nv_inference_request_success{")
               and f'model="{MODEL}"' in line]
    assert status == 200 and success and float(success[0].split()[-1]) >= 2


def test_a_request_gives_the_same_images_alone_and_in_a_mixed_batch(server):
    alone = _ask(server, ["cat"], [7], **{k: [v] for k, v in FAST.items()})
    assert alone["error"] == [""] and alone["stats"][0]["rows"] == 1
    # eight clients at once (the batcher waits 300 ms): other classes and seeds with the same
    # settings, other settings, a bad row; the watched request is among them
    asks = [(["cat"], [7], FAST)] + [([c], [s], FAST) for c, s in [("dog", 7), ("cat", 8), ("zebra", 1)]] + \
        [(["cat"], [7], dict(steps=8)), (["bird"], [3], dict(steps=6, budget=2)), (["unicorn"], [7], FAST),
         (["cat", "horse"], [9, 7], FAST)]
    answers = [None] * len(asks)

    def ask(i, classes, seeds, settings):
        answers[i] = _ask(server, classes, seeds, protocol="grpc" if i % 2 else "http",
                          **{k: [v] * len(classes) for k, v in settings.items()})

    threads = [threading.Thread(target=ask, args=(i, *a)) for i, a in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    watched = answers[0]
    assert watched["error"] == [""] and watched["stats"][0]["rows"] >= 2, watched["stats"]  # it was batched
    assert np.array_equal(watched["tokens"], alone["tokens"]) and np.array_equal(watched["image"], alone["image"])
    assert "unknown class 'unicorn'" in answers[6]["error"][0]
    assert all(e == "" for i, a in enumerate(answers) if i != 6 for e in a["error"])
    assert not np.array_equal(answers[4]["tokens"], alone["tokens"])  # same class and seed, vanilla N = 8
    # and inside a multi-row request
    rows = _ask(server, ["zebra", "cat", "dog"], [3, 7, 7], **{k: [v] * 3 for k, v in FAST.items()})
    assert np.array_equal(rows["tokens"][1], alone["tokens"][0])


def test_bad_requests_get_errors_naming_the_problem_and_the_server_keeps_serving(server):
    got = _ask(server, ["cat", "unicorn", "dog", "cow", "bear"], [1, 1, 1, 1, -4], steps=[8, 8, 0, 8, 8],
               budget=[4, 4, 4, 9, 4])
    assert got["error"][0] == "" and "unknown class 'unicorn'" in got["error"][1]
    assert "steps must be an integer between 1 and" in got["error"][2]
    assert "budget B=9 must be between 1 and the number of steps N=8" in got["error"][3]
    assert "seed must be an integer between 0 and" in got["error"][4]
    assert got["png"][1] == b"" and not got["image"][1].any() and got["image"][0].any()
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http}")
    cases = {
        "inference request batch-size must be <= 8": _inputs(httpclient, ["cat"] * 9, list(range(9))),
        "missing required input(s) ['seed']": _inputs(httpclient, ["cat"], [1])[:1],
        "inference input 'seed' data-type is 'FP32', but model 'tiny-animals' expects 'INT64'": [
            _inputs(httpclient, ["cat"], [1])[0], httpclient.InferInput("seed", [1, 1], "FP32")],
    }
    cases[next(k for k in cases if "FP32" in k)][1].set_data_from_numpy(np.ones((1, 1), np.float32))
    for message, inputs in cases.items():
        with pytest.raises(InferenceServerException, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            client.infer(MODEL, inputs)
    client.close()
    assert _ask(server, ["cat"], [1], **{k: [v] for k, v in FAST.items()})["error"] == [""]


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path):
    srv = Server(tmp_path, "--drain-timeout", "120")  # room for a slow, shared machine
    answer = {}

    def slow():  # four images, every step on the base model: a few seconds
        answer.update(_ask(srv, ["cat"] * 4, list(range(4)), steps=[16] * 4))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.0)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(150)
    assert answer.get("error") == [""] * 4 and answer["image"].shape == (4, 32, 32, 1)
    assert srv.stop(timeout=150) == 0
    log = srv.log.read_text()
    assert "SIGTERM: taking no new requests" in log and "stopped after 1 batches" in log, log
    assert srv.get("/v2/health/live")[0] is None  # nothing listens any more
    with pytest.raises(ProcessLookupError):  # tritonserver and its helpers are gone too
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.killpg(srv.proc.pid, 0)
            time.sleep(0.2)
