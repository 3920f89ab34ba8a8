"""Batch generation at scale: the same `migm-generate` job in one process and on a local Ray cluster
with 1 and 2 workers (images/s, whether the files are identical), then a worker killed mid-job and
the whole job killed and resumed.

    python benchmarks/generate_scale.py --classes 10 --seeds 0-7 --steps 16 --budget 6 --shard-size 8

Every run is `migm-generate` as a user runs it (the shipped model's bundle unless --engine), into
its own directory under --work; a local Ray cluster is started by each --ray run (on loopback).
images/s counts from the moment the workers are ready (the log's "made N rows in T s"); the
wall time includes starting Ray and loading a pipeline per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CLASSES = "bear,bird,cat,cow,dog,elephant,giraffe,horse,sheep,zebra"


def files(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def start(job: list[str], out: Path, *extra: str):
    log = out.with_suffix(f".{len(list(out.parent.glob(out.name + '.*.log')))}.log")
    cmd = [sys.executable, "-m", "migm.cli.generate", *job, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT), log


def wait_for(log: Path, pattern: str, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while not (m := re.search(pattern, log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {pattern!r} in {log}:\n{log.read_text()}")
        time.sleep(0.1)
    return m


def run(name: str, job, out: Path, *extra) -> dict:
    t0 = time.perf_counter()
    proc, log = start(job, out, *extra)
    if proc.wait() != 0:
        raise SystemExit(f"{name} failed:\n{log.read_text()}")
    wall = time.perf_counter() - t0
    made = re.search(r"made (\d+) rows in ([\d.]+) s: ([\d.]+) images/s", log.read_text())
    ready = re.search(r"workers ready .* in ([\d.]+) s", log.read_text())
    row = {"run": name, "images": int(made.group(1)), "generate_s": float(made.group(2)),
           "images_per_s": float(made.group(3)), "wall_s": round(wall, 1),
           "workers_ready_s": float(ready.group(1)) if ready else None}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10, help="How many of the ten classes.")
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--steps", default="16")
    ap.add_argument("--budget", default="6")
    ap.add_argument("--shard-size", default="8")
    ap.add_argument("--engine", default=None)
    ap.add_argument("--work", default="/tmp/migm-generate-scale")
    ap.add_argument("--out", default="benchmarks/results/serving/ray")
    args = ap.parse_args()

    job = ["--classes", ",".join(CLASSES.split(",")[:args.classes]), "--seeds", args.seeds, "--steps", args.steps,
           "--budget", args.budget, "--shard-size", args.shard_size]
    job += ["--engine", args.engine] if args.engine else []
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    rows = [run("one process (2 threads)", job, work / "single"),
            run("Ray, 1 worker x 1 CPU", job, work / "ray1", "--ray", "--workers", "1"),
            run("Ray, 1 worker x 2 CPUs", job, work / "ray1x2", "--ray", "--workers", "1", "--cpus-per-worker", "2"),
            run("Ray, 2 workers x 1 CPU", job, work / "ray2", "--ray", "--workers", "2")]
    reference = files(work / "single")
    for row, name in zip(rows[1:], ("ray1", "ray1x2", "ray2")):
        row["identical_to_one_process"] = files(work / name) == reference

    # a worker killed mid-job: its shard goes to a new worker, the job completes
    out = work / "killed"
    proc, log = start(job, out, "--ray", "--workers", "2")
    pid = wait_for(log, r"pids (\d+), (\d+)\)", proc).group(1)
    wait_for(log, r"\(1/\d+ done\)", proc)
    os.kill(int(pid), signal.SIGKILL)
    rc = proc.wait()
    text = log.read_text()
    kill = {"run": "Ray, 2 workers, one SIGKILLed after the first shard", "exit_code": rc,
            "requeued": len(re.findall(r"a worker died making shard", text)),
            "identical_to_one_process": files(out) == reference}
    # the whole job killed after two shards, then run again
    out = work / "resumed"
    proc, log = start(job, out, "--ray", "--workers", "2")
    wait_for(log, r"\(2/\d+ done\)", proc)
    proc.kill()
    proc.wait()
    done_before = len(list((out / "shards").glob("*.jsonl")))
    proc, log = start(job, out, "--ray", "--workers", "2")
    rc = proc.wait()
    skipped = re.search(r"(\d+) shards already done, skipped", log.read_text())
    resume = {"run": "Ray, 2 workers, the job SIGKILLed after 2 shards, then rerun", "exit_code": rc,
              "shards_done_at_kill": done_before, "skipped_on_rerun": int(skipped.group(1)) if skipped else 0,
              "identical_to_one_process": files(out) == reference}
    doc = {"job": job, "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs",
           "load_average_1min": [load_before, os.getloadavg()[0]], "runs": rows, "kill": kill, "resume": resume}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["| run | images | images/s (generating) | wall s (incl. Ray start, model loads) | identical files |",
             "|---|---|---|---|---|"]
    for r in rows:
        same = {True: "yes", False: "NO"}.get(r.get("identical_to_one_process"), "(reference)")
        lines.append(f"| {r['run']} | {r['images']} | {r['images_per_s']:.2f} | {r['wall_s']} | {same} |")
    lines += ["", f"- {kill['run']}: exit {kill['exit_code']}, shards queued again {kill['requeued']}, identical "
              f"files: {kill['identical_to_one_process']}",
              f"- {resume['run']}: {resume['shards_done_at_kill']} shards on disk at the kill, "
              f"{resume['skipped_on_rerun']} skipped by the rerun, exit {resume['exit_code']}, identical files: "
              f"{resume['identical_to_one_process']}"]
    out_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
