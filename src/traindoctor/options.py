"""`Options`: the one options type of every entry point.

`td.watch`, `traindoctor.accelerate.watch`, the Lightning / transformers / Ultralytics
callbacks, `run_target` (the command line) and `Doctor` itself each take these as keyword
arguments (`budget=0.05`, `console=False`, ...), build one `Options` with `Options.checked`
(a one-line `UsageError` that names the entry point and the bad value, see _validate.py) and
pass it on; the Doctor is configured from it alone. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ._validate import check_options
from .config import DEFAULT_OUT_DIR

# The options users pass to `traindoctor.watch` and to every framework callback.
WATCH_OPTIONS = ("out_dir", "budget", "console", "select", "ignore", "export")


@dataclass(frozen=True)
class Options:
    """How a run is watched and reported.

    - `out_dir`: the run directories' parent (`DEFAULT_OUT_DIR`, by identity, lets
      `[tool.traindoctor] out` replace it in `watch`);
    - `budget`: the overhead allowed, as a fraction of step time;
    - `console`: print the summary at the end;
    - `select` / `ignore`: rule codes or prefixes, checked and upper-cased;
    - `max_steps`: stop after this many optimizer steps (`traindoctor run --max-steps`);
    - `mode`: how it is attached ("watch", "zero-code", "lightning", ...);
    - `run_id`: the run directory's name (generated when None);
    - `export`: the experiment trackers findings are posted to: "auto" (those the script has
      active), a tuple of names from `_validate.TRACKERS`, or () for none.
    """

    out_dir: str | Path = DEFAULT_OUT_DIR
    budget: float = 0.03
    console: bool = True
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    max_steps: int | None = None
    mode: str = "watch"
    run_id: str | None = None
    export: str | tuple[str, ...] = "auto"

    @classmethod
    def checked(cls, caller: str, **given: Any) -> Options:
        """Options from an entry point's keyword arguments, each given one checked; `caller`
        names the entry point in the error (`watch(budget=...) got 2 (int); ...`)."""
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"Options has no field {sorted(unknown)[0]!r}")  # a bug of ours
        # Always checked: TRAINDOCTOR_EXPORT applies where the entry point left the default.
        given.setdefault("export", "auto")
        return cls(**check_options(caller, **given))

    def but(self, **changes: Any) -> Options:
        """These options with some fields set by the entry point itself (not checked: the
        entry point's own values, such as its mode)."""
        return replace(self, **changes)
