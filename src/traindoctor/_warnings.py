"""Warnings raised through our wrappers keep pointing at the user's line.

torch warns with a `stacklevel` that names the line that called it (`stacklevel=2` in
`F.mse_loss` on shapes that broadcast and in `lr_scheduler.step()` before `optimizer.step()`;
`stacklevel=5` from a full backward hook that fires in `loss.backward()`). A wrapper of ours
between the user and torch takes that place: the warning would name traindoctor's file, and,
shown once per location, would hide every other call site. `call_as_caller` runs the wrapped
call with `warnings.showwarning` swapped for a function that shows a warning attributed to the
wrapper's file at the wrapper's caller instead, through `warnings.warn_explicit` with the
caller's module, line and registry: the user's filters and their once-per-location registry
decide, as they would without us. Every other warning goes to the `showwarning` in place.

Not `warnings.catch_warnings()`: entering and leaving it bumps the filters' version, which
empties every module's once-per-location registry; around every loss call and backward, the
user's own "default" warnings (a library's deprecation, each step) were shown again each step.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

_globals_of: dict[str, dict[str, Any] | None] = {}  # file -> the globals of its module


def _module_globals(filename: str) -> dict[str, Any] | None:
    if filename not in _globals_of:
        found = None
        for module in list(sys.modules.values()):
            if getattr(module, "__file__", None) == filename:
                found = vars(module)
                break
        _globals_of[filename] = found
    return _globals_of[filename]


def call_as_caller(wrapper_file: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, called from a wrapper defined in `wrapper_file`, whose caller is
    two frames above this function."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)  # showwarning is process-wide: the training loop's thread only
    return call_from(sys._getframe(2), (wrapper_file,), fn, *args, **kwargs)


def call_from(
    caller: Any, files: Iterable[str], fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """`fn(*args, **kwargs)`, with the warnings it makes name `caller` where they would name a
    frame in one of `files` (our wrappers between the caller and torch)."""
    ours = (*files, __file__)
    if caller.f_code.co_filename in ours:
        return fn(*args, **kwargs)  # called by our own code: nothing to re-attribute
    shown = warnings.showwarning

    def showwarning(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if filename not in ours:
            shown(message, category, filename, lineno, file, line)
            return
        _forget_once(message, category, filename, lineno)
        g = caller.f_globals
        warnings.warn_explicit(
            message,
            category,
            caller.f_code.co_filename,
            caller.f_lineno,
            g.get("__name__", "<string>"),
            g.setdefault("__warningregistry__", {}),
            g,
        )

    warnings.showwarning = showwarning
    try:
        return fn(*args, **kwargs)
    finally:
        if warnings.showwarning is showwarning:  # else replaced during the call: theirs stays
            warnings.showwarning = shown
        # What our frames' registries noted as shown, so that the next call's warning is
        # judged at its own caller again.
        for filename in ours:
            g = _module_globals(filename)
            registry = g.get("__warningregistry__") if g is not None else None
            if registry:
                registry.clear()


def _forget_once(message: Any, category: Any, filename: str, lineno: int) -> None:
    """A "once" filter noted the warning as shown at our frame (process-wide, by text): the
    re-emission at the caller must be judged afresh."""
    text = str(message)
    if isinstance(message, Warning):
        category = type(message)
    g = _module_globals(filename)
    module = g.get("__name__", "") if g is not None else ""
    if _action(text, category, module, lineno) == "once":
        warnings.onceregistry.pop((text, category), None)


def _action(text: str, category: type[Warning], module: str, lineno: int) -> str:
    """The action the user's filters give this warning (the warnings module's own lookup)."""
    for action, msg, cat, mod, line in warnings.filters:
        if (
            (msg is None or msg.match(text))
            and issubclass(category, cat)
            and (mod is None or mod.match(module))
            and (line == 0 or lineno == line)
        ):
            return action
    return warnings.defaultaction
