"""migm: fast masked image generation with MIGM-Shortcut."""

__version__ = "0.1.0"
