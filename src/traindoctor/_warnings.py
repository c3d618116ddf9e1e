"""Warnings raised through our wrappers keep pointing at the user's line.

torch warns with `stacklevel=2` to name the line that called it (`F.mse_loss` on shapes that
broadcast, `lr_scheduler.step()` before `optimizer.step()`). A wrapper of ours between the
user and torch would take that place: the warning would name traindoctor's file, and, shown
once per location, would hide every other call site. `call_as_caller` runs the wrapped call,
and re-emits what it warned at the wrapper's caller, under the user's warning filters.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any


def call_as_caller(wrapper_file: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, called from a wrapper defined in `wrapper_file`, whose caller is
    two frames above this function."""
    if threading.current_thread() is not threading.main_thread():
        # catch_warnings swaps process-wide state: only on the main thread (the training loop).
        return fn(*args, **kwargs)
    caller = sys._getframe(2)
    pending: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn(*args, **kwargs)
            finally:
                pending = list(caught)
    finally:
        # After the user's filters are back, and also when the call raised.
        if pending:
            _reemit(pending, wrapper_file, caller)
    return result


# catch_warnings() resets every module's once-per-location registry (it bumps the filters'
# version), so "shown once per location" is kept here for the warnings we re-emit.
_shown: set[tuple[Any, ...]] = set()


def _reemit(caught: list[warnings.WarningMessage], wrapper_file: str, caller: Any) -> None:
    for w in caught:
        if w.filename in (wrapper_file, __file__):  # `stacklevel=2` landed on our frames
            filename, lineno = caller.f_code.co_filename, caller.f_lineno
            module = caller.f_globals.get("__name__", "")
        else:
            filename, lineno = w.filename, w.lineno
            module = filename.rsplit("/", 1)[-1].removesuffix(".py")
        text = str(w.message)
        action = _action(text, w.category, module, lineno)
        if action == "ignore":
            continue
        if action in ("default", "module", "once"):
            key = (
                filename if action != "once" else None,
                lineno if action == "default" else None,
                w.category,
                text,
            )
            if key in _shown:
                continue
            if len(_shown) < 4096:
                _shown.add(key)
        warnings.warn_explicit(w.message, w.category, filename, lineno, module)


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
