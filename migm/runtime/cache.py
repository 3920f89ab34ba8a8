"""The embedded default: the shipped model's bundle, built on first use into a cache directory.

The cache lives in $MIGM_CACHE, else $XDG_CACHE_HOME/migm, else ~/.cache/migm. The bundle's
name carries the shipped checkpoints' digests, so a new release builds a fresh one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import assets
from ..choices import CPU_BACKENDS
from ..engines.manifest import VERSION
from ..engines.targets import default_backend, default_precision
from ..fileio import cache_dir, recover_dir
from ..models.checkpoint import checkpoint_digest

DEFAULT_PRECISION = "fp32"  # of an ort bundle; an openvino one is bf16 (default_precision)
log = logging.getLogger(__name__)
__all__ = ["cache_dir", "default_bundle"]


def default_bundle(backend: str = "auto") -> Path:
    """Path of the default bundle (tiny-animals) for `backend` (ort or openvino; anything else: the
    fastest target here), building it if missing: OpenVINO bf16 on a CPU with OpenVINO installed, else
    ONNX Runtime fp32 (a GPU runs its checkpoints on torch with CUDA graphs)."""
    if backend not in CPU_BACKENDS:
        backend = "openvino" if default_backend() == "openvino" else "ort"
    precision = default_precision(backend) if backend == "openvino" else DEFAULT_PRECISION
    digest = checkpoint_digest(assets.BASE)[:8] + checkpoint_digest(assets.SHORTCUT)[:8]
    kind = "" if backend == "ort" else f"-{backend}"  # the ort bundle keeps its name (existing caches)
    path = cache_dir() / "bundles" / f"tiny-animals-{digest}{kind}-{precision}-v{VERSION}.plan"
    recover_dir(path)  # a build killed mid-swap: its predecessor comes back
    if (path / "manifest.json").exists():
        return path
    log.info("first use: building the default bundle (%s, %s) into %s (once, about a minute)", backend, precision, path)
    from ..engines.build import BuildSettings, build_bundle  # the export stack: only for this first build

    return build_bundle(path, BuildSettings(precision=precision, backend=backend), assets.BASE, assets.VQ,
                        assets.SHORTCUT)
