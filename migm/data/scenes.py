"""Tiny text-to-image data: animal-mnist silhouettes placed on a 64x64 canvas, with captions.

A scene holds one animal, scaled to a size and placed at a position, and its caption
names all three: "a small cat on the left", "a large zebra at the bottom".

    sizes       small: the 28x28 silhouette scaled to 20x20; large: to 36x36
    positions   left / right / top / bottom: the object's box centred a fixed offset from
                the canvas centre along one axis (centred on the other), +-2 px jitter
    captions    10 animals x 2 sizes x 4 positions = 80 distinct prompts

Scenes are drawn from the same fixed train/validation split of the silhouettes as the
class-conditional model (training/data.py), so no validation silhouette is ever trained on.
`judge` reads a generated scene back (object box, centroid, crop for the classifier): the
GenEval-like benchmark scores images with it, and on real scenes it gives the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .animals import CLASS_NAMES, load_animals

CANVAS = 64
SIZES = {"small": 20, "large": 36}
POSITIONS = ("left", "right", "top", "bottom")
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
JITTER = 2
# offset of the object's centre from the canvas centre, per size: as far out as the box fits
OFFSET = {name: (CANVAS - side) // 2 - JITTER - 1 for name, side in SIZES.items()}


def caption(animal: int, size: str, position: str) -> str:
    return f"a {size} {CLASS_NAMES[animal]} {PHRASES[position]}"


def all_captions() -> list[tuple[str, int, str, str]]:
    """Every prompt the data holds: (caption, animal, size, position), in a fixed order."""
    return [(caption(a, s, p), a, s, p) for a in range(len(CLASS_NAMES)) for s in SIZES for p in POSITIONS]


@dataclass
class Scenes:
    images: torch.Tensor  # [n, 1, 64, 64] in [0, 1]
    animals: torch.Tensor  # [n] class ids
    sizes: list[str]
    positions: list[str]

    @property
    def captions(self) -> list[str]:
        return [caption(int(a), s, p) for a, s, p in zip(self.animals, self.sizes, self.positions)]


def compose(silhouettes: torch.Tensor, sizes: list[str], positions: list[str],
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Place silhouettes [n, 1, 32, 32] (28x28 padded) on canvases: [n, 1, 64, 64]."""
    n = len(silhouettes)
    core = silhouettes[:, :, 2:30, 2:30]  # the original 28x28
    out = torch.zeros(n, 1, CANVAS, CANVAS)
    jitter = torch.randint(-JITTER, JITTER + 1, (n, 2), generator=generator)
    for name, side in SIZES.items():
        idx = [i for i, s in enumerate(sizes) if s == name]
        if not idx:
            continue
        scaled = F.interpolate(core[idx], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        for j, i in enumerate(idx):
            dx, dy = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}[positions[i]]
            cx = CANVAS // 2 + dx * OFFSET[name] + int(jitter[i, 0])
            cy = CANVAS // 2 + dy * OFFSET[name] + int(jitter[i, 1])
            x0, y0 = cx - side // 2, cy - side // 2
            out[i, :, y0:y0 + side, x0:x0 + side] = scaled[j]
    return out.clamp_(0, 1)


def make_scenes(split: str, repeats: int = 1, seed: int = 0) -> Scenes:
    """Every silhouette of the split `repeats` times, each with a random size, position and
    jitter (seeded); training silhouettes are mirrored at random (the caption is unchanged)."""
    data = load_animals(split)
    g = torch.Generator().manual_seed(seed)
    sil = data.images.repeat(repeats, 1, 1, 1)
    animals = data.labels.repeat(repeats)
    n = len(sil)
    if split == "train":
        flip = torch.rand(n, generator=g) < 0.5
        sil[flip] = sil[flip].flip(-1)
    size_names, pos_names = list(SIZES), list(POSITIONS)
    sizes = [size_names[int(i)] for i in torch.randint(len(size_names), (n,), generator=g)]
    positions = [pos_names[int(i)] for i in torch.randint(len(pos_names), (n,), generator=g)]
    return Scenes(compose(sil, sizes, positions, g), animals, sizes, positions)


def caption_words() -> list[str]:
    """Every word of every caption, sorted: the vocabulary of the tiny text-to-image model."""
    return sorted({w for c, *_ in all_captions() for w in c.split()})
