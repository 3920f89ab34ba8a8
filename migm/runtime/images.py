"""Turning image tensors into PNG files (written atomically), and the output folder they go to."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError
from ..fileio import atomic_path, check_writable


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


def labelled_grid(images: torch.Tensor, labels: Sequence[str], ncol: int | None = None, scale: int = 4,
                   pad: int = 4) -> Image.Image:
    """[n, C, H, W] in [0, 1] and one label per image -> one RGB image: the images enlarged `scale`
    times (nearest neighbour: the tiny images' pixels stay square) in `ncol` columns (default about
    square), each with its label under it in PIL's small default font, wrapped to two lines and cut
    with "..." where longer."""
    n, _, h, w = images.shape
    if len(labels) != n:
        raise ConfigError(f"{len(labels)} labels for {n} images")
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 2
    cw, ch = w * scale, h * scale
    cell_h = ch + 2 * line + pad
    sheet = Image.new("RGB", (ncol * (cw + pad) + pad, nrow * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        r, col = divmod(i, ncol)
        x, y = pad + col * (cw + pad), pad + r * cell_h
        sheet.paste(to_pil(images[i], scale).convert("RGB"), (x, y))
        for k, text in enumerate(_wrap(str(labels[i]), font, cw)):
            draw.text((x, y + ch + 1 + k * line), text, fill=(0, 0, 0), font=font)
    return sheet


def _wrap(text: str, font, width: int, lines: int = 2) -> list[str]:
    """`text` in at most `lines` lines of at most `width` pixels; the last one cut with "..." if need be."""
    out, words = [], text.split()
    while words and len(out) < lines:
        cur = words.pop(0)
        while words and font.getlength(f"{cur} {words[0]}") <= width:
            cur = f"{cur} {words.pop(0)}"
        out.append(cur)
    if words or (out and font.getlength(out[-1]) > width):
        last = out[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        out[-1] = last + "..."
    return out


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
    """The folder one `migm-run` writes its PNGs into: a new numbered subfolder of `--out`
    (run-0001, run-0002, ...), so every run's images stay as they were and nothing in `--out`
    is ever overwritten or removed. `--out` itself may hold anything; it must not be a file.
    The subfolder is made by `open` (after every check), claimed with an exclusive mkdir, so two
    runs started together get two folders."""

    MARKER = ".migm-run.json"
    PREFIX = "run-"

    def __init__(self, path: str | Path):
        if not str(path).strip():
            raise ConfigError("--out is empty: give an output folder")
        self.root = Path(path)
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise ConfigError(f"{self.root} exists and is not a folder; choose another --out")
        self.path = self.root / f"{self.PREFIX}{self._next_number():04d}"  # what open() will claim
        self.written: list[str] = []

    def _next_number(self) -> int:
        numbers = [int(p.name[len(self.PREFIX):]) for p in self.root.glob(f"{self.PREFIX}*")
                   if p.name[len(self.PREFIX):].isdigit()] if self.root.is_dir() else []
        return max(numbers, default=0) + 1

    def open(self) -> "ImageFolder":
        check_writable(self.root)
        while True:
            self.path = self.root / f"{self.PREFIX}{self._next_number():04d}"
            try:
                self.path.mkdir()
                break
            except FileExistsError:  # another run took this number between the glob and the mkdir
                continue
        # the marker first, before any image: a run killed (or out of disk) part-way leaves a folder
        # that says it is migm-run's (an empty list: the run did not finish)
        self._mark([])
        return self

    def save(self, image: torch.Tensor | Image.Image, name: str, scale: int = 1) -> None:
        if isinstance(image, Image.Image):
            with atomic_path(self.path / name) as tmp:
                image.save(tmp, format="PNG")
        else:
            save_png(image, self.path / name, scale=scale)
        self.written.append(name)

    def _mark(self, files: list[str]) -> None:
        with atomic_path(self.path / self.MARKER) as tmp:
            tmp.write_text(json.dumps({"files": files}, indent=1) + "\n")

    def close(self) -> None:
        self._mark(self.written)
