"""Trajectories of the base model's own sampler: the shortcut's training data.

A trajectory is one image sampled with the base model's own vanilla sampler (N steps,
CFG): Halton-MaskGIT's for the maskgit family, Lumina-DiMOO's for the llada family. It keeps,
as the official MIGM-Shortcut code does, every step's features, the final tokens and the
step at which each token was unmasked; with CFG the conditional and unconditional
branches share the tokens and each has its own features ("branches").

    f[i]         features the base model computes at the start of step i (i = 0..N-1)
    reveal[p]    the step that unmasked position p; the tokens unmasked at step i are
                 final[reveal == i], and the mask ratio after step i is
                 (number of p with reveal > i) / L

On disk (a directory, written shard by shard, `manifest.json` last):

    manifest.json            sampler settings, shapes, shards, base checkpoint digest
    features-00000.npy       float16 [n, branches, N, L, d]   (memory-mapped when read)
    tokens-00000.npy         int16   [n, L]   final tokens
    reveal-00000.npy         uint8   [n, L]   step that unmasked each position
    labels-00000.npy         int64   [n] class ids, or [n, max_text] prompt ids (llada)

Shard k always holds the same images (labels cycle through the classes, or through the
given prompts; its generator is seeded from (seed, k)), whatever the number of processes
that collect it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..fileio import atomic_path
from ..models.llada import LLaDA
from ..models.maskgit import MaskGIT
from ..sampling.loop import generate_tokens
from ..sampling.schedules import mask_schedule
from .dist import DistInfo, barrier

FORMAT = "migm-trajectories"
VERSION = 1


@dataclass
class CollectSettings:
    num: int = 1000
    steps: int = 32
    cfg: float = 3.0
    tau: float = 4.5
    temperature: float = 1.0
    schedule: str = "arccos"
    sampler: str = "halton"
    seed: int = 0
    shard_size: int = 50


def _autocast_base(base: MaskGIT | LLaDA):
    def fn(tokens, labels):
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
            return base(tokens, labels)
    return fn


@torch.no_grad()
def sample_trajectory_batch(base: MaskGIT | LLaDA, labels: torch.Tensor, s: CollectSettings,
                            generator: torch.Generator):
    """Sample `labels` (class ids, or prompt ids for llada) and record
    (features [n, branches, N, L, d] fp16, tokens [n, L], reveal [n, L]) on the CPU."""
    c = base.cfg
    n = len(labels)
    device = next(base.parameters()).device
    labels = labels.to(device)
    model = _autocast_base(base)
    llada = isinstance(base, LLaDA)
    uncond = torch.full((1, c.max_text), c.pad_id, device=device) if llada else None
    inputs, feats = [], []

    def recording(tokens, labs):
        f, logits = model(tokens, labs)
        inputs.append(tokens[:n].clone())
        feats.append(f.to(torch.float16).view(-1, n, *f.shape[1:]).transpose(0, 1))  # [n, branches, L, d]
        return f, logits

    final = generate_tokens(recording, labels, num_tokens=c.num_tokens, mask_id=c.mask_id,
                            no_class_id=-1 if llada else c.no_class_id, uncond=uncond, steps=s.steps, cfg=s.cfg,
                            tau=s.tau, temperature=s.temperature, schedule=s.schedule, sampler=s.sampler,
                            generator=generator)
    # a position masked in the inputs of steps 0..i was unmasked at step i
    reveal = torch.stack([t == c.mask_id for t in inputs]).sum(0) - 1
    return torch.stack(feats, dim=2).cpu(), final.cpu(), reveal.cpu()


def _shard_files(out: Path, k: int) -> dict[str, Path]:
    return {name: out / f"{name}-{k:05d}.npy" for name in ("features", "tokens", "reveal", "labels")}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def collect_trajectories(base: MaskGIT | LLaDA, out: str | Path, s: CollectSettings, base_digest: str = "",
                         info: DistInfo | None = None, prompts: torch.Tensor | None = None,
                         progress: Callable[[int, int], None] | None = None) -> Path:
    """Sample `s.num` trajectories into `out`; resumes shard by shard. Returns the manifest path.

    A llada base samples `prompts` [P, max_text] in turn (each P-th image has the same prompt)."""
    info = info or DistInfo()
    out = Path(out)
    c = base.cfg
    if isinstance(base, LLaDA) and (prompts is None or prompts.dim() != 2 or prompts.shape[1] != c.max_text):
        raise ValueError(f"a llada base samples prompts: give prompt ids [P, {c.max_text}]")
    if s.num < 1:
        raise ValueError(f"number of trajectories must be >= 1, got {s.num}")
    counts = mask_schedule(s.schedule, s.steps, c.num_tokens)  # validates steps and schedule
    if (out / "manifest.json").exists():
        raise FileExistsError(f"{out} already holds a finished trajectory set; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (s.num + s.shard_size - 1) // s.shard_size
    mine = [k for k in range(n_shards) if k % info.world == info.rank]
    total = sum(min(s.shard_size, s.num - k * s.shard_size) for k in mine)
    base.eval()
    done = 0
    for k in mine:
        size = min(s.shard_size, s.num - k * s.shard_size)
        files = _shard_files(out, k)
        if all(p.exists() for p in files.values()):  # resumed: this shard is whole
            done += size
            if progress:
                progress(done, total)
            continue
        order = torch.arange(k * s.shard_size, k * s.shard_size + size)
        labels = prompts[order % len(prompts)] if prompts is not None else order % c.num_classes
        g = torch.Generator(device=next(base.parameters()).device).manual_seed(s.seed * 1_000_003 + k)
        feats, tokens, reveal = sample_trajectory_batch(base, labels, s, g)
        # features first, labels last: a shard counts as whole only when all four exist
        _save_npy(files["features"], feats.numpy())
        _save_npy(files["tokens"], tokens.to(torch.int16).numpy())
        _save_npy(files["reveal"], reveal.to(torch.uint8).numpy())
        _save_npy(files["labels"], labels.numpy())
        done += size
        if progress:
            progress(done, total)
    barrier(info)
    manifest = out / "manifest.json"
    if info.main:
        doc = {
            "format": FORMAT, "version": VERSION, "num": s.num, "steps": s.steps, "cfg": s.cfg, "tau": s.tau,
            "temperature": s.temperature, "schedule": s.schedule, "sampler": s.sampler, "seed": s.seed,
            "family": "llada" if isinstance(base, LLaDA) else "maskgit",
            "branches": ["cond", "uncond"] if s.cfg != 0 else ["cond"],
            "num_tokens": c.num_tokens, "width": c.width, "codebook_size": c.codebook_size,
            "reveal_counts": counts,
            "mask_ratio_after": [(c.num_tokens - sum(counts[:i + 1])) / c.num_tokens for i in range(s.steps)],
            "base": {"config": c.to_dict(), "digest": base_digest},
            "shards": [{"index": k, "count": min(s.shard_size, s.num - k * s.shard_size)} for k in range(n_shards)],
        }
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
    barrier(info)
    return manifest


class TrajectorySet:
    """A finished trajectory directory, features memory-mapped (read-only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"no trajectory set at {self.path} (manifest.json missing; is collection finished?)")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mf} is not valid JSON: {e}") from e
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mf} is not a migm trajectory manifest")
        # read-only memory maps; window() copies out of them
        self.features, self.tokens, self.reveal, self.labels = [], [], [], []
        for shard in self.manifest["shards"]:
            files = _shard_files(self.path, shard["index"])
            missing = [str(p) for p in files.values() if not p.exists()]
            if missing:
                raise FileNotFoundError(f"trajectory shard file missing: {missing[0]}")
            self.features.append(np.load(files["features"], mmap_mode="r"))
            self.tokens.append(torch.from_numpy(np.load(files["tokens"]).astype(np.int64)))
            self.reveal.append(torch.from_numpy(np.load(files["reveal"]).astype(np.int64)))
            self.labels.append(torch.from_numpy(np.load(files["labels"])))
        self.offsets = np.cumsum([0] + [len(t) for t in self.tokens])
        self.steps = self.manifest["steps"]
        self.num_tokens = self.manifest["num_tokens"]
        self.reveal_counts = self.manifest["reveal_counts"]
        self.branches = len(self.manifest["branches"])

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
        """(final tokens [L], reveal step [L], label or prompt ids [max_text]) of trajectory i."""
        k, j = self.locate(i)
        return self.tokens[k][j], self.reveal[k][j], self.labels[k][j]
