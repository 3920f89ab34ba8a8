"""What the CLI tools share: progress bars, option parsing, logging, config files, one-line errors.

Errors a user can fix (`MigmError`, `OSError`, click's usage errors) print as one `Error: ...`
line with exit code 1 (2 for usage). Anything else is a bug and keeps its traceback; `--debug`
(or MIGM_DEBUG=1) shows the traceback of every error.

Every command made with `Command` / `Group` (`cls=`) takes `--verbose`, `--quiet`, `--version`
and `--debug`. The library logs through `logging.getLogger(__name__)`; `setup_logging` sends
those records (and Python warnings) to stderr above the progress bars.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import typing
import warnings

try:
    import tomllib  # Python >= 3.11
except ImportError:  # Python 3.10: JSON config files only
    tomllib = None
from dataclasses import MISSING, fields
from pathlib import Path

import click
from tqdm import tqdm

from .. import __version__
from ..errors import MigmError

_debug = {"on": bool(os.environ.get("MIGM_DEBUG"))}
_verbosity = {"level": 0}  # -1 --quiet, 0 default, 1 --verbose


class Bar:
    """A tqdm bar driven by the (step, total, metrics) progress callbacks below `cli`."""

    def __init__(self, desc: str, unit: str = "it"):
        self.bar = None
        self.desc = desc
        self.unit = unit

    def __call__(self, step: int, total: int, metrics: dict | None = None) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True, disable=quiet())
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


def quiet() -> bool:
    """--quiet: no progress bars, only warnings and errors."""
    return _verbosity["level"] < 0


def verbose() -> bool:
    return _verbosity["level"] > 0


def status_bar(desc: str):
    """A one-line status (elapsed time + the latest message) for long steps without a count, e.g.
    a build; returns (say, close)."""
    bar = []  # made on the first message: an error before any work prints alone

    def say(msg: str) -> None:
        if not bar:
            bar.append(tqdm(desc=desc, bar_format="{desc}: {elapsed} {postfix}", disable=quiet()))
        bar[0].set_postfix_str(msg)

    return say, lambda: bar and bar[0].close()


# ---- logging ----

# Python warnings from these packages' files concern their own internals (the exporter's
# deprecations, axis renames): shown with --verbose only
NOISY_WARNINGS = ("torch/onnx", "torch/_export", "torch/export", "torch/utils/_pytree", "onnxscript", "onnx_ir",
                  "polygraphy", "onnxruntime", "site-packages/onnx/")
DEV_WARNINGS = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")
_MIGM_DIR = str(Path(__file__).resolve().parent.parent)


class _WarningFilter(logging.Filter):
    """Keeps, at default verbosity, only the Python warnings a user can act on: none from the
    exporters' files, no deprecation notice from a third party (they reach us through frames such
    as copyreg's, so they are told apart by category)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        m = re.match(r"(.*?):\d+: (\w+): ", record.getMessage())
        if not m:
            return True
        path, category = m.group(1).replace("\\", "/"), m.group(2)
        if any(n in path for n in NOISY_WARNINGS):
            return False
        return not (category in DEV_WARNINGS and not path.startswith(_MIGM_DIR))


