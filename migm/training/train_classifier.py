"""Train the evaluation classifier (its penultimate features define FD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.animals import load_animals
from ..models.classifier import Classifier, ClassifierConfig
from .state import Progress, check_run, load_train_state, save_train_state


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random mirror and a shift of up to 2 pixels (the padding leaves room)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def accuracy(model: Classifier, images, labels) -> float:
    model.eval()
    pred = torch.cat([model(images[i:i + 500]).argmax(-1) for i in range(0, len(images), 500)])
    return (pred == labels).float().mean().item()


def train_classifier(out: str, cfg: ClassifierConfig, steps: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, data: tuple | None = None, device: str = "cpu",
                     progress: Progress | None = None) -> Classifier:
    """`data`: (train Split, val Split) of 32x32 images (default: animal-mnist's)."""
    check_run(out, steps)
    torch.manual_seed(seed)
    train, val = data if data is not None else (load_animals("train"), load_animals("val"))
    model = Classifier(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    settings = {"config": cfg.to_dict(), "batch_size": batch_size, "lr": lr, "seed": seed,
                "data": list(train.images.shape)}
    start = load_train_state(out, model, opt, settings=settings)
    acc = float("nan")
    for step in range(start, steps):
        model.train()
        for group in opt.param_groups:  # linear decay to zero
            group["lr"] = lr * (1 - step / steps)
        idx = torch.randint(0, len(train.images), (batch_size,))
        x, y = augment(train.images[idx]).to(device), train.labels[idx].to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            acc = accuracy(model.cpu(), val.images, val.labels)
            model.to(device)
            save_train_state(out, model, opt, step + 1, meta={"val_acc": acc}, settings=settings)
        if progress:
            progress(step + 1, steps, {"loss": loss.item(), "val_acc": acc})
    return model.cpu().eval()
