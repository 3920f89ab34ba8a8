"""The runtime products embed: load a bundle or checkpoints, run the generation loop on a
backend, return images. It carries no training or benchmark code."""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
