"""A pipeline served as one Triton model through PyTriton (the `serve` extra).

Inputs, one row per image (a request may carry several rows):
    class | prompt  BYTES   a class name or index (class-conditional model) or a text prompt
    seed            INT64   fixes the image, whatever the row is batched with
    steps           INT64   optional: N (default: the model's)
    budget          INT64   optional: B, steps that run the base model; 0 or absent: all N
    strategy        BYTES   optional: vanilla, shortcut, reuse, ...; empty or absent: shortcut when B < N
    guidance        FP32    optional: the CFG weight (default: the model's)
Outputs, one per row (a client asks for the ones it wants):
    image  UINT8 [H, W, C];  png  BYTES (a PNG file);  tokens  INT32 [L] (the token grid)
    error  BYTES (empty when the row succeeded)
    stats  BYTES (JSON: steps, budget, strategy, guidance, base_calls, rows, padded_to, ms)

Triton's dynamic batcher merges requests; `ServedModel.infer` checks every row on its own (a
bad row gets its `error`, its batch mates are unaffected), groups rows by equal settings and
runs each group as one padded batch (`rows.generate_rows`). The whole step loop runs here, in
the server process. Errors Triton itself catches (a missing input, a wrong dtype, a request
larger than the largest batch) come back as the request's error before any of this runs.
"""

from __future__ import annotations

import json
import os
import signal
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MigmError
from ..runtime.images import png_bytes, to_uint8
from ..runtime.pipeline import Pipeline
from .rows import generate_rows, preferred_sizes, read_row


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    queue_delay_ms: float = 5.0  # how long Triton's batcher waits for more requests to fill a batch
    drain_timeout_s: int = 30  # on SIGTERM: how long in-flight requests may take to finish
    triton_log: Path | None = None  # tritonserver's own log (None: PyTriton prints it)


class ServedModel:
    """A pipeline as a batched inference function over numpy arrays (Triton's layout: [rows, 1])."""

    def __init__(self, pipe: Pipeline, name: str, max_batch: int = 8, log: Callable[[str], None] | None = None):
        self.pipe, self.name, self.log = pipe, name, log
        self.sizes = preferred_sizes(max_batch)
        self.kind = pipe.family.condition_kind  # the condition input's name: "class" or "prompt"
        self.batches = 0
        # what a drain cut short: rows still running when the server stopped, or finished after the
        # drain deadline (Triton no longer delivers them); set by serve() on SIGTERM
        self.deadline: float | None = None
        self.in_flight = self.late = 0
        self._lock = threading.Lock()
        # one small generation before serving: lazy initialisations happen now, not in the first
        # request, and error rows get a blank image of the right shape
        blank = pipe.generate(cond=pipe.example_conditions(1), steps=1, seed=0)[0]
        self.image_shape = to_uint8(blank).shape

    def defaults(self) -> dict[str, np.ndarray]:
        """What an absent optional input means (PyTriton's fill_optionals; one value, no batch axis)."""
        return {"steps": np.array([self.pipe.defaults.steps], dtype=np.int64),
                "budget": np.array([0], dtype=np.int64),
                "strategy": np.array([b""], dtype=object),  # BYTES; fill_optionals wants the declared dtype
                "guidance": np.array([self.pipe.defaults.guidance], dtype=np.float32)}

    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        n = len(inputs[self.kind])
        with self._lock:
            self.in_flight += n
        try:
            out = self._infer(n, inputs)
        finally:
            with self._lock:
                self.in_flight -= n
        if self.deadline is not None and time.monotonic() > self.deadline:
            with self._lock:
                self.late += n
            if self.log:
                self.log(f"batch {self.batches}: finished after the drain timeout; its {n} rows were not delivered")
        return out

    def dropped(self) -> int:
        """Rows the drain cut short (still running, or done too late to be delivered)."""
        with self._lock:
            return self.in_flight + self.late

    def _infer(self, n: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        rows = [self._read(inputs, i) for i in range(n)]
        results = generate_rows(self.pipe, rows, self.sizes, log=self.log)
        images = np.zeros((n, *self.image_shape), dtype=np.uint8)
        tokens = np.zeros((n, self.pipe.spec.num_tokens), dtype=np.int32)
        pngs, errors, stats = [], [], []
        for i, res in enumerate(results):
            if res.error is None:
                images[i], tokens[i] = to_uint8(res.image), res.tokens.numpy()
            pngs.append(png_bytes(res.image) if res.error is None else b"")
            errors.append((res.error or "").encode())
            stats.append(json.dumps(res.stats).encode())
        self.batches += 1
        if self.log:
            self.log(self._batch_line(rows, results, time.perf_counter() - t0))
        column = lambda values: np.array(values, dtype=object).reshape(n, 1)  # bytes stay whole as objects
        return {"image": images, "png": column(pngs), "tokens": tokens, "error": column(errors),
                "stats": column(stats)}

    def _read(self, inputs: dict[str, np.ndarray], i: int):
        strategy = inputs["strategy"][i, 0]
        try:
            strategy = strategy.decode("utf-8") if isinstance(strategy, bytes) else str(strategy)
        except UnicodeDecodeError:
            strategy = repr(strategy)  # read_row names it as an unknown strategy
        return read_row(self.pipe, inputs[self.kind][i, 0], int(inputs["seed"][i, 0]),
                        steps=int(inputs["steps"][i, 0]), budget=int(inputs["budget"][i, 0]) or None,
                        strategy=strategy or None, guidance=float(inputs["guidance"][i, 0]))

    def _batch_line(self, rows, results, seconds: float) -> str:
        # one entry per chunk run: its settings, its rows and the size it was padded to
        groups = dict.fromkeys(f"{r.settings.describe()} x{res.stats['rows']}->{res.stats['padded_to']}"
                               for r, res in zip(rows, results) if res.error is None)
        failed = sum(res.error is not None for res in results)
        done = len(rows) - failed
        return (f"batch {self.batches}: {len(rows)} rows, {done} images in {seconds:.2f} s"
                f" ({done / seconds:.1f}/s); groups: {', '.join(groups) or 'none'}"
                + (f"; {failed} rejected (first: {next(r.error for r in results if r.error)})" if failed else ""))


def model_name(source: str | Path) -> str:
    """A Triton model name from a bundle path or model name: tiny.plan -> tiny."""
    stem = Path(str(source).rstrip("/")).name.removesuffix(".plan")
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "migm"


def tensors(model: ServedModel):
    """PyTriton's input and output specs for `model` (shapes exclude the batch axis)."""
    from pytriton.model_config import Tensor  # optional heavy dependency (the serve extra)

    inputs = [Tensor(name=model.kind, dtype=np.bytes_, shape=(1,)), Tensor(name="seed", dtype=np.int64, shape=(1,)),
              Tensor(name="steps", dtype=np.int64, shape=(1,), optional=True),
              Tensor(name="budget", dtype=np.int64, shape=(1,), optional=True),
              Tensor(name="strategy", dtype=object, shape=(1,), optional=True),
              Tensor(name="guidance", dtype=np.float32, shape=(1,), optional=True)]
    outputs = [Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1)),
               Tensor(name="png", dtype=np.bytes_, shape=(1,)), Tensor(name="tokens", dtype=np.int32, shape=(-1,)),
               Tensor(name="error", dtype=np.bytes_, shape=(1,)),
               Tensor(name="stats", dtype=np.bytes_, shape=(1,))]
    return inputs, outputs


