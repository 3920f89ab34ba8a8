"""The strategies for the steps that do not run the base model (sampling/loop.py runs them), in a
module without torch so that the command lines can offer them before importing it."""

STRATEGIES = ("vanilla", "fewer", "reuse", "extrapolate", "mlcache", "shortcut")
