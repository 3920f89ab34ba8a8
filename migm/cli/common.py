"""Helpers the CLI tools share: progress bars and one-line errors."""

from __future__ import annotations

import functools

import click
from tqdm import tqdm


class Bar:
    """A tqdm bar driven by the (step, total, metrics) progress callbacks below `cli`."""

    def __init__(self, desc: str):
        self.bar = None
        self.desc = desc

    def __call__(self, step: int, total: int, metrics: dict | None = None) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        if metrics:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def one_line_errors(fn):
    """Turn expected failures into `Error: ...` and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..models.checkpoint import CheckpointError

        try:
            return fn(*args, **kwargs)
        except (ValueError, CheckpointError, RuntimeError, OSError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise click.ClickException(str(msg)) from None

    return wrapper