def serve(model: ServedModel, config: ServerConfig, say: Callable[[str], None]) -> None:
    """Start Triton with `model`, say when it is ready, and serve until SIGTERM or SIGINT; then
    stop taking requests, let in-flight ones finish (up to config.drain_timeout_s) and return."""
    _libpython_on_library_path()
    from pytriton.decorators import batch, fill_optionals  # optional heavy dependency (the serve extra)
    from pytriton.model_config import DynamicBatcher, ModelConfig  # optional heavy dependency (the serve extra)
    from pytriton.triton import Triton, TritonConfig  # optional heavy dependency (the serve extra)

    c = config
    triton = Triton(config=TritonConfig(
        http_address=c.host, http_port=c.http_port, grpc_address=c.host, grpc_port=c.grpc_port,
        metrics_address=c.host, metrics_port=c.metrics_port, exit_timeout_secs=c.drain_timeout_s,
        log_verbose=0, log_file=c.triton_log))
    inputs, outputs = tensors(model)
    # no preferred sizes for Triton: with 1 among them it would dispatch every request at once;
    # batches fill up to max_batch within the delay, and each settings group is padded in infer
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(c.queue_delay_ms * 1000))
    triton.bind(model_name=model.name, infer_func=fill_optionals(**model.defaults())(batch(model.infer)),
                inputs=inputs, outputs=outputs,
                config=ModelConfig(max_batch_size=max(model.sizes), batcher=batcher), strict=True)
    # PyTriton stops cleanly (draining in-flight requests) on KeyboardInterrupt only: make SIGTERM
    # one, and SIGINT too even where a non-interactive shell started us with SIGINT ignored. The
    # signal must reach this process alone: Triton's Python-backend helpers die on a SIGTERM sent
    # to the whole process group (systemd's default KillMode; use KillMode=mixed), failing requests
    signalled = []

    def interrupt(signum, frame):
        if signalled:  # already stopping: a second signal must not cut the drain or the clean-up short
            say(f"{signal.Signals(signum).name}: already stopping")
            return
        signalled.append(signum)
        model.deadline = time.monotonic() + c.drain_timeout_s
        say(f"{signal.Signals(signum).name}: taking no new requests, finishing those in flight "
            f"(up to {c.drain_timeout_s} s)")
        raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, interrupt)
    try:
        triton.run()  # returns once the model is ready
        say(f"ready: model {model.name!r} on http://{c.host}:{c.http_port} and grpc {c.host}:{c.grpc_port}, "
            f"metrics http://{c.host}:{c.metrics_port}/metrics; up to {max(model.sizes)} rows a batch, "
            f"settings groups padded to {'/'.join(map(str, model.sizes))}")
        triton.serve()  # blocks; returns after a signal (in-flight requests done) or if Triton dies
    except KeyboardInterrupt:
        pass  # a signal during start-up
    finally:
        triton.stop()  # a no-op after serve()'s own stop
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not signalled:
        log = f"; its log: {c.triton_log}" if c.triton_log else ""
        raise MigmError(f"tritonserver stopped unexpectedly after {model.batches} batches{log}")
    if model.dropped():
        raise MigmError(f"the {c.drain_timeout_s} s drain timeout cut {model.dropped()} requests short: they were "
                        "not answered (give a longer --drain-timeout)")
    say(f"stopped after {model.batches} batches")


def _libpython_on_library_path() -> None:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH, which tritonserver inherits: its
    Python backend stub links libpython3.x.so and would otherwise load the system's copy of another
    patch release (model load then fails with `'_thread.RLock' object has no attribute ...`)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and (not paths or paths[0] != libdir):
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + [p for p in paths if p != libdir])
