"""Architecture rules of src/traindoctor (issue 14): no module reaches into another package's private
objects, and no import cycle runs at import time. Both read the source with bench/architecture.py
(where the terms are defined); the allowlists hold today's exceptions and may only shrink: a new
violation fails, and so does an allowlisted one that is gone (delete its line).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# (accessing module, private name): why it is still there. Remove a line when its access goes.
PRIVATE_ACCESS_ALLOWLIST: dict[tuple[str, str], str] = {}

# Strongly connected components of module-level imports (module names without 'traindoctor.').
IMPORT_CYCLE_ALLOWLIST: dict[frozenset[str], str] = {}

# Cycles counting every import (in functions and under TYPE_CHECKING too): a lazy import hides
# a cycle from Python, not from a reader. The same rule: this list may only shrink.
HIDDEN_CYCLE_ALLOWLIST: dict[frozenset[str], str] = {
    frozenset({"report.console", "report.model", "report.text"}): (
        "str(report) renders with the console renderer, which renders a Report"
    ),
}


def _architecture():
    spec = importlib.util.spec_from_file_location(
        "_bench_architecture", ROOT / "bench/architecture.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def arch():
    mod = _architecture()
    return mod, mod.load(SRC)


def _short(module: str) -> str:
    return module.removeprefix("traindoctor.")


def test_no_private_access_across_package_boundaries(arch):
    mod, modules = arch
    found: dict[tuple[str, str], list[str]] = {}
    for a in mod.private_accesses(modules):
        if a.crosses_package:
            where = f"{a.module.replace('.', '/')}.py:{a.line} ({', '.join(a.defined_in)})"
            found.setdefault((_short(a.module), a.name), []).append(where)
    new = {k: v for k, v in found.items() if k not in PRIVATE_ACCESS_ALLOWLIST}
    gone = sorted(set(PRIVATE_ACCESS_ALLOWLIST) - set(found))
    assert not new, (
        "private names of another package's module used (make them public, or use a declared "
        f"event or extension point): {new}"
    )
    assert not gone, f"no longer accessed: delete these from PRIVATE_ACCESS_ALLOWLIST: {gone}"


@pytest.mark.parametrize(
    ("module_level_only", "allowlist", "what"),
    [
        (True, IMPORT_CYCLE_ALLOWLIST, "at import time"),
        (False, HIDDEN_CYCLE_ALLOWLIST, "lazily or for typing"),
    ],
    ids=["at-import", "hidden"],
)
def test_no_import_cycles(arch, module_level_only, allowlist, what):
    mod, modules = arch
    found = {
        frozenset(map(_short, comp))
        for comp in mod.cycles(mod.import_graph(modules, module_level_only=module_level_only))
    }
    new = [sorted(c) for c in found if c not in allowlist]
    gone = [sorted(c) for c in allowlist if c not in found]
    assert not new, f"modules that import each other ({what}): {new}"
    assert not gone, f"no longer a cycle: delete these from the allowlist: {gone}"


def test_the_checks_see_what_they_forbid(arch, tmp_path):
    # A tiny tree with one violation of each kind: the checks are not vacuous.
    mod, _ = arch
    pkg = tmp_path / "traindoctor"
    (pkg / "probes").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "doctor.py").write_text(
        "from .probes import base\n\nclass Doctor:\n    def __init__(self):\n"
        "        self._closed = False\n"
    )
    (pkg / "probes" / "__init__.py").write_text("")
    (pkg / "probes" / "base.py").write_text(
        "import torch\nfrom .. import doctor\n\ndef f(ctx):\n"
        "    return ctx.doctor._closed, torch._foreach_norm, ctx.model._modules\n"
    )
    modules = mod.load(tmp_path)
    (a,) = mod.private_accesses(modules)
    assert (a.module, a.name, a.defined_in) == (
        "traindoctor.probes.base",
        "_closed",
        ("traindoctor.doctor",),
    )
    assert a.crosses_package
    graph = mod.import_graph(modules, module_level_only=True)
    assert mod.cycles(graph) == [["traindoctor.doctor", "traindoctor.probes.base"]]
