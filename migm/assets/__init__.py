"""The shipped checkpoints of the embedded default model (tiny-animals)."""

from pathlib import Path

ASSETS = Path(__file__).parent
VQ = ASSETS / "vq"
CLASSIFIER = ASSETS / "classifier"
BASE = ASSETS / "base"
SHORTCUT = ASSETS / "shortcut"
