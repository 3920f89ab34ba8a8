"""A TensorRT bundle's engines on this machine: whether they run here, and rebuilding them from the
ONNX graphs the bundle keeps where they do not (another TensorRT release or flavour, another GPU).

The runtime only asks (`engines_problem`): `Pipeline.from_bundle` refuses engines that do not fit,
naming the command that rebuilds them, and never builds (building imports the export stack: ONNX,
Polygraphy, quantization). The CLIs call `fit_engines` before they load, which rebuilds once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import BackendUnavailable, BundleError
from . import trt
from .bundle import read_manifest, verify_bundle
from .manifest import Manifest


def engines_problem(path: Path, doc: Manifest, device: torch.device) -> str | None:
    """Why a trt bundle's engines cannot run on `device` (None: they can); BundleError for a bundle
    that records no flavour, BackendUnavailable where nothing here can run engines."""
    if doc.trt is None:
        raise BundleError(f"bundle {path} was built by an older migm (no TensorRT flavour recorded): build it again "
                          "with `migm-export build --backend trt`")
    flavour = doc.trt.flavour
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailable(f"the trt backend runs {trt.LABELS[flavour]} engines on a CUDA GPU, and there is none "
                                 "here: use --backend ort (an ort bundle) or torch")
    return trt.engine_problem(doc.trt, [path / e.file for e in doc.components.values()], device.index or 0)


def fit_engines(path: str | Path, device: torch.device | str = "cuda",
                say: Callable[[str], None] = print) -> Manifest:
    """The manifest of a trt bundle whose engines run here: rebuilt first (once, said through `say`)
    where they were made for another TensorRT release, flavour or GPU; BackendUnavailable where
    nothing can run them."""
    path, device = Path(path), torch.device(device)
    doc = verify_bundle(path)
    problem = engines_problem(path, doc, device)
    if problem is None:
        return doc
    index = device.index or 0
    here, cc = trt.choose_flavour("auto"), trt.gpu_capability(index)
    if here == trt.RTX and cc not in trt.rtx_capabilities(trt.import_flavour(here)):
        raise BackendUnavailable(f"{path}: {problem}; TensorRT for RTX {trt.version(here)} cannot build for this GPU "
                                 f"(compute capability {cc}): install NVIDIA TensorRT (pip install 'migm[trt]') and "
                                 f"run `migm-export rebuild {path} --trt-flavour tensorrt`, or use --backend torch")
    say(f"{path}: {problem}; rebuilding its engines from the ONNX it keeps (once)")
    from .build import rebuild_bundle  # the export stack (ONNX, Polygraphy): only when a rebuild runs

    rebuild_bundle(path, progress=say)
    doc = verify_bundle(path)
    problem = engines_problem(path, doc, device)
    if problem is not None:
        raise BackendUnavailable(f"{path}: rebuilt with {trt.LABELS[doc.trt.flavour]}, and still {problem}: "
                                 "install NVIDIA TensorRT (pip install 'migm[trt]') and run `migm-export rebuild "
                                 f"{path} --trt-flavour tensorrt`, or use --backend torch")
    return doc


def fit_for_backend(path: str | Path, backend: str, say: Callable[[str], None] = print) -> None:
    """What a CLI calls before `Pipeline.from_bundle(path, backend)`: where that loads TensorRT engines
    on a GPU (a trt bundle, backend trt or auto), rebuild them first if they do not fit."""
    if read_manifest(path).backend == "trt" and backend in ("auto", "trt") and torch.cuda.is_available():
        fit_engines(path, "cuda", say)
