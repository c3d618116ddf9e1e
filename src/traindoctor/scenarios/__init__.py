"""Runnable buggy/healthy training scenarios, used by `traindoctor demo` and the tests.

Each scenario module is a plain PyTorch training script (runnable with
`python -m traindoctor.scenarios.<name>`); it imports nothing from traindoctor's core.
Its `SCENARIO` says which bug is planted, which rule must find it and where.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import Scenario


def all_scenarios() -> list[Scenario]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "demo":
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        scenario = getattr(mod, "SCENARIO", None)
        if isinstance(scenario, Scenario):
            found.append(scenario)
    return found


def get(name: str) -> Scenario:
    for s in all_scenarios():
        if s.name == name:
            return s
    from ..errors import UsageError

    names = ", ".join(s.name for s in all_scenarios())
    raise UsageError(f"no scenario named {name!r}; pass one of: {names}")
