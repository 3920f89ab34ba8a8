"""Load test of `migm-serve`: C client processes x R requests each, over HTTP and gRPC (tritonclient),
against a running server, and the same images from `Pipeline` called directly in one process.

    python benchmarks/serve_load.py --clients 8 --requests 50 --steps 16 --budget 6

Without --http/--grpc it starts `migm-serve` itself (the shipped model's bundle, or --engine/--model)
on free loopback ports and stops it with SIGTERM at the end. Each request is one image: class
(i mod 10), seed i, for i = client * R + r, so every request is distinct. Reported per protocol:
images/s over the wall time from the moment all clients start, p50/p99 latency as the client sees
it (queueing included), failed (an error answer) and lost (no answer at all: timeout, dropped
connection), rows per executed batch (Triton's metrics), and whether every image's tokens equal
the in-process run's. In-process baselines (after the server stopped): one `generate` call per
request in order, and the same rows in batches of the server's largest size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from migm.serving.ports import free_ports  # stdlib only: the spawned clients may import it

CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def digest(tokens) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:16]


def client(protocol: str, url: str, model: str, index: int, requests: int, settings: dict, start, results):
    """One client process: R requests one after another; (request id, latency, status, detail) each."""
    if protocol == "http":
        import tritonclient.http as tc  # the serve extra; imported in the client process only
        c = tc.InferenceServerClient(url=url, connection_timeout=600, network_timeout=600)
    else:
        import tritonclient.grpc as tc  # the serve extra
        c = tc.InferenceServerClient(url=url)
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # the serve extra

    def inp(name, arr):
        i = tc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        i.set_data_from_numpy(arr)
        return i

    out = []
    c.is_server_live()  # connected
    start.wait()  # every client is ready: the clock starts
    for r in range(requests):
        rid = index * requests + r
        inputs = [inp("class", np.array([[CLASSES[rid % 10].encode()]], dtype=object)),
                  inp("seed", np.array([[rid]], dtype=np.int64))]
        inputs += [inp(k, np.array([[v]], dtype=np.int64)) for k, v in settings.items()]
        wanted = [tc.InferRequestedOutput(n) for n in ("tokens", "error", "png")]
        t0 = time.perf_counter()
        try:
            kw = {"client_timeout": 600} if protocol == "grpc" else {}
            res = c.infer(model, inputs, outputs=wanted, **kw)
            error = res.as_numpy("error")[0, 0].decode()
            ok = not error and res.as_numpy("png")[0, 0].startswith(b"\x89PNG")
            out.append((rid, time.perf_counter() - t0, "ok" if ok else "failed",
                        digest(res.as_numpy("tokens")[0]) if ok else error))
        except InferenceServerException as e:  # the server answered with an error
            out.append((rid, time.perf_counter() - t0, "failed", str(e)[:200]))
        except Exception as e:  # no answer: a timeout, a dropped connection
            out.append((rid, time.perf_counter() - t0, "lost", f"{type(e).__name__}: {e}"[:200]))
    c.close()
    results.put((index, out))


def metrics(port: int, model: str) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    got = {}
    for line in text.splitlines():
        for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
                     "nv_inference_request_failure"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                got[name] = got.get(name, 0) + float(line.split()[-1])
    return got


def run_clients(protocol, url, model, clients, requests, settings, metrics_port) -> dict:
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=client, args=(protocol, url, model, i, requests, settings, start, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    before = metrics(metrics_port, model)
    start.wait(timeout=300)
    t0 = time.perf_counter()
    rows = []
    for _ in procs:
        rows += results.get(timeout=3600)[1]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    after = metrics(metrics_port, model)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return summarize(f"migm-serve, {protocol}", clients, requests, rows, wall) | {
        "rows_per_batch": round(delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1), 2),
        "tokens": {rid: d for rid, _, status, d in rows if status == "ok"}}


def summarize(setup, clients, requests, rows, wall) -> dict:
    lat = np.array([t for _, t, status, _ in rows if status == "ok"])
    done = len(lat)
    sent = clients * requests
    return {"setup": setup, "clients": clients, "requests": requests, "images": done, "wall_s": round(wall, 2),
            "images_per_s": round(done / wall, 3), "p50_s": round(float(np.percentile(lat, 50)), 3) if done else None,
            "p99_s": round(float(np.percentile(lat, 99)), 3) if done else None,
            "failed": sum(status == "failed" for _, _, status, _ in rows),
            "lost": sent - len(rows) + sum(status == "lost" for _, _, status, _ in rows),
            "errors": sorted({d for _, _, status, d in rows if status != "ok"})[:5]}


def baselines(args, settings, sent: int, largest: int) -> list[dict]:
    """The same requests through `Pipeline` in this process: one call each, then in batches."""
    # here, not at the top: the spawned client processes import this file and need none of it
    from migm.runtime import Pipeline
    from migm.runtime.cache import default_bundle
    from migm.serving.rows import generate_rows, preferred_sizes, read_row

    pipe = Pipeline.from_checkpoints(model=args.model) if args.model else \
        Pipeline.from_bundle(args.engine or default_bundle(), backend=args.backend)
    pipe.generate(["cat"], steps=1)  # warm-up, as the server does
    kw = {"steps": settings.get("steps"), "budget": settings.get("budget")}
    out, tokens = [], {}
    rows = []
    t0 = time.perf_counter()
    for rid in range(sent):  # a request at a time, as a single-threaded server would
        t = time.perf_counter()
        tok = pipe.generate_tokens([CLASSES[rid % 10]], seed=[rid], **kw)
        pipe.decode(tok)
        rows.append((rid, time.perf_counter() - t, "ok", digest(tok[0])))
        tokens[rid] = digest(tok[0])
    out.append(summarize("Pipeline in-process, one call per request", 1, sent, rows, time.perf_counter() - t0)
               | {"tokens": tokens})
    t0 = time.perf_counter()
    checked = [read_row(pipe, CLASSES[rid % 10], rid, **kw) for rid in range(sent)]
    results = generate_rows(pipe, checked, preferred_sizes(largest))
    wall = time.perf_counter() - t0
    assert all(r.error is None for r in results)
    same = sum(digest(r.tokens) == tokens[rid] for rid, r in enumerate(results))
    out.append({"setup": f"Pipeline in-process, batches of {largest}", "clients": 1, "requests": sent,
                "images": sent, "wall_s": round(wall, 2), "images_per_s": round(sent / wall, 3), "p50_s": None,
                "p99_s": None, "failed": 0, "lost": 0, "identical_to_one_call_each": f"{same}/{sent}"})
    return out


def start_server(args, log: Path):
    http, grpc, metrics_port = free_ports(3)
    cmd = [sys.executable, "-m", "migm.cli.serve", "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics_port), "--max-batch", str(args.max_batch), "--backend", args.backend,
           "--queue-delay-ms", str(args.queue_delay_ms)]
    cmd += ["--engine", args.engine] if args.engine else ["--model", args.model] if args.model else []
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            name = args.name or _served_name(log)
            if name and urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{name}/ready",
                                               timeout=5).status == 200:
                return proc, name, http, grpc, metrics_port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"migm-serve did not come up:\n{log.read_text()}")
        time.sleep(0.5)


def _served_name(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if "ready: model '" in line:
            return line.split("ready: model '")[1].split("'")[0]
    return None


def table(rows) -> str:
    head = "| setup | clients | requests each | images/s | p50 (s) | p99 (s) | failed | lost | rows per batch |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        fmt = lambda v: "-" if v is None else v
        reqs = r["requests"] if r["clients"] > 1 else f"{r['requests']} (all)"
        lines.append(f"| {r['setup']} | {r['clients']} | {reqs} | {r['images_per_s']:.2f} | {fmt(r['p50_s'])} | "
                     f"{fmt(r['p99_s'])} | {r['failed']} | {r['lost']} | {r.get('rows_per_batch', '-')} |")
    return "\n".join(lines)


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # migm logs what it builds or rebuilds
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="Requests per client, one image each.")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--http", default=None, help="A running server's HTTP host:port (else one is started).")
    ap.add_argument("--grpc", default=None, help="A running server's gRPC host:port.")
    ap.add_argument("--metrics-port", type=int, default=8002, help="A running server's metrics port.")
    ap.add_argument("--name", default=None, help="The model's name on a running server.")
    ap.add_argument("--engine", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-delay-ms", type=float, default=5.0)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/serving/load")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]  # this machine is shared: say how busy it was
    settings = {k: v for k, v in (("steps", args.steps), ("budget", args.budget)) if v is not None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server = None
    if args.http or args.grpc:
        http_url, grpc_url, name, metrics_port = args.http, args.grpc, args.name or "tiny-animals", args.metrics_port
    else:
        server, name, http, grpc, metrics_port = start_server(args, out.with_suffix(".server.log"))
        http_url, grpc_url = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    rows = []
    try:
        for protocol in args.protocols.split(","):
            url = http_url if protocol == "http" else grpc_url
            rows.append(run_clients(protocol, url, name, args.clients, args.requests, settings, metrics_port))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "tokens"}), flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
    if not args.no_baseline:
        rows += baselines(args, settings, args.clients * args.requests, args.max_batch)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "tokens"}), flush=True)
        ref = next(r["tokens"] for r in rows if r["setup"].endswith("one call per request"))
        for r in rows:
            if not r["setup"].startswith("Pipeline"):
                same = sum(ref.get(rid) == d for rid, d in r["tokens"].items())
                r["identical_to_in_process"] = f"{same}/{len(r['tokens'])}"
    for r in rows:
        r.pop("tokens", None)
    doc = {"settings": settings or "the model's defaults", "clients": args.clients, "requests": args.requests,
           "machine": f"{os.cpu_count()} CPUs", "max_batch": args.max_batch, "queue_delay_ms": args.queue_delay_ms,
           "date": time.strftime("%Y-%m-%d"), "load_average_1min": [load_before, os.getloadavg()[0]], "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    for r in rows:
        if "identical_to_in_process" in r or "identical_to_one_call_each" in r:
            print(r["setup"], "identical tokens:", r.get("identical_to_in_process") or r["identical_to_one_call_each"])


if __name__ == "__main__":
    main()
