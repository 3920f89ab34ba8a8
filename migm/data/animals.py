"""The animal-mnist silhouettes, read from the `animal-mnist` wheel (no download).

The wheel's own loader imports TensorFlow, so we read its gzipped arrays directly. They are
numpy pickles; an unpickler that accepts numpy's array classes and nothing else reads them,
so even a tampered data file runs no code. Images are padded from 28x28 to 32x32 (so a x2 or
x4 VQ grid divides evenly) and scaled to [0, 1]. The train/validation split is fixed: per
class, the first 900 images (in the wheel's order) train and the last 100 validate.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

CLASS_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
IMAGE_SIZE = 32
VAL_PER_CLASS = 100

INSTALL_HINT = "install it with: pip install --no-deps animal-mnist==0.4"


@dataclass
class Split:
    images: torch.Tensor  # [n, 1, 32, 32] float32 in [0, 1]
    labels: torch.Tensor  # [n] int64


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays only: any other class in the stream is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"animal-mnist data file holds {module}.{name}, not a plain array; "
                            f"reinstall: {INSTALL_HINT}")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 moved it (the old name still works, with a warning)
        return super().find_class(module, name)


def _data_dir() -> str:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise DataError(f"the animal-mnist data set is not installed; {INSTALL_HINT}")
    return os.path.join(os.path.dirname(spec.origin), "data", "Animal_MNIST")


def _read_array(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return _ArrayUnpickler(f).load()


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    base = _data_dir()
    paths = [os.path.join(base, f"animal_{kind}_version_3.gz") for kind in ("data", "label")]
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"animal-mnist data file missing: {p}; {INSTALL_HINT}")
    images, labels = (_read_array(p) for p in paths)
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise DataError(f"unexpected animal-mnist arrays {images.shape}, {labels.shape}; {INSTALL_HINT}")
    return images, labels


def load_animals(split: str) -> Split:
    """Return the 'train' (9,000) or 'val' (1,000) split."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    images, labels = _load_raw()
    keep = []
    for c in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == c)
        keep.append(idx[-VAL_PER_CLASS:] if split == "val" else idx[:-VAL_PER_CLASS])
    idx = np.concatenate(keep)
    pad = (IMAGE_SIZE - 28) // 2
    x = np.pad(images[idx], ((0, 0), (pad, pad), (pad, pad)))
    x = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    return Split(images=x, labels=torch.from_numpy(labels[idx]).long())


def has_animals() -> bool:
    """Whether the data set is installed (tests skip without it)."""
    return importlib.util.find_spec("animal_mnist") is not None
