"""Turning image tensors into PNG files (written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..fileio import atomic_path


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """[C, H, W] in [0, 1] -> PIL image (grayscale for one channel)."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0)))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> torch.Tensor:
    """[n, C, H, W] -> one [C, H', W'] tile image, `ncol` columns (default about square)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.5)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> uint8 [H, W, C] (the layout image files and servers use)."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def png_bytes(image: torch.Tensor, scale: int = 1) -> bytes:
    """[C, H, W] in [0, 1] -> the bytes of a PNG file."""
    buf = io.BytesIO()
    to_pil(image, scale).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> None:
    with atomic_path(path) as tmp:
        to_pil(image, scale).save(tmp, format="PNG")


def slug(text: str) -> str:
    """Text as a file-name part: "a small cat on the left" -> a-small-cat-on-the-left."""
    return "-".join("".join(ch for ch in w if ch.isalnum()) for w in text.lower().split())[:60] or "prompt"
