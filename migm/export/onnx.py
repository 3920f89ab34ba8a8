"""Export the pipeline's components to ONNX, each on its own (DESIGN §2).

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

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..models.llada import LLaDA
from ..models.maskgit import MaskGIT
from ..models.shortcut import Shortcut
from ..models.shortcut_llada import LLaDAShortcut
from ..models.vqvae import Decoder

OPSET = 20
EXTERNAL_DATA_BYTES = 2 * 1024**3


class LLaDAShortcutStep(nn.Module):
    """The DiMOO shortcut plus the image-code rows of the base LM head, in one graph."""

    def __init__(self, shortcut: LLaDAShortcut, base: LLaDA):
        super().__init__()
        self.shortcut = shortcut
        self.register_buffer("code_rows", base.lm_head.weight[base.cfg.text_vocab:].detach().clone())

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio, prompt):
        nxt = self.shortcut(features, new_pos, new_tok, key_mask, mask_ratio, prompt)
        return nxt, nxt @ self.code_rows.T


class ShortcutStep(nn.Module):
    """The shortcut plus the base head: next features and their logits in one graph."""

    def __init__(self, shortcut: Shortcut, base: MaskGIT):
        super().__init__()
        self.shortcut = shortcut
        self.register_buffer("code_emb", base.tok_emb.weight[: base.cfg.codebook_size].detach().clone())
        self.register_buffer("bias", base.bias.detach().clone())

    def forward(self, features, new_pos, new_tok, key_mask, mask_ratio):
        nxt = self.shortcut(features, new_pos, new_tok, key_mask, mask_ratio)
        return nxt, nxt @ self.code_emb.T + self.bias


@dataclass
class Component:
    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # example inputs, in call order
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: axis name}


def components(base: MaskGIT | LLaDA, decoder: Decoder, shortcut: Shortcut | LLaDAShortcut | None = None,
               batch: int = 2) -> list[Component]:
    """The exportable components with example inputs (fp32, eval mode); llada bases take `prompt`
    ids [batch, max_text] where maskgit takes `labels`, and so does their shortcut."""
    c = base.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.codebook_size + 1, (batch, c.num_tokens), generator=g)
    llada = isinstance(base, LLaDA)
    if llada:  # the llada family is conditioned on prompt ids (left-padded)
        cond_name = "prompt"
        cond = torch.randint(0, max(c.pad_id - 16, 1), (batch, c.max_text), generator=g)
        cond[:, : c.max_text // 2] = c.pad_id
    else:
        cond_name, cond = "labels", torch.arange(batch) % (c.num_classes + 1)
    out = [Component("base", base.float().eval(), {"tokens": tokens, cond_name: cond}, ["features", "logits"],
                     {"tokens": {0: "batch"}, cond_name: {0: "batch"}})]
    if shortcut is not None:
        m = 5
        inputs = {
            "features": torch.randn(batch, c.num_tokens, c.width, generator=g),
            "new_pos": torch.randint(0, c.num_tokens, (batch, m), generator=g),
            "new_tok": torch.randint(0, c.codebook_size, (batch, m), generator=g),
            "key_mask": torch.ones(batch, m, dtype=torch.bool),
            "mask_ratio": torch.rand(batch, generator=g),
        }
        dyn = {"features": {0: "batch"}, "mask_ratio": {0: "batch"},
               **{k: {0: "batch", 1: "new_tokens"} for k in ("new_pos", "new_tok", "key_mask")}}
        if llada:  # the DiMOO shortcut also reads the prompt
            inputs["prompt"], dyn["prompt"] = cond, {0: "batch"}
        step = (LLaDAShortcutStep if llada else ShortcutStep)(shortcut.float().eval(), base).eval()
        out.append(Component("shortcut", step, inputs, ["next_features", "logits"], dyn))
    grid = decoder.cfg.grid if hasattr(decoder.cfg, "grid") else int(c.num_tokens**0.5)
    out.append(Component("decoder", decoder.float().eval(),
                         {"tokens": torch.randint(0, c.codebook_size, (batch, grid, grid), generator=g)},
                         ["images"], {"tokens": {0: "batch"}}))
    return out


def export_component(comp: Component, path: str | Path) -> Path:
    """Export one component to `path` (.onnx), checked with onnx.checker; written atomically."""
    import onnx

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
    import onnx

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


def ort_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to torch between runs
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(comp: Component, path: str | Path, batches=(1, 3, 16), new_tokens=(1, 7, 26)) -> list[dict]:
    """ONNX Runtime against torch at several batch sizes (and, for the shortcut, several
    new-token counts M, one per batch size): max abs and relative L2 error per output."""
    session = ort_session(path)
    rows = []
    for b, m in zip(batches, new_tokens):
        inputs = {k: _resize(v, b) for k, v in comp.inputs.items()}
        if "new_pos" in inputs:
            m = min(m, comp.module.shortcut.cfg.num_tokens)
            inputs.update(_new_tokens(inputs, m, comp.module))
        got = session.run(comp.outputs, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            ref = comp.module(*inputs.values())
        ref = ref if isinstance(ref, tuple) else (ref,)
        for name, g, r in zip(comp.outputs, got, ref):
            r = r.float().numpy()
            rows.append({"component": comp.name, "batch": b, "new_tokens": m if "new_pos" in inputs else None,
                         "output": name,
                         "max_abs": float(np.abs(g - r).max()),
                         "rel_l2": float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-12))})
    return rows


def _resize(t: torch.Tensor, b: int) -> torch.Tensor:
    """The example input repeated/cut to batch b (with fresh values so rows differ)."""
    reps = -(-b // t.shape[0])
    out = t.repeat(reps, *([1] * (t.dim() - 1)))[:b].clone()
    if out.is_floating_point():
        out = out + 0.01 * torch.randn_like(out)
    return out


def _new_tokens(inputs: dict, m: int, module) -> dict:
    """m distinct new positions per row, the last one padding (key mask False) when m > 1."""
    b = inputs["features"].shape[0]
    n, k = module.shortcut.cfg.num_tokens, module.shortcut.cfg.codebook_size
    pos = torch.stack([torch.randperm(n)[:m] for _ in range(b)])
    keys = torch.ones(b, m, dtype=torch.bool)
    if m > 1:
        keys[:, -1] = False
    return {"new_pos": pos, "new_tok": torch.randint(0, k, (b, m)), "key_mask": keys}


def save_polygraphy_reference(comp: Component, out_dir: str | Path, batch: int = 3) -> tuple[Path, Path]:
    """Inputs and torch outputs as Polygraphy JSON, so the export can be checked with
    `polygraphy run NAME.onnx --onnxrt --load-inputs NAME.inputs.json --load-outputs NAME.torch.json`."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    out_dir = Path(out_dir)
    inputs = {k: _resize(v, batch) for k, v in comp.inputs.items()}
    with torch.no_grad():
        ref = comp.module(*inputs.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    results = RunResults()
    results.add([{n: r.float().numpy() for n, r in zip(comp.outputs, ref)}], runner_name="torch")
    feeds, outs = out_dir / f"{comp.name}.inputs.json", out_dir / f"{comp.name}.torch.json"
    save_json([{k: v.numpy() for k, v in inputs.items()}], feeds, description="inputs")
    save_json(results, outs, description="torch outputs")
    return feeds, outs
