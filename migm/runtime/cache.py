"""The embedded default: the shipped model's bundle, built on first use into a cache directory.

The cache lives in $MIGM_CACHE, else $XDG_CACHE_HOME/migm, else ~/.cache/migm. The bundle's
name carries the shipped checkpoints' digests, so a new release builds a fresh one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import assets
from ..engines.bundle import VERSION
from ..fileio import cache_dir, recover_dir
from ..models.checkpoint import checkpoint_digest

DEFAULT_PRECISION = "fp32"
__all__ = ["cache_dir", "default_bundle"]


def default_bundle(say: Callable[[str], None] | None = None) -> Path:
    """Path of the default bundle (tiny-animals, fp32, ONNX Runtime), building it if missing."""
    digest = checkpoint_digest(assets.BASE)[:8] + checkpoint_digest(assets.SHORTCUT)[:8]
    path = cache_dir() / "bundles" / f"tiny-animals-{digest}-{DEFAULT_PRECISION}-v{VERSION}.plan"
    recover_dir(path)  # a build killed mid-swap: its predecessor comes back
    if (path / "manifest.json").exists():
        return path
    if say:
        say(f"first use: building the default bundle into {path} (once, about a minute)")
    from ..engines.build import BuildSettings, build_bundle  # the export stack: only for this first build

    return build_bundle(path, BuildSettings(precision=DEFAULT_PRECISION, backend="ort"), assets.BASE, assets.VQ,
                        assets.SHORTCUT)
