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

from .data import CLASS_NAMES, load_animals

CANVAS = 64
SIZES = {"small": 20, "large": 36}
POSITIONS = ("left", "right", "top", "bottom")
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
JITTER = 2
# offset of the object's centre from the canvas centre, per size: as far out as the box fits
OFFSET = {name: (CANVAS - side) // 2 - JITTER - 1 for name, side in SIZES.items()}
# a box whose longer side reaches this is "large" (small boxes are at most 20, large ones ~24..36)
LARGE_FROM = 24
INK = 0.5  # a pixel belongs to the object from this intensity


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


@dataclass
class Judgement:
    found: torch.Tensor  # [n] bool: any ink at all
    sizes: list[str]
    positions: list[str]
    crops: torch.Tensor  # [n, 1, 32, 32]: the object, framed as the classifier's training images


@torch.no_grad()
def judge(images: torch.Tensor) -> Judgement:
    """Read size, position and the object's crop back from scenes [n, 1, 64, 64].

    Position: the side of the canvas centre the ink's bounding box is furthest towards.
    Size: the ink's bounding box. Crop: the box's square around its centre, scaled so the
    object fills 28 of 32 pixels, as a silhouette does in the classifier's data.
    """
    n = len(images)
    ink = images[:, 0] >= INK
    found = ink.flatten(1).any(1)
    sizes, positions, crops = [], [], torch.zeros(n, 1, 32, 32)
    for i in range(n):
        if not found[i]:
            sizes.append("none")
            positions.append("none")
            continue
        rows, cols = ink[i].any(1).nonzero().flatten(), ink[i].any(0).nonzero().flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        cy, cx = (y0 + y1 - CANVAS) / 2, (x0 + x1 - CANVAS) / 2
        positions.append(("right" if cx > 0 else "left") if abs(cx) >= abs(cy) else ("bottom" if cy > 0 else "top"))
        side = max(y1 - y0, x1 - x0)
        sizes.append("large" if side >= LARGE_FROM else "small")
        # square box of the object's longer side, centred, in a zero-padded canvas
        half = side / 2
        my, mx = (y0 + y1) / 2, (x0 + x1) / 2
        pad = CANVAS
        big = F.pad(images[i:i + 1], (pad, pad, pad, pad))
        a, b = int(round(my - half)) + pad, int(round(mx - half)) + pad
        box = big[:, :, a:a + side, b:b + side]
        obj = F.interpolate(box, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        crops[i, :, 2:30, 2:30] = obj[0].clamp(0, 1)
    return Judgement(found, sizes, positions, crops)


def scenes_tokenizer(cfg):
    """The prompt tokenizer over the captions' words, laid out for the base config `cfg`."""
    from ..models.text import build_tokenizer

    words = sorted({w for c, *_ in all_captions() for w in c.split()})
    return build_tokenizer(words, cfg.text_vocab, cfg.max_text)


def crop_splits(repeats: int = 2):
    """(train, val) Splits of object crops [n, 1, 32, 32] with their animals: the data of the
    classifier that names the animal in a generated scene (trained on crops as `judge` makes them)."""
    from .data import Split

    out = []
    for split, reps, seed in (("train", repeats, 2), ("val", 1, 1)):
        s = make_scenes(split, reps, seed)
        out.append(Split(images=judge(s.images).crops, labels=s.animals))
    return tuple(out)
