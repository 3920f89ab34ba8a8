"""What the CLI tools share: progress bars, option parsing, and one-line errors.

Errors a user can fix (`MigmError`, `OSError`, click's usage errors) print as one `Error: ...`
line with exit code 1 (2 for usage). Anything else is a bug and keeps its traceback; `--debug`
(or MIGM_DEBUG=1) shows the traceback of every error.
"""

from __future__ import annotations

import functools
import os

import click
from tqdm import tqdm

from ..errors import MigmError

_debug = {"on": bool(os.environ.get("MIGM_DEBUG"))}


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


def _set_debug(ctx, param, value):
    if value:
        _debug["on"] = True


debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                            help="Show the full traceback of any error (also: MIGM_DEBUG=1).")


def one_line_errors(fn):
    """Turn the errors a user can fix into `Error: ...` and exit code 1; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MigmError, OSError) as e:
            if _debug["on"]:
                raise
            raise click.ClickException(_one_line(e)) from None

    return wrapper


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # a message from a library can span lines


def int_list(value: str | None, name: str, required: bool = True) -> list[int]:
    """Comma-separated integers, e.g. --budget 6,8,12."""
    try:
        out = [int(v) for v in (value or "").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None
    if required and not out:
        raise click.BadParameter("give at least one value", param_hint=name)
    return out
