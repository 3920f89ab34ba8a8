"""Turning image tensors into PNG files (written atomically), and the output folder they go to."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..fileio import atomic_path, check_writable, read_json


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


def slug(text: str, limit: int = 60) -> str:
    """Text as a file-name part: "a small cat on the left" -> a-small-cat-on-the-left. Letters and
    digits only, so a name from a file (a class name) can never name a path; at most `limit` chars."""
    words = ("".join(ch for ch in w if ch.isalnum()) for w in str(text).lower().split())
    return "-".join(w for w in words if w)[:limit].strip("-") or "image"


class ImageFolder:
    """The folder `migm-run` writes its PNGs into. It must be absent, empty, or one migm-run wrote
    before (its marker lists the files it wrote): anything else is refused before any work, so no
    file of the user's is ever overwritten. Files of the previous run that this one does not write
    again are removed when it finishes (they were migm's)."""

    MARKER = ".migm-run.json"

    def __init__(self, path: str | Path):
        if not str(path).strip():
            raise ConfigError("--out is empty: give an output folder")
        self.path = Path(path)
        self.previous: list[str] = []
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise ConfigError(f"{self.path} exists and is not a folder; choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()):
            try:
                self.previous = [n for n in read_json(self.path / self.MARKER, "migm-run marker")["files"]
                                 if isinstance(n, str) and n == Path(n).name]
            except (OSError, ValueError, KeyError, TypeError):
                raise ConfigError(f"{self.path} holds files migm-run did not write; choose another --out or "
                                  "empty it (migm-run replaces only its own images)") from None
        self.written: list[str] = []

    def open(self) -> "ImageFolder":
        check_writable(self.path)
        # the marker first, before any image: a run killed (or out of disk) part-way leaves a folder
        # the next run recognises as its own (the files listed are the previous run's, still to clean)
        self._mark(self.previous)
        return self

    def save(self, image: torch.Tensor, name: str, scale: int = 1) -> None:
        save_png(image, self.path / name, scale=scale)
        self.written.append(name)

    def _mark(self, files: list[str]) -> None:
        with atomic_path(self.path / self.MARKER) as tmp:
            tmp.write_text(json.dumps({"files": files}, indent=1) + "\n")

    def close(self) -> None:
        self._mark(self.written)
        for name in set(self.previous) - set(self.written):
            stale = self.path / name
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
