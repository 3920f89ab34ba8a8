"""Reading a generated scene back (tiny-scenes): where the object is, how large, and a crop of it
for the classifier that names the animal. The GenEval-like benchmark scores images with it, and
on real scenes it gives the ceiling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.animals import Split
from ..data.scenes import CANVAS, make_scenes

# a box whose longer side reaches this is "large" (small boxes are at most 20, large ones ~24..36)
LARGE_FROM = 24
INK = 0.5  # a pixel belongs to the object from this intensity


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


def crop_splits(repeats: int = 2) -> tuple[Split, Split]:
    """(train, val) Splits of object crops [n, 1, 32, 32] with their animals: the data of the
    classifier that names the animal in a generated scene (trained on crops as `judge` makes them)."""
    out = []
    for split, reps, seed in (("train", repeats, 2), ("val", 1, 1)):
        s = make_scenes(split, reps, seed)
        out.append(Split(images=judge(s.images).crops, labels=s.animals))
    return out[0], out[1]
