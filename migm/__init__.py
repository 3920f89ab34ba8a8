"""migm: fast masked image generation with MIGM-Shortcut."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`migm.MigmPipeline`, the diffusers pipeline, resolved on first use: diffusers is heavy, and
    `import migm` (or `migm.runtime`) must not pull it in."""
    if name == "MigmPipeline":
        # the one upward import: the package's diffusers entry point, resolved on first access
        from migm.runtime.diffusers_pipeline import MigmPipeline  # heavy (diffusers): on demand
        return MigmPipeline
    raise AttributeError(f"module 'migm' has no attribute {name!r}")
