"""The shipped checkpoints: the embedded default model (tiny-animals, class-to-image) and the
tiny text-to-image model (tiny-scenes, in scenes/, with its tokenizer in base.tokenizer/)."""

from pathlib import Path

from ..errors import ConfigError

ASSETS = Path(__file__).parent
VQ = ASSETS / "vq"
CLASSIFIER = ASSETS / "classifier"
BASE = ASSETS / "base"
SHORTCUT = ASSETS / "shortcut"
SCENES = ASSETS / "scenes"

# the directory holding each shipped model's vq, classifier, base and shortcut checkpoints
MODELS = {"tiny-animals": ASSETS, "tiny-scenes": SCENES}


def model_dir(name: str) -> Path:
    if name not in MODELS:
        raise ConfigError(f"unknown shipped model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def has_checkpoint(path: Path) -> bool:
    """Whether a checkpoint NAME (NAME.json beside NAME.safetensors) exists."""
    return Path(f"{path}.json").exists()
