"""Model families: one adapter object per family (see family.py), found by name or by model."""

from __future__ import annotations

from ..errors import ConfigError
from .family import Family, ModelSpec
from .llada import LLADA
from .maskgit import MASKGIT

FAMILIES: dict[str, Family] = {f.name: f for f in (MASKGIT, LLADA)}
_BY_TYPE = {t: f for f in FAMILIES.values() for t in (f.base_cls, f.base_config_cls, f.shortcut_cls,
                                                       f.shortcut_config_cls)}


def family(name: str) -> Family:
    """The family called `name` (as stored in bundles and trajectory sets)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; this migm runs {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(obj) -> Family:
    """The family of a base or shortcut model, or of its config."""
    if type(obj) not in _BY_TYPE:
        raise ConfigError(f"{type(obj).__name__} belongs to no model family ({', '.join(FAMILIES)})")
    return _BY_TYPE[type(obj)]


__all__ = ["FAMILIES", "Family", "ModelSpec", "family", "family_of"]
