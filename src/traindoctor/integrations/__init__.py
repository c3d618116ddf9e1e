"""Ways to attach traindoctor: zero-code (autopatch + runner) and the framework callbacks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def doctor_options(
    out_dir: str | Path, budget: float, console: bool, select: Iterable[str], ignore: Iterable[str]
) -> dict[str, Any]:
    """A framework callback's options (those of `traindoctor.watch`) as `Doctor(**options)`
    keywords."""
    return {
        "out_dir": out_dir,
        "budget": budget,
        "console": console,
        "select_codes": tuple(select),
        "ignore_codes": tuple(ignore),
    }