class _BarSafeHandler(logging.Handler):
    """Writes above tqdm's bars (tqdm.write) to the current stderr (looked up per record, so tests
    that swap stderr see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the program down
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "py.warnings":  # "path:line: Category: text\n  source line": the first line
            msg = msg.strip().splitlines()[0]
        if verbose():
            return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower()} {record.name}: {msg}"
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def setup_logging(level: int | None = None) -> None:
    """Route migm's log and Python warnings to stderr: INFO and up from migm (DEBUG with
    --verbose, WARNING with --quiet); third-party loggers at WARNING; Python
    warnings through `logging.captureWarnings`, filtered by `_WarningFilter`."""
    level = _verbosity["level"] if level is None else level
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_migm", False)]:
        root.removeHandler(h)
    handler = _BarSafeHandler()
    handler._migm = True
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # third-party INFO (onnxscript's every rewrite) is noise even with --verbose
    logging.getLogger("migm").setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, level))])
    # torch's exporter logs through torch's own handler ("torchvision is not installed. Skipping ...")
    logging.getLogger("torch.onnx").setLevel(logging.NOTSET if level > 0 else logging.ERROR)
    logging.captureWarnings(True)
    pyw = logging.getLogger("py.warnings")
    if not any(isinstance(f, _WarningFilter) for f in pyw.filters):
        pyw.addFilter(_WarningFilter())
    if level > 0:
        warnings.simplefilter("default")  # every warning once per place, deprecations included


def _set_verbosity(ctx, param, value):
    if value:
        _verbosity["level"] = 1 if param.name == "verbose" else -1


def _show_version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        click.echo(f"{ctx.find_root().info_name} {__version__}")
        ctx.exit()


def _common_params() -> list[click.Parameter]:
    eager = dict(is_flag=True, expose_value=False, is_eager=True)
    return [
        click.Option(["--verbose", "-v"], callback=_set_verbosity, help="Also show debug messages, third-party "
                     "warnings and TensorRT's build log.", **eager),
        click.Option(["--quiet", "-q"], callback=_set_verbosity, help="No progress bars; warnings and errors only.",
                     **eager),
        click.Option(["--debug"], callback=_set_debug,
                     help="Show the full traceback of any error (also: MIGM_DEBUG=1).", **eager),
        click.Option(["--version"], callback=_show_version, help="Print the version and exit.", **eager),
    ]


# ---- one line per usage error ----

class _UsageLine(click.ClickException):
    """A usage error as one `Error: ...` line with a pointer to --help (click prints four)."""
    exit_code = 2


def _one_line_usage(call):
    try:
        return call()
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare group prints its help
    except click.UsageError as e:
        if _debug["on"]:
            raise
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        raise _UsageLine(" ".join(e.format_message().split()) + hint) from None


class _Common:
    """What every migm command has: the common options, logging set up before it runs, usage
    errors on one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        have = {p.name for p in self.params}
        self.params += [p for p in _common_params() if p.name not in have]

    def main(self, *args, **kwargs):
        _verbosity["level"] = 0  # a fresh run (tests invoke many in one process)
        _debug["on"] = bool(os.environ.get("MIGM_DEBUG"))
        return super().main(*args, **kwargs)

    def make_context(self, *args, **kwargs):
        return _one_line_usage(lambda: super(_Common, self).make_context(*args, **kwargs))

    def invoke(self, ctx):
        setup_logging()
        return _one_line_usage(lambda: super(_Common, self).invoke(ctx))


class Command(_Common, click.Command):
    pass


class Group(_Common, click.Group):
    command_class = Command
    group_class = type  # nested groups: this class too


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


# ---- settings: options from a dataclass, and config files ----

class IntList(click.ParamType):
    """Comma-separated integers on the command line (6,8,12), a list in a config file."""
    name = "integers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return value
            self.fail(f"expected a list of integers, got {value!r}", param, ctx)
        try:
            return [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"expected comma-separated integers, got {value!r}", param, ctx)


class StrList(click.ParamType):
    """Comma-separated words on the command line (8.6,8.9), a list in a config file."""
    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            if all(isinstance(v, str) for v in value):
                return tuple(value)
            self.fail(f"expected a list of strings, got {value!r}", param, ctx)
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


def dataclass_options(cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                      defaults: dict | None = None):
    """click options declared by a settings dataclass: one `--field-name` per field (`only` some,
    `skip` some), with its type and default; `help`, `range` (lo, hi), `choices`, `aliases` (more
    option names), `option` (the name where it is not the field's) and `cli_default` (the command
    line's default where it differs from the dataclass's) from the field's metadata; `defaults`
    overrides them for one command. The command gets each field as a keyword argument of the same
    name (`settings_from` collects them)."""
    hints = typing.get_type_hints(cls)

    def wrap(fn):
        for f in reversed(fields(cls)):
            if f.name in skip or (only is not None and f.name not in only):
                continue
            meta, kind = f.metadata, _strip_none(hints[f.name])
            default = f.default if f.default is not MISSING else f.default_factory()
            default = meta.get("cli_default", default)
            default = (defaults or {}).get(f.name, default)
            names = [meta.get("option", f"--{f.name.replace('_', '-')}"), *meta.get("aliases", ()), f.name]
            opts = dict(default=default, help=meta.get("help"), show_default=kind is not bool and default is not None)
            lo, hi = meta.get("range", (None, None))
            if kind is bool:
                opts["is_flag"] = True
            elif kind is int:
                opts["type"] = click.IntRange(lo, hi)
            elif kind is float:
                opts["type"] = click.FloatRange(lo, hi)
            elif typing.get_origin(kind) is list:
                opts.update(type=IntList(), show_default=bool(default))
            elif typing.get_origin(kind) is tuple:
                opts.update(type=StrList(), default=None if not default else default, show_default=bool(default))
            elif meta.get("choices"):
                opts["type"] = click.Choice(meta["choices"])
            elif kind is Path:
                opts["type"] = click.Path(dir_okay=False)
            else:
                opts["type"] = str
            fn = click.option(*names, **opts)(fn)
        return fn

    return wrap


