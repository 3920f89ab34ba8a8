"""Evaluation metrics: class accuracy and Frechet distance (FD) in classifier feature space.

The Frechet math uses scipy's matrix square root (`scipy.linalg.sqrtm`), the same
computation as the reference FID code, not a hand-rolled approximation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from ..models.classifier import Classifier


@torch.no_grad()
def classify(classifier: Classifier, images: torch.Tensor, batch_size: int = 500):
    """(features [n, D] float64 numpy, predicted labels [n]) for images in [0, 1]."""
    classifier.eval()
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(images[i:i + batch_size].float())
        feats.append(f)
        preds.append(classifier.fc(f).argmax(-1))
    return torch.cat(feats).double().numpy(), torch.cat(preds)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to feature sets a [n, D] and b [m, D]."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # singular product: nudge the diagonals, as the reference FID code does
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class Evaluator:
    """FD and class accuracy against a fixed reference set (the validation split)."""

    def __init__(self, classifier: Classifier, reference_images: torch.Tensor):
        self.classifier = classifier
        self.ref_feats, _ = classify(classifier, reference_images)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        feats, preds = classify(self.classifier, images)
        out = {"fd": frechet_distance(feats, self.ref_feats), "n": len(images)}
        if labels is not None:
            out["class_acc"] = (preds == labels.cpu()).float().mean().item()
        return out

    def paired(self, images: torch.Tensor, reference: torch.Tensor) -> dict:
        """How close each image is to its own reference (the full N-step sample of the same seed and
        noise): mean absolute pixel error, and the classifier-feature distance relative to the
        reference's feature norm, both averaged over the pairs."""
        a, _ = classify(self.classifier, images)
        b, _ = classify(self.classifier, reference)
        dist = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)
        return {"pixel_mae": float((images.float() - reference.float()).abs().mean()),
                "feature_dist": float(dist.mean())}
