"""`migm-demo`: the demo page (Gradio, extra `migm[demo]`) on the shipped models, a bundle or a saved
pipeline: the full N-step image beside a faster strategy's, same seed; cost-vs-quality plots."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .. import assets
from ..choices import RUNTIME_BACKENDS
from ..demo.app import Models, build
from ..errors import ConfigError
from .common import debug_option, one_line_errors

# the committed benchmark results, in a source checkout (an installed wheel carries none)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@click.command()
@click.option("--engine", default=None, type=click.Path(exists=True, file_okay=False),
              help="Also offer this NAME.plan bundle (from `migm-export build`).")
@click.option("--pretrained", default=None, type=click.Path(exists=True, file_okay=False),
              help="Also offer this saved pipeline directory (save_pretrained / `migm-export convert`).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(RUNTIME_BACKENDS),
              help="Backend for --engine / --pretrained (the shipped models run on torch).")
@click.option("--model", "first", default=None, type=click.Choice(list(assets.MODELS)),
              help="The shipped model the page opens with (default: the bundle or saved pipeline if given, "
                   "else tiny-animals).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 serves other machines too).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--results", "results_dir", default=None, type=click.Path(file_okay=False),
              help="Folder of benchmark result JSON files to plot [benchmarks/results of this checkout].")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(1, 1000),
              help="Clicks waiting at most; more are turned away with a message (one runs at a time).")
@debug_option
@one_line_errors
def main(engine, pretrained, backend, first, host, port, results_dir, max_queue):
    """Serve the demo page: `migm-demo` then open http://127.0.0.1:7860."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page phones nowhere
    models = Models(engine=engine, pretrained=pretrained, backend=backend)
    if first:
        models.sources = {first: models.sources[first], **models.sources}
    results_dir = results_dir or (RESULTS if RESULTS.is_dir() else None)
    if results_dir and not Path(results_dir).is_dir():
        raise ConfigError(f"--results {results_dir} is not a folder")
    try:
        app = build(models, results_dir, max_queue=max_queue)
    except ImportError as e:
        raise ConfigError(f"migm-demo needs the demo extra: pip install 'migm[demo]' ({e})") from None
    click.echo(f"migm-demo: http://{host}:{port} (models: {', '.join(models.names)})")
    app.launch(server_name=host, server_port=port, show_error=False, quiet=True, footer_links=[])


if __name__ == "__main__":
    main()
