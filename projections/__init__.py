"""Projection workers: they read the log in order and materialise tables from it.

Each module that defines a projection names it ``PROJECTION``; ``ALL`` is every one of
them, found here without a list to edit (in the order of their modules' names).
"""

import importlib
import pkgutil

from agentmem.projections.base import Projection


def _found() -> list[Projection]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        projection = getattr(module, "PROJECTION", None)
        if projection is not None:
            found.append(projection)
    return found


ALL: list[Projection] = _found()
BY_NAME: dict[str, Projection] = {p.name: p for p in ALL}

__all__ = ["ALL", "BY_NAME", "Projection"]
