"""traindoctor's anomaly-mode windows, kept out of the user's own anomaly-mode contexts.

On structural steps the gradpath and numerics probes switch anomaly mode on (no NaN checks:
nodes only keep the line that made them) from the end of the model's forward to the backward.
The user's loss code runs inside that window. A `torch.autograd.detect_anomaly()` or
`set_detect_anomaly()` made there captured our window's state as its "previous" one and put
it back at its exit, after our window had closed: anomaly mode then stayed on for the rest of
the process (every later forward records tracebacks, every later run in the process sees it).

So while a window is open, these two classes' `__init__` (through _patching.py, restored
exactly) replace the state they captured with the one the window found, which is what they
capture without traindoctor; and a window whose state the user's code changed is not
restored by us: the user's own context (or call) owns the mode from then on. One window at a
time in the process: a window opens only while anomaly mode is off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import anomaly_mode

from ._patching import Patch, PatchSet, acquire, release

_OURS = (True, False)  # what a window sets: node tracebacks, no NaN checks
_found: tuple[bool, bool] | None = None  # the state the open window found, while one is open
_taken = False  # the user's code set anomaly mode inside the open window


def _state() -> tuple[bool, bool]:
    return (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())


def _wrap_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        global _taken
        original(self, *args, **kwargs)
        found = _found
        if found is not None and hasattr(self, "prev"):
            self.prev, self.prev_check_nan = found  # what it captures without us
            _taken = True

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


def _patches() -> list[Patch]:
    return [
        Patch(anomaly_mode.detect_anomaly, "__init__", _wrap_init),
        Patch(anomaly_mode.set_detect_anomaly, "__init__", _wrap_init),
    ]


_PATCH = PatchSet("torch.autograd anomaly-mode contexts", _patches)


def open_window() -> bool:
    """Anomaly mode on (no NaN checks) until `close_window()`; False (nothing done) when it is
    on already: the user's, or another window's, and lines are recorded anyway."""
    global _found, _taken
    if torch.is_anomaly_enabled():
        return False
    acquire(_PATCH)
    _found, _taken = _state(), False
    torch.set_anomaly_enabled(*_OURS)
    return True


def close_window() -> None:
    """Ends the window opened by `open_window()` (call it once per True it returned): the
    state it found comes back unless the user's code set anomaly mode since."""
    global _found, _taken
    found, taken = _found, _taken
    _found, _taken = None, False
    release(_PATCH)
    if found is not None and not taken and _state() == _OURS:
        torch.set_anomaly_enabled(*found)
