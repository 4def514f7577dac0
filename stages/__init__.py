"""The stage SDK (base, columns, errors, predicate) and one folder per stage family.

``registry()`` imports each family (a family's ``__init__`` imports only its stage modules) and
collects every named Stage subclass defined under ``winnow.stages``: adding a stage is adding a
module to a family's ``__init__``. Stage modules keep their imports light (heavy libraries load in
``setup()``) so listing stages stays fast.
"""
from __future__ import annotations

import importlib

from winnow.stages.errors import WinnowError

FAMILIES = ("download", "filter", "dedup", "balance", "caption")
_REGISTRY: dict | None = None


def registry() -> dict:
    global _REGISTRY
    if _REGISTRY is None:
        from winnow.stages.base import Stage

        for family in FAMILIES:
            importlib.import_module(f"{__name__}.{family}")
        found = {cls.name: cls for cls in _subclasses(Stage)
                 if cls.name and cls.__module__.startswith(f"{__name__}.") and cls.name == cls.__dict__.get("name")}
        _REGISTRY = dict(sorted(found.items()))
    return _REGISTRY


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def get_stage(name: str):
    """A built-in stage by name, or a user's stage class by import path ``package.module:ClassName``."""
    if ":" in name:
        return _import_stage(name)
    stages = registry()
    if name not in stages:
        raise WinnowError(f"unknown stage '{name}'; available: {', '.join(stages)}")
    return stages[name]


def _import_stage(path: str):
    from winnow.stages.base import Stage

    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise WinnowError(f"stage '{path}' cannot be imported ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise WinnowError(f"stage '{path}' is not a winnow Stage subclass")
    return cls
