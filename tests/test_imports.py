"""Every public name and module imports on its own in a fresh interpreter (no import cycles that
only show when a module is imported first)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import traindoctor

MODULES = ["gradpath", "cli", "probes", "rules", "testing", "integrations.autopatch"]


# One public name per lazily imported module (names of one module share its import).
FIRST_NAMES = sorted({module: name for name, module in traindoctor._LAZY.items()}.values())


@pytest.mark.parametrize("name", FIRST_NAMES)
def test_public_name_first(name: str) -> None:
    code = f"import traindoctor as td; assert td.{name} is not None"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", MODULES)
def test_module_first(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import traindoctor.{module}"], check=True)
