"""Runnable buggy/healthy training scenarios, used by `traindoctor demo` and the tests.

Scenarios live by rule family, next to the rules they exercise: `grad_flow/` (TD1xx),
`numerics/` (TD2xx), `loss_path/` (TD3xx), `eval_hygiene/` (TD4xx), `setup/` (TD5xx),
`experiments/` (TD7xx, run with the experiments on a copy on: `Scenario.experiments`), and
`seeds/` for the small replicas of real reports. A module is named after the code its bug
plants (`grad_flow/td106_zero_grad_missing.py`) and holds one plain PyTorch training function
`train(steps=..., watch=None, bug=...)` whose healthy twin is `bug=None`; its `SCENARIOS`
tuple (or `SCENARIO`, for a module with one) says which bug each variant plants, which rule
must find it and where. Modules are runnable (`python -m traindoctor.scenarios.<family>.<module>`)
and import nothing from traindoctor's core. Flat top-level modules are still discovered.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

from ._base import Scenario

# The family subpackages searched besides the top level (one per rule family, and seeds).
FAMILIES = ("grad_flow", "numerics", "loss_path", "eval_hygiene", "setup", "experiments", "seeds")
# Scenarios that are whole multi-process jobs (torchrun): not run by the single-process runner
# (all_scenarios), listed by job_scenarios().
JOB_FAMILIES = ("distributed",)


def _module_names() -> Iterator[str]:
    """Scenario modules: public top-level modules and the public modules of each family."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "demo":
            continue
        if not info.ispkg:
            yield f"{__name__}.{info.name}"
        elif info.name in FAMILIES:
            package = importlib.import_module(f"{__name__}.{info.name}")
            for sub in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                if not sub.name.startswith("_") and not sub.ispkg:
                    yield f"{package.__name__}.{sub.name}"


def scenarios_of(module: ModuleType) -> tuple[Scenario, ...]:
    """What one module declares: `SCENARIO = Scenario(...)` and/or `SCENARIOS = (...)`."""
    found = [getattr(module, "SCENARIO", None), *getattr(module, "SCENARIOS", ())]
    return tuple(s for s in found if isinstance(s, Scenario))


def scenario_modules() -> list[tuple[str, tuple[Scenario, ...]]]:
    """(dotted module name, its scenarios) for every scenario module, in name order."""
    out = []
    for name in _module_names():
        scenarios = scenarios_of(importlib.import_module(name))
        if scenarios:
            out.append((name, scenarios))
    return out


def all_scenarios() -> list[Scenario]:
    """Every bundled scenario, sorted by name (the order of the demo and the tests)."""
    found = [s for _, scenarios in scenario_modules() for s in scenarios]
    return sorted(found, key=lambda s: s.name)


def get(name: str) -> Scenario:
    for s in all_scenarios():
        if s.name == name:
            return s
    from ..errors import UsageError

    names = ", ".join(s.name for s in all_scenarios())
    raise UsageError(f"no scenario named {name!r}; pass one of: {names}")


def job_scenarios() -> list[tuple[str, Scenario]]:
    """(dotted module name, scenario) of the multi-process job scenarios (scenarios/distributed/:
    each module runs one rank under torchrun; distributed/_job.run_job launches the job)."""
    out = []
    for family in JOB_FAMILIES:
        package = importlib.import_module(f"{__name__}.{family}")
        for sub in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if sub.name.startswith("_") or sub.ispkg:
                continue
            name = f"{package.__name__}.{sub.name}"
            out.extend((name, s) for s in scenarios_of(importlib.import_module(name)))
    return out
