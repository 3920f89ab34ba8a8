"""Batch generation: conditions x seeds in, images and a JSON-lines manifest out, in deterministic
shards, resumable, in one process or on a Ray cluster with one Pipeline per worker.

Row i is (condition i // len(seeds), seed i % len(seeds)); shard k holds rows k*S .. k*S+S-1
(S = shard size), so what a shard holds never depends on how many workers there are. Every
row runs with its own seed (`rows.generate_rows`), so its image does not depend on the rows
beside it either: a Ray run writes the same files as a single-process one.

    OUT/job.json            the job; a rerun must ask for the same job (or use another OUT)
    OUT/images/000042-cat-s7.png
    OUT/shards/00002.jsonl  one line per row of shard 2, written (atomically) after its images:
                            it exists only once the shard is done, and a rerun skips the shard
    OUT/manifest.jsonl      every shard's lines in row order, written when the last shard is done

A worker killed mid-shard leaves at most some of that shard's images, each whole (written
atomically); the shard is made again, on another worker or in the rerun, to the same bytes.
The bundle and OUT must be where every worker sees them (one machine, or a shared filesystem).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import assets
from ..errors import ConfigError, MigmError
from ..fileio import atomic_path, clip, read_json, read_json_lines, sha256_file
from ..models.checkpoint import checkpoint_digest
from ..runtime.images import save_png, slug
from ..runtime.pipeline import Pipeline
from .rows import generate_rows, preferred_sizes, read_row

Say = Callable[[str], None]
# what a manifest line keeps of a row's stats: what made the image, not how it was batched
KEPT_STATS = ("steps", "budget", "strategy", "guidance", "base_calls")
MAX_ROWS = 1_000_000  # conditions x seeds: more is a typo (a seed range of 10**10 would fill memory)
MAX_SEEDS = 100_000  # like migm-run --num
MAX_SHARD = 4096
MAX_BATCH = 1024  # rows per generate call: CFG doubles it, and a large model's attention grows with it
MAX_SHARD_BYTES = 64 << 20


@dataclass(frozen=True)
class Job:
    conditions: tuple[str, ...]  # class names or indices, or prompts
    seeds: tuple[int, ...]
    model: str  # a bundle's path, or a shipped model's name (its checkpoints on the torch backend)
    backend: str = "auto"
    steps: int | None = None  # None: the model's
    budget: int | None = None
    strategy: str | None = None
    guidance: float | None = None
    shard_size: int = 16
    batch_size: int = 8  # rows per generate call (a shard's last chunk is padded to 1, 2, 4, ...)
    model_digest: str = ""  # the weights' identity, filled in by `job()`

    @property
    def num_rows(self) -> int:
        return len(self.conditions) * len(self.seeds)

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def shard(self, k: int) -> list[tuple[int, str, int]]:
        """Shard k's rows: (row index, condition, seed)."""
        n = len(self.seeds)
        return [(i, self.conditions[i // n], self.seeds[i % n])
                for i in range(k * self.shard_size, min((k + 1) * self.shard_size, self.num_rows))]

    def to_dict(self) -> dict:
        return {**asdict(self), "conditions": list(self.conditions), "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, doc: dict) -> "Job":
        """A Job from a job file's dict; a file that does not describe one is a ConfigError."""
        try:
            if not isinstance(doc.get("conditions"), list) or not isinstance(doc.get("seeds"), list):
                raise ValueError("it lists no conditions and seeds")
            return cls(**{**doc, "conditions": tuple(doc["conditions"]), "seeds": tuple(doc["seeds"])})
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a migm-generate job ({clip(str(e))})") from None


def job(conditions, seeds, model: str, **settings) -> Job:
    """A checked Job, carrying the digest of the weights it will run."""
    if not conditions:
        raise ConfigError("no classes or prompts given")
    if not seeds:
        raise ConfigError("no seeds given")
    model = str(model)
    if model in assets.MODELS:
        d = assets.model_dir(model)
        digest = "".join(checkpoint_digest(d / n)[:8] for n in ("base", "shortcut", "vq"))
    elif (Path(model) / "manifest.json").exists():
        model = str(Path(model).resolve())  # workers run elsewhere
        digest = sha256_file(Path(model) / "manifest.json")[:16]  # the manifest holds every file's hash
    else:
        raise ConfigError(f"{model} is neither a bundle (no manifest.json) nor a shipped model "
                          f"({', '.join(assets.MODELS)})")
    if len(conditions) * len(seeds) > MAX_ROWS:
        raise ConfigError(f"{len(conditions)} conditions x {len(seeds)} seeds is over {MAX_ROWS} rows: split the job")
    j = Job(tuple(str(c) for c in conditions), tuple(int(s) for s in seeds), model, model_digest=digest, **settings)
    if not 1 <= j.shard_size <= MAX_SHARD or not 1 <= j.batch_size <= MAX_BATCH:
        raise ConfigError(f"shard size must be in 1..{MAX_SHARD} and batch size in 1..{MAX_BATCH}, got "
                          f"{j.shard_size} and {j.batch_size}")
    return j


def check_settings(j: Job, pipe: Pipeline) -> None:
    """The job's sampler settings against the model, before OUT is touched (`--steps 256` on a
    64-token model is refused here, not after the folder was made)."""
    pipe.resolve(steps=j.steps, guidance=j.guidance, strategy=j.strategy, budget=j.budget)


def load_pipeline(j: Job, threads: int = 0) -> Pipeline:
    if j.model in assets.MODELS:
        return Pipeline.from_checkpoints(model=j.model)
    return Pipeline.from_bundle(j.model, backend=j.backend, threads=threads)


def prepare(j: Job, out: Path, say: Say = lambda msg: None) -> list[int]:
    """Claim OUT for the job (or check it holds the same job); the shards still to make.

    OUT must be absent, empty, or hold this job's job.json (written first, before any image, so a
    killed run's folder is recognised): anything else is the user's and is refused. A shard on
    disk counts as done only when it verifies (`verify_shard`); any other is made again, said."""
    doc = out / "job.json"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if doc.exists() or doc.is_symlink():
        try:
            old = Job.from_dict(read_json(doc, "job file", ConfigError))
        except ConfigError as e:
            raise ConfigError(f"{out} does not hold a migm-generate job: {e}; use another --out "
                              f"(or delete {doc} if this folder is migm-generate's)") from None
        if old != j:
            diff = ", ".join(k for k, v in j.to_dict().items() if old.to_dict().get(k) != v)
            raise ConfigError(f"{out} holds another job (differs in: {diff}): use another --out, or delete it")
    else:
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"{out} holds files migm-generate did not write (no job.json); choose another --out "
                              "or empty it (migm-generate replaces only what it wrote)")
        with atomic_path(doc) as tmp:
            tmp.write_text(json.dumps(j.to_dict(), indent=1))
    todo = []
    for k in range(j.num_shards):
        problem = verify_shard(j, out, k)
        if problem is not None:
            if problem != "missing":
                say(f"shard {k}: {problem}; it is made again")
            todo.append(k)
    return todo


def expected_file(i: int, cond: str, seed: int) -> str:
    return f"images/{i:06d}-{slug(cond)}-s{seed}.png"


def verify_shard(j: Job, out: Path, k: int) -> str | None:
    """None when shard k on disk is done: its lines parse, number and name the rows the job assigns
    it, and each image is a regular file at its own name inside images/ with its recorded sha256.
    Otherwise what is wrong ("missing" when it was never written)."""
    path = _shard_file(out, k)
    if not path.exists() and not path.is_symlink():
        return "missing"
    try:
        lines = read_json_lines(path, "shard", ConfigError, MAX_SHARD_BYTES)
    except ConfigError as e:
        return clip(str(e))
    rows = j.shard(k)
    if len(lines) != len(rows):
        return f"it lists {len(lines)} rows; the job gives it {len(rows)}"
    for line, (i, cond, seed) in zip(lines, rows):
        got = (line.get("index"), line.get("condition"), line.get("seed")) if isinstance(line, dict) else None
        if got != (i, cond, seed):
            return f"its lines do not match rows {rows[0][0]}..{rows[-1][0]} of the job"
        if "error" in line and "file" not in line:
            continue  # a row its checks rejected: no image, the same again on a rerun
        if line.get("file") != expected_file(i, cond, seed):
            return f"row {i} names {clip(repr(line.get('file')), 80)}, not its image"
        image = out / line["file"]
        if image.is_symlink() or not image.is_file():
            return f"the image of row {i} is missing"
        if line.get("sha256") != sha256_file(image):
            return f"the image of row {i} does not match its recorded sha256"
    return None


def make_shard(pipe: Pipeline, j: Job, k: int, out: Path) -> list[dict]:
    """Write shard k's images, then its manifest lines (the mark that it is done); return the lines.
    Rows that fail their checks get a line with the error and no image."""
    todo = j.shard(k)
    rows = [read_row(pipe, cond, seed, steps=j.steps, budget=j.budget, strategy=j.strategy, guidance=j.guidance)
            for _, cond, seed in todo]
    results = generate_rows(pipe, rows, sizes=preferred_sizes(j.batch_size))
    lines = []
    for (i, cond, seed), res in zip(todo, results):
        line = {"index": i, "shard": k, "condition": cond, "seed": seed}
        if res.error is None:
            name = expected_file(i, cond, seed)
            save_png(res.image, out / name)
            digest = hashlib.sha256(res.tokens.to(torch.int32).numpy().tobytes()).hexdigest()[:16]
            line.update(file=name, sha256=sha256_file(out / name), tokens_sha256=digest,
                        **{k: v for k, v in res.stats.items() if k in KEPT_STATS})
        else:
            line["error"] = clip(res.error)
        lines.append(line)
    with atomic_path(_shard_file(out, k)) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def finish(j: Job, out: Path) -> dict:
    """Join the shards' lines into OUT/manifest.jsonl; a summary of the whole job."""
    lines = []
    for k in range(j.num_shards):
        problem = verify_shard(j, out, k)
        if problem is not None:  # written by this job moments ago: changed under it
            raise ConfigError(f"shard {k} of {out}: {problem}; rerun the same command to make it again")
        lines += read_json_lines(_shard_file(out, k), "shard", ConfigError, MAX_SHARD_BYTES)
    with atomic_path(out / "manifest.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    errors = [line for line in lines if "error" in line]
    return {"images": len(lines) - len(errors), "rejected": len(errors),
            "first_error": errors[0]["error"] if errors else None}


def run_local(j: Job, out: Path, say: Say) -> dict:
    """Every missing shard, in this process, with one pipeline."""
    pipe = load_pipeline(j)
    check_settings(j, pipe)  # before OUT is made
    todo = prepare(j, out, say)
    _say_start(j, todo, say)
    if todo:
        t0 = time.perf_counter()
        for n, k in enumerate(todo, 1):
            t = time.perf_counter()
            lines = make_shard(pipe, j, k, out)
            say(f"shard {k}: {len(lines)} rows in {time.perf_counter() - t:.1f} s ({n}/{len(todo)} done)")
        _say_rate(sum(len(j.shard(k)) for k in todo), time.perf_counter() - t0, say)
    return finish(j, out)


class ShardWorker:
    """A Ray actor's state: one pipeline, loaded once, making whole shards (`run_on_ray`)."""

    def __init__(self, job_doc: dict, out: str, threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.job, self.out = Job.from_dict(job_doc), Path(out)
        self.pipe = load_pipeline(self.job, threads=threads)

    def pid(self) -> int:
        return os.getpid()

    def make(self, k: int) -> tuple[int, int]:
        make_shard(self.pipe, self.job, k, self.out)
        return k, os.getpid()


def run_on_ray(j: Job, out: Path, say: Say, address: str | None = None, workers: int | None = None,
               cpus_per_worker: float = 1, max_lost_workers: int = 8) -> dict:
    """Every missing shard on a Ray cluster (`address`; None: a local one started here), one shard
    in flight per worker. A worker that dies (killed, out of memory, node lost) has its shard
    queued again and is replaced, up to `max_lost_workers` times; the job fails after that, and a
    rerun picks up from the finished shards."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # the private cluster ray.init starts: on loopback (else Ray takes the machine's network
        # address); Ray reads this when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray  # optional heavy dependency (the ray extra)

    out = out.resolve()
    check_settings(j, load_pipeline(j))  # before OUT is made; the workers load their own
    todo = prepare(j, out, say)
    _say_start(j, todo, say)
    if not todo:
        return finish(j, out)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = ray.cluster_resources().get("CPU", 1)
        workers = workers or gpus or max(1, int(cpus // cpus_per_worker))
        # one pipeline per worker, and one GPU each where the cluster has GPUs
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=1 if gpus else 0, max_restarts=0)(ShardWorker)
        threads = max(1, int(cpus_per_worker)) if not gpus else 0
        spawn = lambda: actor.remote(j.to_dict(), str(out), threads)
        pool = [spawn() for _ in range(min(workers, len(todo)))]
        t0 = time.perf_counter()
        try:
            pids = ray.get([w.pid.remote() for w in pool])
        except ray.exceptions.RayActorError as e:
            raise MigmError(f"a Ray worker could not load the model: {_first_line(e)}") from None
        say(f"{len(pool)} Ray workers ready ({gpus and 'one GPU each' or f'{cpus_per_worker:g} CPU each'}; "
            f"pids {', '.join(map(str, pids))}) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        queue, busy, idle, lost, done = deque(todo), {}, list(pool), 0, 0
        while queue or busy:
            while queue and idle:
                w, k = idle.pop(), queue.popleft()
                busy[w.make.remote(k)] = (w, k)
            ready, _ = ray.wait(list(busy), num_returns=1)
            w, k = busy.pop(ready[0])
            try:
                _, pid = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                lost += 1
                if lost > max_lost_workers:
                    raise MigmError(f"{lost} Ray workers died (the last making shard {k}: {_first_line(e)}); "
                                    f"{done} shards were finished: rerun to resume") from None
                queue.appendleft(k)
                idle.append(spawn())
                say(f"a worker died making shard {k} ({_first_line(e)}): shard queued again, new worker started")
                continue
            done += 1
            idle.append(w)
            say(f"shard {k}: {len(j.shard(k))} rows by pid {pid} ({done}/{len(todo)} done)")
        _say_rate(sum(len(j.shard(k)) for k in todo), time.perf_counter() - t0, say)
    finally:
        if started_here:
            ray.shutdown()
    return finish(j, out)


def _shard_file(out: Path, k: int) -> Path:
    return out / "shards" / f"{k:05d}.jsonl"


def _say_start(j: Job, todo: list[int], say: Say) -> None:
    skipped = j.num_shards - len(todo)
    say(f"{j.num_rows} rows ({len(j.conditions)} conditions x {len(j.seeds)} seeds) in {j.num_shards} shards of "
        f"{j.shard_size}" + (f"; {skipped} shards already done, skipped" if skipped else ""))


def _say_rate(rows: int, seconds: float, say: Say) -> None:
    say(f"made {rows} rows in {seconds:.1f} s: {rows / seconds:.2f} images/s")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