def _strip_none(kind):
    """X for `X | None` (an optional setting's type), else `kind` itself."""
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return kind


def settings_from(cls, values: dict):
    """The dataclass `cls` from the keyword arguments `dataclass_options(cls)` gave a command
    (taken out of `values`)."""
    return cls(**{f.name: values.pop(f.name) for f in fields(cls) if f.name in values})


CONFIG_MAX_BYTES = 1 << 20  # a settings file is a few lines; anything near this is the wrong file


def read_config(path: str | Path) -> dict:
    """A flat JSON object or TOML table from a file of at most CONFIG_MAX_BYTES."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(CONFIG_MAX_BYTES + 1)
    if len(raw) > CONFIG_MAX_BYTES:
        raise ValueError(f"larger than {CONFIG_MAX_BYTES // 1024} KiB: not a settings file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(raw)
        elif suffix == ".toml":
            if tomllib is None:
                raise ValueError("reading TOML needs Python 3.11: use a .json file")
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ValueError("a config file is NAME.json or NAME.toml")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON: {e}") from None
    except Exception as e:  # tomllib.TOMLDecodeError
        if tomllib is None or not isinstance(e, tomllib.TOMLDecodeError):
            raise
        raise ValueError(f"not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("expected an object of settings, e.g. {\"steps\": 100}")
    return data


def _check_value(param: click.Parameter, value):
    """The value a config file gives `param` if its kind fits the option's type (click converts
    strings leniently, 1.5 to 1 for an integer; a file's values are typed), else ValueError."""
    def one(v):
        t = param.type
        if isinstance(param, click.Option) and param.is_flag:
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(t, (click.types.IntParamType, click.IntRange)):
            ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif isinstance(t, (click.types.FloatParamType, click.FloatRange)):
            ok, want = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif isinstance(t, IntList):
            ok, want = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v), \
                "a list of integers"
        elif isinstance(t, StrList):
            ok, want = isinstance(v, (list, str)) and all(isinstance(x, str) for x in v), "a list of strings"
        elif isinstance(t, click.Choice) and isinstance(v, int) and not isinstance(v, bool) and \
                str(v) in t.choices:
            return str(v)
        else:
            ok, want = isinstance(v, str), "a string"
        if not ok:
            raise ValueError(f"{param.name} must be {want}, got {v!r}")
        return v

    if getattr(param, "multiple", False):
        if not isinstance(value, list):
            raise ValueError(f"{param.name} must be a list, got {value!r}")
        return [one(v) for v in value]
    return one(value)


def _load_config(ctx, param, value):
    if value is None:
        return
    by_key = {}
    for p in ctx.command.params:
        if p.expose_value and p is not param:
            names = [p.name] + [o.lstrip("-") for o in p.opts + getattr(p, "secondary_opts", []) if o.startswith("--")]
            by_key.update({n.replace("-", "_"): p for n in names if n})
    try:
        values = {}
        for key, v in read_config(value).items():
            p = by_key.get(str(key).replace("-", "_"))
            if p is None:
                known = sorted({p.name for p in by_key.values()})
                raise ValueError(f"unknown key {key!r}; the keys of `{ctx.command_path}` are {', '.join(known)}")
            values[p.name] = _check_value(p, v)
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{value}: {_one_line(e)}", ctx=ctx, param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}  # what the command line gives still wins


def config_option(fn):
    """--config FILE.json|FILE.toml: the command's settings from a file (keys: option names, with
    - or _); options given on the command line override it."""
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_load_config,
                        help="Settings from a JSON or TOML file (keys: the long option names); options on the "
                             "command line override it.")(fn)
