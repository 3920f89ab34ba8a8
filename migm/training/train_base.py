"""Train the MaskGIT base model on VQ tokens of animal-mnist.

Masked-token prediction as in MaskGIT: per sample a mask ratio arccos(r) / (pi/2),
r ~ U(0, 1); cross-entropy on the masked positions; 10% of labels dropped to the
"no class" token so classifier-free guidance works; AdamW with warm-up and cosine
decay; EMA weights are the ones saved for inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.maskgit import MaskGIT, MaskGITConfig
from ..models.vqvae import VQVAE
from .data import load_animals
from .state import EMA, Progress, load_train_state, save_train_state


@torch.no_grad()
def tokenize(vq: VQVAE, images: torch.Tensor, flips: bool = False) -> torch.Tensor:
    """Token grids [n, L] (and of the mirrored images after them, with `flips`)."""
    sets = [images, images.flip(-1)] if flips else [images]
    out = [vq.encode(s[i:i + 500]).flatten(1) for s in sets for i in range(0, len(s), 500)]
    return torch.cat(out)


def random_mask(tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None):
    """Mask a share arccos(r)/(pi/2) of each row (at least one position)."""
    b, n = tokens.shape
    r = torch.rand(b, 1, generator=generator)
    share = torch.arccos(r) / (math.pi / 2)
    masked = torch.rand(b, n, generator=generator) < share
    masked[torch.arange(b), torch.randint(0, n, (b,), generator=generator)] = True
    return tokens.masked_fill(masked, mask_id), masked


def masked_ce(model: MaskGIT, tokens, labels, generator=None):
    inp, masked = random_mask(tokens, model.cfg.mask_id, generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tokens.device.type == "cpu"):
        _, logits = model(inp, labels)
    return F.cross_entropy(logits.float()[masked], tokens[masked])


@torch.no_grad()
def validation_loss(model: MaskGIT, tokens, labels, batches: int = 8, batch_size: int = 125) -> float:
    g = torch.Generator().manual_seed(1234)  # the same masks every time
    losses = [
        masked_ce(model, tokens[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size], g).item()
        for i in range(min(batches, len(tokens) // batch_size))
    ]
    return sum(losses) / len(losses)


def train_base(out: str, cfg: MaskGITConfig, vq: VQVAE, steps: int = 3000, batch_size: int = 128,
               lr: float = 5e-4, weight_decay: float = 0.05, warmup: int = 200, label_drop: float = 0.1,
               ema_decay: float = 0.999, eval_every: int = 250, seed: int = 0,
               progress: Progress | None = None) -> MaskGIT:
    torch.manual_seed(seed)
    train, val = load_animals("train"), load_animals("val")
    x = tokenize(vq, train.images, flips=True)
    y = torch.cat([train.labels, train.labels])
    xv, yv = tokenize(vq, val.images), val.labels
    model = MaskGIT(cfg)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name or name == "bias" else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                            lr=lr, betas=(0.9, 0.96))
    ema = EMA(model, ema_decay)
    start = load_train_state(out, model, opt, ema)
    sched = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    val_loss = float("nan")
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr * sched(step)
        idx = torch.randint(0, len(x), (batch_size,))
        labels = y[idx].masked_fill(torch.rand(batch_size) < label_drop, cfg.no_class_id)
        loss = masked_ce(model, x[idx], labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val_loss = validation_loss(ema.module, xv, yv)
            save_train_state(out, model, opt, step + 1, ema, meta={"val_ce": val_loss})
        if progress:
            progress(step + 1, steps, {"loss": loss.item(), "val_ce": val_loss})
    return ema.module
