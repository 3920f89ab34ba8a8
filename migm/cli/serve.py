"""`migm-serve`: serve a bundle (or the shipped model) as a Triton model over HTTP and gRPC."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import click

from .. import assets
from ..choices import CHECKPOINT_BACKENDS, RUNTIME_BACKENDS
from ..engines.refit import fit_for_backend
from ..runtime.cache import default_bundle
from ..runtime.pipeline import Pipeline
from ..serving.triton import ServedModel, ServerConfig, model_name, serve
from .common import Command, debug_option, one_line_errors


def _say(message: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {message}")


@click.command(cls=Command)
@click.option("--engine", default=None, type=click.Path(),
              help="A NAME.plan bundle from `migm-export build`. Default: the shipped model's bundle, "
                   "built on first use into ~/.cache/migm (or $MIGM_CACHE).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(RUNTIME_BACKENDS),
              help="As for migm-run: auto picks trt for a TensorRT bundle, torch with CUDA graphs on a GPU, "
                   "ONNX Runtime for an fp32 bundle on a CPU.")
@click.option("--model", type=click.Choice(list(assets.MODELS)), default=None,
              help="Serve a shipped model's checkpoints on the torch backend instead of a bundle.")
@click.option("--name", default=None, help="The Triton model name. Default: the bundle's (tiny.plan -> tiny).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True, help="Prometheus metrics at /metrics.")
@click.option("--max-batch", default=8, show_default=True,
              help="Most rows per batch; rows of equal settings run padded to 1, 2, 4, ... up to this.")
@click.option("--queue-delay-ms", default=5.0, show_default=True,
              help="How long Triton's batcher waits for more requests to fill a batch.")
@click.option("--drain-timeout", default=30, show_default=True,
              help="Seconds in-flight requests get to finish after SIGTERM/SIGINT.")
@click.option("--triton-log", default=None, type=click.Path(dir_okay=False),
              help="tritonserver's own log. Default: a file in the temporary directory (the path is printed).")
@debug_option
@one_line_errors
def main(engine, backend, model, name, host, http_port, grpc_port, metrics_port, max_batch, queue_delay_ms,
         drain_timeout, triton_log):
    """Serve image generation on Triton Inference Server (through PyTriton), over HTTP and gRPC.

    One Triton model per bundle. Each row of a request makes one image from a class (or a prompt,
    for a text-to-image model) and a seed, with optional steps, budget, strategy and guidance; it
    returns the image (uint8 array and PNG), an error (empty on success) and JSON stats. Triton's
    dynamic batcher merges requests; rows of equal settings run as one padded batch, and a row's
    image depends only on its own inputs. Health: /v2/health/live, /v2/models/NAME/ready.
    Stop with SIGTERM or Ctrl-C: requests in flight finish first. See docs/cli.md.
    """
    if importlib.util.find_spec("pytriton") is None:
        raise click.ClickException("migm-serve needs PyTriton: pip install 'migm[serve]' (docs/cli.md)")
    if max_batch < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-batch")
    if queue_delay_ms < 0:
        raise click.BadParameter("must be >= 0", param_hint="--queue-delay-ms")
    if model and engine:
        raise click.UsageError("give --engine or --model, not both")
    if model:
        if backend not in CHECKPOINT_BACKENDS:
            raise click.BadParameter("checkpoints run on the torch backend only", param_hint="--backend")
        pipe, source = Pipeline.from_checkpoints(model=model), model
    else:
        source = engine or default_bundle(backend=backend)
        fit_for_backend(source, backend, say=_say)  # TensorRT engines made elsewhere: rebuilt here, once
        pipe = Pipeline.from_bundle(source, backend=backend)
    if pipe.family.needs_tokenizer and pipe.tokenizer is None:
        raise click.ClickException(f"{source} carries no tokenizer, so text prompts cannot be read: rebuild the "
                                   "bundle from a base checkpoint with BASE.tokenizer/ beside it")
    name = name or (model_name(source) if engine or model else "tiny-animals")  # the default bundle: its model
    if triton_log is None:
        triton_log = Path(tempfile.gettempdir()) / f"migm-serve-{name}-{http_port}.log"
    _say(f"loaded {source} ({pipe.backend.name} backend, {pipe.device}); tritonserver log: {triton_log}")
    served = ServedModel(pipe, name, max_batch=max_batch, log=_say)
    config = ServerConfig(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          queue_delay_ms=queue_delay_ms, drain_timeout_s=drain_timeout, triton_log=Path(triton_log))
    serve(served, config, say=_say)


if __name__ == "__main__":
    main()
