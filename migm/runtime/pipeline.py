"""`Pipeline`: class labels in, images out, on the torch backend.

A pipeline holds the base model and the VQ decoder and runs the sampling loop. It is
not safe to share one across threads that generate at the same time; give each
thread its own pipeline (models are read-only, so they may be shared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import assets
from ..models.checkpoint import checkpoint_digest, load_checkpoint
from ..models.maskgit import MaskGIT
from ..models.shortcut import Shortcut
from ..models.vqvae import Decoder, VQVAE
from ..sampling.loop import STRATEGIES, CachedBase, HybridStats, ProbeFn, generate_tokens
from ..sampling.schedules import SCHEDULES


@dataclass
class SamplingDefaults:
    steps: int = 16
    cfg: float = 0.0
    tau: float = 4.5
    temperature: float = 1.0
    schedule: str = "arccos"


@dataclass
class Pipeline:
    base: MaskGIT
    decoder: Decoder
    class_names: Sequence[str] = ()
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    shortcut: Shortcut | None = None

    @classmethod
    def from_checkpoints(cls, base: str | Path | None = None, vq: str | Path | None = None,
                         shortcut: str | Path | None = None) -> "Pipeline":
        """Load a base model, VQ-VAE and (optionally) shortcut checkpoint.

        Defaults: the shipped tiny-animals model; its shipped shortcut comes with the
        shipped base only (a shortcut is tied to the base it was trained for).
        """
        base_path = base or assets.BASE
        base_model = load_checkpoint(base_path)
        vq_model = load_checkpoint(vq or assets.VQ)
        if not isinstance(base_model, MaskGIT) or not isinstance(vq_model, VQVAE):
            raise ValueError("expected a maskgit base checkpoint and a vqvae checkpoint")
        if base_model.cfg.codebook_size != vq_model.cfg.codebook_size or base_model.cfg.grid != vq_model.cfg.grid:
            raise ValueError(
                f"base model (codebook {base_model.cfg.codebook_size}, grid {base_model.cfg.grid}) does not match "
                f"the VQ-VAE (codebook {vq_model.cfg.codebook_size}, grid {vq_model.cfg.grid})"
            )
        meta = getattr(base_model, "meta", {})
        defaults = SamplingDefaults(**meta.get("sampling", {}))
        names = tuple(meta.get("class_names", ()))
        if shortcut is None and base is None and Path(f"{assets.SHORTCUT}.json").exists():
            shortcut = assets.SHORTCUT
        sc = load_shortcut(shortcut, base_path) if shortcut is not None else None
        return cls(base=base_model, decoder=vq_model.decoder.eval(), class_names=names, defaults=defaults,
                   shortcut=sc)

    @property
    def num_classes(self) -> int:
        return self.base.cfg.num_classes

    def class_index(self, name_or_index: str | int) -> int:
        """A class given by index or name -> index; ValueError naming the valid choices."""
        s = str(name_or_index).strip()
        if s.lstrip("-").isdigit():
            i = int(s)
            if not 0 <= i < self.num_classes:
                raise ValueError(f"class {i} is out of range 0..{self.num_classes - 1}")
            return i
        if s in self.class_names:
            return list(self.class_names).index(s)
        choices = ", ".join(self.class_names) if self.class_names else f"0..{self.num_classes - 1}"
        raise ValueError(f"unknown class {s!r}; choose from {choices}")

    @torch.no_grad()
    def generate_tokens(self, classes: Sequence[int | str], *, steps: int | None = None, cfg: float | None = None,
                        tau: float | None = None, temperature: float | None = None, schedule: str | None = None,
                        seed: int = 0, batch_size: int = 64, strategy: str = "vanilla", budget: int | None = None,
                        stats: HybridStats | None = None, probe: ProbeFn | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Token grids [n, L] for the given classes (names or indices).

        `strategy` (vanilla, fewer, reuse, extrapolate, mlcache, shortcut) and `budget`
        (B base-model steps of N) choose hybrid sampling; `stats` collects base calls.
        """
        d = self.defaults
        steps = d.steps if steps is None else steps
        schedule = schedule or d.schedule
        labels = torch.tensor([self.class_index(c) for c in classes], dtype=torch.long)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if steps > self.base.cfg.num_tokens:
            raise ValueError(f"steps ({steps}) cannot exceed the number of tokens ({self.base.cfg.num_tokens})")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if budget is not None and not 1 <= budget <= steps:
            raise ValueError(f"budget B={budget} must be between 1 and the number of steps N={steps}")
        if strategy == "shortcut" and self.shortcut is None:
            raise ValueError("the shortcut strategy needs a shortcut checkpoint (none loaded)")
        g = torch.Generator().manual_seed(seed)
        cfg_ = self.base.cfg
        out = []
        done = 0
        total = len(labels) * steps

        def on_step(i, n):
            if progress:
                progress(done + i * len(chunk), total)

        for start in range(0, len(labels), batch_size):
            chunk = labels[start:start + batch_size]
            out.append(generate_tokens(
                self._model_fn, chunk, num_tokens=cfg_.num_tokens, mask_id=cfg_.mask_id, no_class_id=cfg_.no_class_id,
                steps=steps, cfg=d.cfg if cfg is None else cfg, tau=d.tau if tau is None else tau,
                temperature=d.temperature if temperature is None else temperature, schedule=schedule,
                generator=g, on_step=on_step, strategy=strategy, budget=budget, head=self._head_fn,
                shortcut=self._shortcut_fn if self.shortcut is not None else None,
                cached=CachedBase(self.base), stats=stats, probe=probe,
            ))
            done += len(chunk) * steps
        return torch.cat(out)

    def _model_fn(self, tokens, labels):
        # bf16 autocast: ~2.5x faster on CPUs with AMX/AVX512-BF16; sampling itself runs in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tokens.device.type == "cpu"):
            features, logits = self.base(tokens, labels)
        # features stay fp32 between steps: shortcut steps chain from them
        return features.float(), logits.float()

    def _head_fn(self, features):
        return self.base.head(features.float())

    def _shortcut_fn(self, features, new_pos, new_tok, key_mask, mask_ratio):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=features.device.type == "cpu"):
            return self.shortcut(features, new_pos, new_tok, key_mask, mask_ratio).float()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        g = self.base.cfg.grid
        return torch.cat([self.decoder(tokens[i:i + batch_size].view(-1, g, g)) for i in range(0, len(tokens), batch_size)])

    def generate(self, classes: Sequence[int | str], **kwargs) -> torch.Tensor:
        """Images [n, C, H, W] in [0, 1] for the given classes; see `generate_tokens` for options."""
        return self.decode(self.generate_tokens(classes, **kwargs))


def load_shortcut(path: str | Path, base_path: str | Path) -> Shortcut:
    """A shortcut checkpoint, checked against the base model it will run with."""
    sc = load_checkpoint(path)
    if not isinstance(sc, Shortcut):
        raise ValueError(f"{path} is not a shortcut checkpoint")
    trained_for = getattr(sc, "meta", {}).get("base_digest")
    actual = checkpoint_digest(base_path)
    if trained_for and trained_for != actual:
        raise ValueError(f"the shortcut {path} was trained for another base model "
                         f"(digest {trained_for}; {base_path} has {actual})")
    return sc
