"""Calibration inputs for the shortcut, drawn from recorded trajectories.

Each record is one shortcut call as the sampler makes it: the features at the start of
a step s (one CFG branch), the tokens unmasked at s, and the mask ratio after s, with s
drawn across all steps (early, nearly-all-masked states and late ones have very
different activation ranges, and INT8 scales must cover both). Stored as one .npz so a
rebuild does not recollect; new tokens are padded to the largest count, and `counts`
says how many are real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path
from ..training.trajectories import TrajectorySet


def collect_calibration(ts: TrajectorySet, count: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    if count < 1:
        raise ValueError(f"calibration size must be >= 1, got {count}")
    g = torch.Generator().manual_seed(seed)
    width = max(ts.reveal_counts)
    out = {"features": [], "new_pos": [], "new_tok": [], "counts": [], "mask_ratio": [], "steps": []}
    for _ in range(count):
        i = int(torch.randint(len(ts), (1,), generator=g))
        s = int(torch.randint(ts.steps - 1, (1,), generator=g))
        branch = int(torch.randint(ts.branches, (1,), generator=g))
        tokens, reveal, _ = ts.record(i)
        pos = (reveal == s).nonzero().flatten()
        padded = torch.zeros(width, dtype=torch.long)
        padded[: len(pos)] = pos
        out["features"].append(ts.window(i, s, s + 1)[branch, 0].numpy().astype(np.float16))
        out["new_pos"].append(padded.numpy())
        out["new_tok"].append(tokens[padded].numpy())
        out["counts"].append(len(pos))
        out["mask_ratio"].append(float((reveal > s).float().mean()))
        out["steps"].append(s)
    return {k: np.stack(v) if k == "features" else np.asarray(v) for k, v in out.items()}


def save_calibration(path: str | Path, data: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)
    return path


def load_calibration(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration data not found: {path} (run `migm-export calibrate` first)")
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"calibration data {path} is corrupt: {e}") from e
    missing = {"features", "new_pos", "new_tok", "counts", "mask_ratio"} - set(data)
    if missing:
        raise ValueError(f"calibration data {path} lacks {sorted(missing)}")
    return data


def shortcut_feeds(data: dict[str, np.ndarray]):
    """One ONNX Runtime feed per record, with exactly its real new tokens (M = count)."""
    for f, pos, tok, m, r in zip(data["features"], data["new_pos"], data["new_tok"], data["counts"], data["mask_ratio"]):
        m = int(m)
        yield {"features": f[None].astype(np.float32), "new_pos": pos[None, :m].astype(np.int64),
               "new_tok": tok[None, :m].astype(np.int64), "key_mask": np.ones((1, m), dtype=bool),
               "mask_ratio": np.asarray([r], dtype=np.float32)}
