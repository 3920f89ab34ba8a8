"""A bundle's declared shapes, cross-checked at load: the manifest's recorded graph inputs and
outputs against its own model spec (codebook size, token count, width, grid), and a graph's own
inputs and outputs (as ONNX Runtime reads them from the file's header) against the manifest.

So a manifest whose `codebook_size` or `num_tokens` disagrees with its graphs, or a `base.onnx`
swapped for `decoder.onnx` (with its hash), is refused when the bundle is opened, not met as an
ONNX Runtime or torch error in the middle of sampling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BundleError

if TYPE_CHECKING:  # the manifest module imports this one (its last check)
    from .manifest import Artifact, Manifest

# onnxruntime's type names -> the manifest's dtypes
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool"}


def expected_shapes(spec: dict) -> dict[tuple[str, str], list]:
    """(component, tensor name) -> its shape after the batch axis, from the model spec (export/onnx.py)."""
    L, K, R, W, g = (spec.get(k) for k in ("num_tokens", "codebook_size", "feature_rows", "width", "grid"))
    features = [R, W]
    return {("base", "tokens"): [L], ("base", "features"): features, ("base", "logits"): [L, K],
            ("shortcut", "features"): features, ("shortcut", "next_features"): features,
            ("shortcut", "logits"): [L, K], ("decoder", "tokens"): [g, g]}


def check_manifest_io(m: Manifest) -> None:
    """Every recorded input/output the spec fixes has the spec's sizes (a BundleError naming the first that
    does not)."""
    want = expected_shapes(m.spec)
    for name, entry in m.components.items():
        for io in ("inputs", "outputs"):
            for t in getattr(entry, io):
                expected = want.get((name, t.name))
                got = list(t.shape[1:])
                # a named (dynamic) axis fits any size; a fixed one must be the spec's
                if expected is not None and (len(got) != len(expected) or any(
                        isinstance(a, int) and a != b for a, b in zip(got, expected))):
                    raise BundleError(f"components.{name}.{io}: {t.name} is {t.shape}, but config.base gives "
                                      f"[batch, {', '.join(map(str, expected))}] (codebook_size, num_tokens, width "
                                      "or grid disagree with the graphs)")


def check_graph_io(name: str, entry: Artifact, inputs: list, outputs: list, path) -> None:
    """A graph's own inputs/outputs (objects with .name, .type, .shape: onnxruntime's NodeArgs) against
    the manifest entry: same names in order, same dtypes, same fixed sizes (named axes are dynamic)."""
    for io, got in (("inputs", inputs), ("outputs", outputs)):
        recorded = getattr(entry, io)
        names = [a.name for a in got]
        if names != [t.name for t in recorded]:
            raise BundleError(f"{path}: the graph of component {name} has {io} {names}, the manifest records "
                              f"{[t.name for t in recorded]} (a graph of another component?)")
        for arg, t in zip(got, recorded):
            dtype = _ORT_TYPES.get(arg.type, arg.type)
            shape = list(arg.shape)
            fixed = [(a, b) for a, b in zip(shape, t.shape) if isinstance(a, int) and isinstance(b, int)]
            if dtype != t.dtype or len(shape) != len(t.shape) or any(a != b for a, b in fixed):
                raise BundleError(f"{path}: component {name}'s {t.name} is {dtype}{shape} in the graph, "
                                  f"{t.dtype}{t.shape} in the manifest")
