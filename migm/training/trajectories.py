"""Trajectory sets: the sampler's recordings (sampling/record.py) of a base model, on disk.
They are the shortcut's training data.

On disk (a directory, written shard by shard, `manifest.json` last):

    manifest.json            sampler settings, shapes, shards, base checkpoint digest
    features-00000.npy       float16 [n, branches, N, L, d]   (memory-mapped when read)
    tokens-00000.npy         int16   [n, L]   final tokens
    reveal-00000.npy         uint8   [n, L]   step that unmasked each position
    labels-00000.npy         int64   [n] class ids, or [n, max_text] prompt ids

Shard k always holds the same images (the conditions cycle through the given set; its generator
is seeded from (seed, k)), whatever the number of processes that collect it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError, first_line
from ..families import family_of
from ..fileio import atomic_path, check_replaceable, read_json
from ..sampling.config import SamplerConfig
from ..sampling.record import autocast_bf16, record_sampling
from ..sampling.schedules import mask_schedule
from .dist import DistInfo, barrier

FORMAT = "migm-trajectories"
VERSION = 1


def _shard_files(out: Path, k: int) -> dict[str, Path]:
    return {name: out / f"{name}-{k:05d}.npy" for name in ("features", "tokens", "reveal", "labels")}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


SETTINGS = "collect.json"  # what an unfinished set is being collected with


def _claim(out: Path, settings: dict, info: DistInfo) -> None:
    """Record the settings an unfinished set is collected with, or refuse to resume it with others:
    shards sampled at N = 8 beside shards at N = 4 would train the shortcut on a mix."""
    if info.main:
        check_replaceable(out, lambda p: (p / SETTINGS).is_file(), what="trajectory set")
        out.mkdir(parents=True, exist_ok=True)
        if not (out / SETTINGS).exists():
            with atomic_path(out / SETTINGS) as tmp:
                tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    barrier(info)
    try:
        saved = read_json(out / SETTINGS, "trajectory settings", DataError)
    except DataError as e:
        raise DataError(f"{e}; delete the unfinished set to start over") from None
    if not isinstance(saved, dict):
        raise DataError(f"{out / SETTINGS} is not a settings object; delete the unfinished set to start over")
    if saved != json.loads(json.dumps(settings, sort_keys=True)):
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ConfigError(f"{out} is an unfinished trajectory set collected with other settings ({', '.join(diff)} "
                          "differ): resume it with the same settings, or choose another --out")


def collect_trajectories(base: torch.nn.Module, out: str | Path, sampler: SamplerConfig, conditions: torch.Tensor,
                         num: int, seed: int = 0, shard_size: int = 50, base_digest: str = "",
                         info: DistInfo | None = None, progress: Callable[[int, int], None] | None = None,
                         shortcut: torch.nn.Module | None = None, budget: int | None = None,
                         shortcut_digest: str = "") -> Path:
    """Sample `num` trajectories into `out`, the conditions [P, ...] in turn (image i has condition
    i mod P); resumes shard by shard. Returns the manifest path.

    With a `shortcut` and `budget`, the tokens follow the hybrid sampler (on-policy data: the states it
    visits, with the base's features on them as targets)."""
    info = info or DistInfo()
    out = Path(out)
    fam = family_of(base)
    spec = fam.spec(base.cfg)
    sampler.validate(spec.num_tokens)
    if num < 1:
        raise ConfigError(f"number of trajectories must be >= 1, got {num}")
    if len(conditions) == 0 or tuple(conditions.shape[1:]) != tuple(fam.uncond(spec).shape[1:]):
        raise ConfigError(f"conditions must be [P, ...] like {list(fam.uncond(spec).shape[1:])} per row, "
                          f"got {list(conditions.shape)}")
    counts = mask_schedule(sampler.schedule, sampler.steps, spec.num_tokens)
    if (out / "manifest.json").exists():
        raise DataError(f"{out} already holds a finished trajectory set; choose another --out or delete it")
    policy = {"shortcut": shortcut_digest, "budget": budget} if shortcut is not None else None
    if shortcut is not None and not (budget and 1 <= budget < sampler.steps):
        raise ConfigError(f"on-policy trajectories need a budget B < N={sampler.steps}, got {budget}")
    _claim(out, {"sampling": sampler.to_dict(), "num": num, "seed": seed, "shard_size": shard_size,
                 "base_digest": base_digest, "conditions": hashlib.sha256(conditions.numpy().tobytes()).hexdigest(),
                 "policy": policy}, info)
    n_shards = (num + shard_size - 1) // shard_size
    mine = [k for k in range(n_shards) if k % info.world == info.rank]
    total = sum(min(shard_size, num - k * shard_size) for k in mine)
    base.eval()
    device = next(base.parameters()).device
    uncond = fam.uncond(spec, device)
    done = 0
    for k in mine:
        size = min(shard_size, num - k * shard_size)
        files = _shard_files(out, k)
        if not all(p.exists() for p in files.values()):  # else resumed: this shard is whole
            order = torch.arange(k * shard_size, k * shard_size + size)
            cond = conditions[order % len(conditions)]
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
            rec = record_sampling(autocast_bf16(base), cond.to(device), uncond, sampler, num_tokens=spec.num_tokens,
                                  mask_id=spec.mask_id, generator=g, head=base.head, budget=budget,
                                  shortcut=_shortcut_fn(fam, shortcut) if shortcut is not None else None)
            # features first, labels last: a shard counts as whole only when all four exist
            _save_npy(files["features"], rec.features.numpy())
            _save_npy(files["tokens"], rec.tokens.to(torch.int16).numpy())
            _save_npy(files["reveal"], rec.reveal.to(torch.uint8).numpy())
            _save_npy(files["labels"], cond.numpy())
        done += size
        if progress:
            progress(done, total)
    barrier(info)
    manifest = out / "manifest.json"
    if info.main:
        doc = {
            "format": FORMAT, "version": VERSION, "num": num, "steps": sampler.steps, "seed": seed,
            "sampling": sampler.to_dict(), "family": fam.name,
            "branches": ["cond", "uncond"] if sampler.guidance != 0 else ["cond"],
            "num_tokens": spec.num_tokens, "feature_rows": spec.feature_rows, "width": spec.width,
            "codebook_size": spec.codebook_size,
            "reveal_counts": counts, "policy": policy,
            "mask_ratio_after": [(spec.num_tokens - sum(counts[:i + 1])) / spec.num_tokens
                                 for i in range(sampler.steps)],
            "base": {"config": base.cfg.to_dict(), "digest": base_digest},
            "shards": [{"index": k, "count": min(shard_size, num - k * shard_size)} for k in range(n_shards)],
        }
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
    barrier(info)
    return manifest


def _shortcut_fn(fam, model):
    """The loop's shortcut call for a torch shortcut (bf16 autocast, as the base is recorded)."""
    def fn(features, new_pos, new_tok, key_mask, mask_ratio, cond):
        with torch.autocast(features.device.type, dtype=torch.bfloat16):
            nxt = fam.run_shortcut(model, features, new_pos, new_tok, key_mask, mask_ratio, cond)
        return nxt.float(), None
    return fn


class TrajectorySet:
    """A finished trajectory directory, features memory-mapped (read-only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise DataError(f"no trajectory set at {self.path} (manifest.json missing; is collection finished?)")
        self.manifest = read_json(mf, "trajectory manifest", DataError)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise DataError(f"{mf} is not a migm trajectory manifest")
        shards = self.manifest.get("shards")
        if not isinstance(shards, list) or not all(
                isinstance(sh, dict) and isinstance(sh.get("index"), int) and isinstance(sh.get("count"), int)
                for sh in shards):
            raise DataError(f"{mf} lists no shards (a list of {{index, count}}): an unfinished or damaged set; "
                            "collect it again")
        # read-only memory maps; window() copies out of them
        self.features, self.tokens, self.reveal, self.labels = [], [], [], []
        for shard in shards:
            files = _shard_files(self.path, shard["index"])
            missing = [str(p) for p in files.values() if not p.exists()]
            if missing:
                raise DataError(f"trajectory shard file missing: {missing[0]}")
            try:  # arrays only (no pickles); a truncated file is numpy's ValueError
                arrays = (np.load(files["features"], mmap_mode="r"), np.load(files["tokens"]),
                          np.load(files["reveal"]), np.load(files["labels"]))
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"trajectory shard {shard['index']} of {self.path} is truncated or not numpy arrays "
                                f"({first_line(e)}); collect the set again") from None
            if any(len(a) != shard["count"] for a in arrays):
                raise DataError(f"trajectory shard {shard['index']} of {self.path} does not hold the "
                                f"{shard['count']} trajectories its manifest lists; collect the set again")
            self.features.append(arrays[0])
            self.tokens.append(torch.from_numpy(arrays[1].astype(np.int64)))
            self.reveal.append(torch.from_numpy(arrays[2].astype(np.int64)))
            self.labels.append(torch.from_numpy(arrays[3]))
        self.offsets = np.cumsum([0] + [len(t) for t in self.tokens])
        try:
            self.steps = self.manifest["steps"]
            self.num_tokens = self.manifest["num_tokens"]
            self.reveal_counts = self.manifest["reveal_counts"]
            self.branches = len(self.manifest["branches"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{mf} lacks {e}: not a finished trajectory set") from None
        # sets written before the sampler config had one entry kept its fields at the top level
        m = self.manifest
        self.sampler = SamplerConfig.from_dict(m.get("sampling") or {
            k: m[k] for k in ("steps", "cfg", "tau", "temperature", "schedule", "sampler") if k in m})

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - int(self.offsets[k])

    def window(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Features f[start..stop-1] of trajectory i: float32 [branches, stop-start, L, d]."""
        k, j = self.locate(i)
        return torch.from_numpy(np.array(self.features[k][j, :, start:stop], dtype=np.float32))

    def record(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final tokens [L], reveal step [L], condition: class id [] or prompt ids [max_text]) of trajectory i."""
        k, j = self.locate(i)
        return self.tokens[k][j], self.reveal[k][j], self.labels[k][j]
