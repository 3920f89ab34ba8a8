"""Export the pipeline's components to ONNX, each on its own.

    base       tokens int64 [batch, L], labels int64 [batch]
               -> features f32 [batch, L, d], logits f32 [batch, L, K]
    shortcut   features [batch, L, d], new_pos int64 [batch, M], new_tok int64 [batch, M],
               key_mask bool [batch, M], mask_ratio f32 [batch]
               -> next_features [batch, L, d], logits [batch, L, K]
               (the base model's frozen head is folded in, so a shortcut step is one call)
    decoder    tokens int64 [batch, grid, grid] -> images f32 [batch, C, H, W] in [0, 1]

The batch axis is dynamic everywhere, and so is M, the number of tokens sampled at the
previous step (it differs from step to step): one graph serves every step.
Exported with the dynamo exporter (opset 20: native LayerNormalization and Gelu);
models over 2 GB keep their weights as external data beside the .onnx.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from polygraphy.backend.onnx import fold_constants as fold
from polygraphy.logger import G_LOGGER

from ..families import Family, family_of
from ..models.vqvae import Decoder

log = logging.getLogger(__name__)
OPSET = 20
EXTERNAL_DATA_BYTES = 2 * 1024**3


@dataclass
class Component:
    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # example inputs, in call order
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: axis name}


def components(base: nn.Module, decoder: Decoder, shortcut: nn.Module | None = None,
               batch: int = 2) -> list[Component]:
    """The exportable components with example inputs (fp32, eval mode). The base's condition input
    is the family's (`labels` ids [batch], or `prompt` ids [batch, max_text]); a shortcut that reads
    the condition (the DiMOO variant) takes it too."""
    fam: Family = family_of(base)
    spec = fam.spec(base.cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.codebook_size + 1, (batch, spec.num_tokens), generator=g)
    cond = fam.example_conditions(spec, batch, g)
    out = [Component("base", base.float().eval(), {"tokens": tokens, fam.condition: cond}, ["features", "logits"],
                     {"tokens": {0: "batch"}, fam.condition: {0: "batch"}})]
    if shortcut is not None:
        m = 5
        inputs = {
            "features": torch.randn(batch, spec.feature_rows, spec.width, generator=g),
            "new_pos": torch.randint(0, spec.num_tokens, (batch, m), generator=g),
            "new_tok": torch.randint(0, spec.codebook_size, (batch, m), generator=g),
            "key_mask": torch.ones(batch, m, dtype=torch.bool),
            "mask_ratio": torch.rand(batch, generator=g),
        }
        dyn = {"features": {0: "batch"}, "mask_ratio": {0: "batch"},
               **{k: {0: "batch", 1: "new_tokens"} for k in ("new_pos", "new_tok", "key_mask")}}
        if fam.shortcut_takes_condition():
            inputs[fam.condition], dyn[fam.condition] = cond, {0: "batch"}
        step = fam.shortcut_step(shortcut.float().eval(), base).eval()
        out.append(Component("shortcut", step, inputs, ["next_features", "logits"], dyn))
    out.append(Component("decoder", decoder.float().eval(),
                         {"tokens": torch.randint(0, spec.codebook_size, (batch, spec.grid, spec.grid), generator=g)},
                         ["images"], {"tokens": {0: "batch"}}))
    return out


def export_component(comp: Component, path: str | Path) -> Path:
    """Export one component to `path` (.onnx), checked with onnx.checker; written atomically."""
    path = Path(path)
    dims: dict[str, torch.export.Dim] = {}

    def dim(name):
        return dims.setdefault(name, torch.export.Dim(name, min=1, max=4096))

    dynamic = {k: ({a: dim(n) for a, n in comp.dynamic[k].items()} if k in comp.dynamic else None) for k in comp.inputs}
    with torch.no_grad():
        program = torch.onnx.export(comp.module, tuple(comp.inputs.values()), dynamo=True, opset_version=OPSET,
                                    input_names=list(comp.inputs), output_names=comp.outputs,
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    size = sum(p.numel() * p.element_size() for p in comp.module.state_dict().values())
    external = size > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as d:
        tmp = Path(d) / path.name  # the final name: external data is referenced as NAME.onnx.data
        program.save(str(tmp), external_data=external)
        model = onnx.load(str(tmp), load_external_data=False)
        if name_batch_axes(model):
            onnx.save(model, str(tmp))  # same directory: the external-data references stay valid
        onnx.checker.check_model(str(tmp))
        _move_into_place(tmp, path)
    return path


def data_file(path: str | Path) -> Path | None:
    """The external-data file of an ONNX model (NAME.onnx.data), if it has one."""
    p = Path(path)
    p = p.with_name(p.name + ".data")
    return p if p.exists() else None


def save_onnx(model, path: str | Path) -> Path:
    """Write an in-memory ONNX model atomically; over 2 GB of weights go to NAME.onnx.data beside it."""
    path = Path(path)
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as d:
        tmp = Path(d) / path.name
        if big:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
        else:
            onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        _move_into_place(tmp, path)
    return path


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the staged files into place: the external data first, the graph that names it last."""
    for f in sorted(tmp.parent.iterdir(), key=lambda f: f.name == tmp.name):
        os.replace(f, path.parent / f.name)


def name_batch_axes(model) -> bool:
    """Call every output's leading axis `batch`: the exporter and shape inference may name a
    derived one, e.g. floor(1.0*batch). Returns whether anything changed."""
    renamed = False
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and dims[0].dim_param and dims[0].dim_param != "batch":
            dims[0].dim_param = "batch"
            renamed = True
    return renamed


def fold_constants(path: Path) -> None:
    """Polygraphy's constant folding (what `polygraphy surgeon sanitize --fold-constants` does)."""
    if data_file(path) is not None:
        return  # weights held as external data (> 2 GB): loading them all to fold is not worth it
    # Polygraphy prints its passes ("Folding Constants | Pass 1") to stdout: only with --verbose
    with G_LOGGER.verbosity(G_LOGGER.INFO if log.isEnabledFor(logging.DEBUG) else G_LOGGER.ERROR):
        model = fold(onnx.load(str(path)), error_ok=True)
    name_batch_axes(model)  # folding re-infers shapes and may rename the batch axis again
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def name_batch_axes_file(path: Path) -> None:
    """`name_batch_axes` on a saved graph (precision passes re-infer shapes and may rename the axis)."""
    model = onnx.load(str(path), load_external_data=False)  # saved back beside its data: references hold
    if name_batch_axes(model):
        onnx.save(model, str(path))


def io_spec(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph: name, element type, shape (symbolic axes by name)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": [d.dim_param or d.dim_value for d in t.shape.dim]})
        return out

    return spec(graph.input), spec(graph.output)
