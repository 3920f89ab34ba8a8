"""The runtime products embed: load models, run the generation loop, return images."""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
