"""The errors migm raises for things a user can fix: bad settings, files, or a machine that lacks
something. Each says what was wrong and what to do; the CLIs print them as one line.

Every class derives from `MigmError` and also from the builtin its callers caught before
(`ValueError` for bad input, `RuntimeError` for a missing capability), so `except ValueError`
keeps working. Anything that is not a `MigmError` (or an `OSError`) is a bug and keeps its
traceback.
"""

from __future__ import annotations


class MigmError(Exception):
    """Base class: an error the user can act on."""


class ConfigError(MigmError, ValueError):
    """A setting or argument out of range, of the wrong kind, or inconsistent with the model."""


class PromptError(ConfigError):
    """A prompt the model's tokenizer cannot read (unknown word, too long, empty)."""


class CheckpointError(MigmError, RuntimeError):
    """A checkpoint that is missing, corrupt, of another kind, or does not fit its model."""


class BundleError(MigmError, RuntimeError):
    """A `NAME.plan` bundle that is missing, corrupt, or built for another backend, model or machine."""


class DataError(MigmError, RuntimeError):
    """Training data, trajectories or calibration data that are missing, unfinished or inconsistent."""


class BackendUnavailable(MigmError, RuntimeError):
    """A backend this machine cannot run (TensorRT or a GPU missing, onnxruntime-gpu not installed)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's can span pages), or its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
