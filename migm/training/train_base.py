"""Train a base model on VQ tokens: the MaskGIT family on animal-mnist (class labels), the
llada family on the tiny scenes (prompts; training/scenes.py).

Masked-token prediction as in MaskGIT: per sample a mask ratio arccos(r) / (pi/2),
r ~ U(0, 1); cross-entropy on the masked positions; 10% of conditions dropped to the
unconditional input (the "no class" token, or an all-padding prompt) so classifier-free
guidance works; AdamW with warm-up and cosine decay; EMA weights are the ones saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.animals import load_animals
from ..data.scenes import make_scenes
from ..errors import ConfigError
from ..families import family_of
from ..models.text import encode_prompts
from ..models.vqvae import VQVAE
from .state import EMA, Progress, check_run, load_train_state, save_train_state


@torch.no_grad()
def tokenize(vq: VQVAE, images: torch.Tensor, flips: bool = False) -> torch.Tensor:
    """Token grids [n, L] (and of the mirrored images after them, with `flips`)."""
    sets = [images, images.flip(-1)] if flips else [images]
    device = next(vq.parameters()).device
    out = [vq.encode(s[i:i + 500].to(device)).flatten(1).cpu() for s in sets for i in range(0, len(s), 500)]
    return torch.cat(out)


def random_mask(tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None):
    """Mask a share arccos(r)/(pi/2) of each row (at least one position)."""
    b, n = tokens.shape
    r = torch.rand(b, 1, generator=generator)
    share = torch.arccos(r) / (math.pi / 2)
    masked = torch.rand(b, n, generator=generator) < share
    masked[torch.arange(b), torch.randint(0, n, (b,), generator=generator)] = True
    return tokens.masked_fill(masked, mask_id), masked


def masked_ce(model, tokens, labels, generator=None):
    """Cross-entropy on a random masking of `tokens` (CPU tensors in; the model's device inside)."""
    inp, masked = random_mask(tokens, model.cfg.mask_id, generator)
    device = next(model.parameters()).device
    inp, masked, tokens, labels = (t.to(device) for t in (inp, masked, tokens, labels))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        _, logits = model(inp, labels)
    return F.cross_entropy(logits.float()[masked], tokens[masked])


@torch.no_grad()
def validation_loss(model, tokens, labels, batches: int = 8, batch_size: int = 125) -> float:
    g = torch.Generator().manual_seed(1234)  # the same masks every time
    losses = [
        masked_ce(model, tokens[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size],
                  g).item()
        for i in range(min(batches, len(tokens) // batch_size))
    ]
    return sum(losses) / len(losses)


@dataclass
class TokenData:
    """Training and validation token grids with their conditions (class ids [n] or prompt ids [n, T])."""
    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    uncond: torch.Tensor  # the condition a dropped sample gets: no_class_id, or an all-padding prompt


def animal_tokens(vq: VQVAE, cfg, tokenizer=None) -> TokenData:
    """The animal-mnist silhouettes (and their mirror images) with their classes."""
    train, val = load_animals("train"), load_animals("val")
    return TokenData(tokenize(vq, train.images, flips=True), torch.cat([train.labels, train.labels]),
                     tokenize(vq, val.images), val.labels, torch.tensor(cfg.no_class_id))


def scene_tokens(vq: VQVAE, cfg, tokenizer, repeats: int = 4) -> TokenData:
    """Scenes (each training silhouette `repeats` times at random sizes and places) and their captions."""
    if tokenizer is None:
        raise ConfigError("a text-to-image base model trains on captions: give the prompt tokenizer")

    def split(name, reps, seed):
        s = make_scenes(name, reps, seed)
        caps = s.captions
        unique = sorted(set(caps))
        ids = encode_prompts(tokenizer, unique, cfg.max_text, cfg.text_vocab)
        row = {c: i for i, c in enumerate(unique)}
        return tokenize(vq, s.images), ids[torch.tensor([row[c] for c in caps])]

    x, y = split("train", repeats, 0)
    xv, yv = split("val", 1, 1)
    return TokenData(x, y, xv, yv, torch.full((cfg.max_text,), cfg.pad_id))


# what a preset trains on (families/presets.py names it): data name -> (vq, base config, tokenizer) -> TokenData
TOKEN_DATA = {"animals": animal_tokens, "scenes": scene_tokens}


def train_base(out: str, cfg, data: TokenData, steps: int = 3000, batch_size: int = 128,
               lr: float = 5e-4, weight_decay: float = 0.05, warmup: int = 200, label_drop: float = 0.1,
               ema_decay: float = 0.999, eval_every: int = 250, seed: int = 0, device: str = "cpu",
               progress: Progress | None = None):
    """Train (or resume) a base model of config `cfg` on token data; returns the EMA model (on the CPU)."""
    check_run(out, steps)
    torch.manual_seed(seed)
    model = family_of(cfg).base_cls(cfg)
    x, y, xv, yv = data.x, data.y, data.xv, data.yv
    model.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name or name == "bias" else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                            lr=lr, betas=(0.9, 0.96))
    ema = EMA(model, ema_decay)
    settings = {"config": cfg.to_dict(), "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "warmup": warmup, "label_drop": label_drop, "ema_decay": ema_decay, "seed": seed,
                "data": [list(x.shape), list(data.y.shape)]}
    start = load_train_state(out, model, opt, ema, settings=settings)
    sched = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    val_loss = float("nan")
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr * sched(step)
        idx = torch.randint(0, len(x), (batch_size,))
        drop = torch.rand(batch_size) < label_drop
        labels = torch.where(drop.view(-1, *[1] * (y.dim() - 1)), data.uncond, y[idx])
        loss = masked_ce(model, x[idx], labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val_loss = validation_loss(ema.module, xv, yv)
            save_train_state(out, model, opt, step + 1, ema, meta={"val_ce": val_loss}, settings=settings)
        if progress:
            progress(step + 1, steps, {"loss": loss.item(), "val_ce": val_loss})
    return ema.module.cpu()
