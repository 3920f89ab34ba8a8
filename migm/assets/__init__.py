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


# Each shipped model's default run: the shortcut at the N and B where the committed low-budget
# tables show it closest to the full N-step sample among the strategies of equal cost
# (benchmarks/RESULTS.md; docs/cli.md names the rows). Kept here, as data beside MODELS, rather
# than in the checkpoints: their `sampling` entry stays the full sampler's settings.
#   tiny-animals: "The shortcut shipped today", N = 32, B = 6: token agreement 0.513 with the
#     full 32-step sample (reuse 0.469, extrapolation 0.442, fewer steps 0.213), pixel MAE
#     0.0838, FD 29.97 (vanilla N = 32: 25.40) for 6 of 32 base calls.
#   tiny-scenes: "Low budgets with the retrained shortcut", N = 32, B = 6: token agreement
#     0.627 (reuse 0.584, fewer 0.450, extrapolation 0.383), pixel MAE 0.028; at B = 6 on the
#     H200 GenEval-like table it keeps vanilla's scores (all 0.388 vs 0.394, FD 38.1 vs 38.1).
DEFAULT_RUNS = {
    "tiny-animals": {"steps": 32, "budget": 6, "strategy": "shortcut"},
    "tiny-scenes": {"steps": 32, "budget": 6, "strategy": "shortcut"},
}
