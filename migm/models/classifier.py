"""The evaluation classifier: a small CNN whose penultimate features define FD."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn


@dataclass
class ClassifierConfig:
    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(_stage(cfg.channels, w), _stage(w, 2 * w), _stage(2 * w, 4 * w))
        self.features_head = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * (cfg.image_size // 8) ** 2, cfg.feature_dim), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, images):
        """Penultimate features [B, feature_dim] of images in [0, 1]."""
        return self.features_head(self.body(images * 2 - 1))

    def forward(self, images):
        return self.fc(self.dropout(self.features(images)))
