"""Checking exported graphs against torch: ONNX Runtime parity at several shapes, and Polygraphy
reference files (`polygraphy run NAME.onnx --onnxrt --load-inputs ... --load-outputs ...`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from polygraphy.comparator import RunResults
from polygraphy.json import save_json

from ..export.onnx import Component
from .ort import ort_session


def rel_error(comp: Component, path: Path) -> float:
    """ORT vs torch on the component's example inputs (relative L2 of the first output)."""
    got = ort_session(path).run(None, {k: v.numpy() for k, v in comp.inputs.items()})[0]
    with torch.no_grad():
        ref = comp.module(*comp.inputs.values())
    ref = (ref[0] if isinstance(ref, tuple) else ref).float().numpy()
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


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
