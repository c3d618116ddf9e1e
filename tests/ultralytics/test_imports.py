"""Importing traindoctor, or its Ultralytics integration, never imports ultralytics."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip(
    "ultralytics", reason="Ultralytics tests run in their own venv: `make test-ultralytics`"
)


def test_import_traindoctor_does_not_import_ultralytics() -> None:
    code = (
        "import sys, traindoctor; traindoctor.watch; traindoctor.ultralytics.attach; "
        "import traindoctor.integrations.autopatch; "
        "assert 'ultralytics' not in sys.modules, 'ultralytics was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
