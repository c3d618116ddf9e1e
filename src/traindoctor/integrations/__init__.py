"""Ways to attach traindoctor: zero-code (autopatch + runner) and the framework callbacks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def doctor_options(
    out_dir: str | Path,
    budget: float,
    console: bool,
    select: Iterable[str],
    ignore: Iterable[str],
    caller: str = "Doctor",
) -> dict[str, Any]:
    """A framework callback's options (those of `traindoctor.watch`) as `Doctor(**options)`
    keywords, checked (a one-line UsageError naming `caller` and the bad value)."""
    from .._validate import check_options

    opts = check_options(
        caller, out_dir=out_dir, budget=budget, console=console, select=select, ignore=ignore
    )
    return {
        "out_dir": out_dir,
        "budget": opts["budget"],
        "console": console,
        "select_codes": opts["select"],
        "ignore_codes": opts["ignore"],
    }
