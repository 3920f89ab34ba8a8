"""Calibration inputs for INT8 (the shortcut; with OpenVINO the base too), drawn from the
sampler's own trajectories.

Each record is one shortcut call as the sampler makes it: the features at the start of a step
s (one CFG branch), the tokens unmasked at s, and the mask ratio after s, with s drawn across all
steps (early, nearly-all-masked states and late ones have very different activation ranges, and
INT8 scales must cover both), with the branch's condition (class id or prompt ids; the empty one
for the unconditional branch) for a shortcut that reads it. Stored as one .npz so a rebuild does
not resample; new tokens are padded to the largest count, and `counts` says how many are real.
The base's records (`base_tokens`, `base_cond`) are its inputs at a random (trajectory, step,
branch): the tokens still masked at that step, and the branch's condition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..families import family_of
from ..fileio import atomic_path
from ..sampling.config import SamplerConfig
from ..sampling.record import Recording, autocast_bf16, record_sampling
from ..sampling.schedules import mask_schedule

KEYS = ("features", "new_pos", "new_tok", "counts", "mask_ratio")  # `cond` too since conditioned shortcuts
SHORTCUT_INPUTS = ("features", "new_pos", "new_tok", "key_mask", "mask_ratio")  # the graph's, in order


def collect_calibration(rec: Recording, count: int = 256, seed: int = 0,
                        conds: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """`count` shortcut inputs drawn at random (trajectory, step, branch) from a recording; `conds`
    [n, branches, ...] is each trajectory's condition per branch (stored as `cond`)."""
    if count < 1:
        raise ConfigError(f"calibration size must be >= 1, got {count}")
    n, branches, steps = rec.features.shape[:3]
    g = torch.Generator().manual_seed(seed)
    width = int(torch.bincount(rec.reveal[0], minlength=steps).max())  # the most tokens one step reveals
    out = {"features": [], "new_pos": [], "new_tok": [], "counts": [], "mask_ratio": [], "steps": [], "cond": []}
    for _ in range(count):
        i = int(torch.randint(n, (1,), generator=g))
        s = int(torch.randint(steps - 1, (1,), generator=g))
        branch = int(torch.randint(branches, (1,), generator=g))
        tokens, reveal = rec.tokens[i], rec.reveal[i]
        pos = (reveal == s).nonzero().flatten()
        padded = torch.zeros(width, dtype=torch.long)
        padded[: len(pos)] = pos
        out["features"].append(rec.features[i, branch, s].numpy().astype(np.float16))
        out["new_pos"].append(padded.numpy())
        out["new_tok"].append(tokens[padded].numpy())
        out["counts"].append(len(pos))
        out["mask_ratio"].append(float((reveal > s).float().mean()))
        out["steps"].append(s)
        if conds is not None:
            out["cond"].append(conds[i, branch].numpy())
    if conds is None:
        del out["cond"]
    return {k: np.stack(v) if k in ("features", "cond") else np.asarray(v) for k, v in out.items()}


def collect_base_calibration(rec: Recording, count: int, mask_id: int, conds: torch.Tensor,
                             seed: int = 1) -> dict[str, np.ndarray]:
    """`count` base inputs (tokens at the start of a step, the branch's condition) drawn at random
    (trajectory, step, branch) from a recording; `conds` [n, branches, ...] as in `collect_calibration`."""
    n, branches, steps = rec.features.shape[:3]
    g = torch.Generator().manual_seed(seed)
    tokens, cond = [], []
    for _ in range(count):
        i = int(torch.randint(n, (1,), generator=g))
        s = int(torch.randint(steps, (1,), generator=g))
        branch = int(torch.randint(branches, (1,), generator=g))
        # at the start of step s the positions unmasked at steps < s hold their final tokens
        tokens.append(torch.where(rec.reveal[i] < s, rec.tokens[i], mask_id).numpy())
        cond.append(np.asarray(conds[i, branch].numpy()))
    return {"base_tokens": np.stack(tokens), "base_cond": np.stack(cond)}


def sample_calibration(base: torch.nn.Module, sampler: SamplerConfig, count: int = 128, seed: int = 1234,
                       steps: int = 32) -> dict[str, np.ndarray]:
    """Calibration inputs from trajectories the base model samples here and now (its own sampler
    at N = `steps`, at most one token a step; every class or example prompt in turn)."""
    fam = family_of(base)
    spec = fam.spec(base.cfg)
    n = max(8, min(64, count // 8))
    device = next(base.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003)
    steps = min(steps, spec.num_tokens)
    while steps > 1 and not _valid(sampler.replace(steps=steps), spec.num_tokens):
        steps -= 1  # the reference's rounding leaves a step empty at this many steps: one fewer
    sampler = sampler.replace(steps=steps)
    cond, uncond = fam.example_conditions(spec, n).to(device), fam.uncond(spec, device)
    rec = record_sampling(autocast_bf16(base), cond, uncond, sampler, num_tokens=spec.num_tokens,
                          mask_id=spec.mask_id, generator=g)
    branches = torch.stack([cond, uncond.expand_as(cond)], 1)[:, : rec.features.shape[1]]  # [cond, uncond] rows
    out = collect_calibration(rec, count, conds=branches.cpu())
    return {**out, **collect_base_calibration(rec, count, spec.mask_id, branches.cpu())}


def _valid(sampler: SamplerConfig, num_tokens: int) -> bool:
    try:
        sampler.validate(num_tokens)
        mask_schedule(sampler.schedule, sampler.steps, num_tokens)
    except ConfigError:
        return False
    return True


def save_calibration(path: str | Path, data: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)
    return path


def load_calibration(path: str | Path) -> dict[str, np.ndarray]:
    """An .npz of calibration inputs (arrays only: `allow_pickle` stays off)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration data not found: {path} (run `migm-export calibrate` first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise DataError(f"calibration data {path} is corrupt: {e}") from None
    missing = set(KEYS) - set(data)
    if missing:
        raise DataError(f"calibration data {path} lacks {sorted(missing)}")
    return data


def shortcut_feeds(data: dict[str, np.ndarray], condition: str | None = None):
    """One ONNX Runtime feed per record, with exactly its real new tokens (M = count); the record's
    condition goes in as input `condition` where the shortcut reads one."""
    for i, (f, pos, tok, m, r) in enumerate(zip(*(data[k] for k in KEYS))):
        m = int(m)
        feed = {"features": f[None].astype(np.float32), "new_pos": pos[None, :m].astype(np.int64),
                "new_tok": tok[None, :m].astype(np.int64), "key_mask": np.ones((1, m), dtype=bool),
                "mask_ratio": np.asarray([r], dtype=np.float32)}
        if condition is not None:
            feed[condition] = data["cond"][i][None].astype(np.int64)
        yield feed
