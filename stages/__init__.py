"""Stage modules, one per stage family. ``registry()`` finds every Stage subclass with a name.

Modules are discovered, not listed, so adding a stage is adding a file. Stage modules keep their
imports light (heavy libraries load in ``setup()``) so listing stages stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil

from pipeline.errors import WinnowError

_REGISTRY: dict | None = None


def registry() -> dict:
    global _REGISTRY
    if _REGISTRY is None:
        from stages.base import Stage

        found = {}
        for mod in pkgutil.iter_modules(__path__):
            if mod.name.startswith("_") or mod.name == "base":
                continue
            module = importlib.import_module(f"{__name__}.{mod.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Stage) and obj.name and obj.__module__ == module.__name__:
                    found[obj.name] = obj
        _REGISTRY = dict(sorted(found.items()))
    return _REGISTRY


def get_stage(name: str):
    """A built-in stage by name, or a user's stage class by import path ``package.module:ClassName``."""
    if ":" in name:
        return _import_stage(name)
    stages = registry()
    if name not in stages:
        raise WinnowError(f"unknown stage '{name}'; available: {', '.join(stages)}")
    return stages[name]


def _import_stage(path: str):
    from stages.base import Stage

    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise WinnowError(f"stage '{path}' cannot be imported ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise WinnowError(f"stage '{path}' is not a winnow Stage subclass")
    return cls
