"""Functional dropout calls: `F.dropout(x, p, training=self.training)` in a module's forward.

A model that drops out through the functional call (pytorch/examples' GAT) holds no Dropout
module, yet its forward depends on its mode. `torch.nn.functional.dropout` is wrapped while a
listener is attached (through _patching.py, restored exactly); each call made outside an
`nn.Dropout` module passes its `p` and `training` arguments to the listeners, then runs
unchanged (same arguments, same random numbers). Calls under torch.compile's tracing go
straight to the original.
"""

from __future__ import annotations

import ast
import linecache
import sys
from collections.abc import Callable
from typing import Any

import torch

from .. import _source
from .._hooks import compiling, lift_while_scripting
from .._patching import Patch, PatchSet, acquire, release

_listeners: list[Any] = []  # objects with functional_dropout(p, training)
# nn.Dropout's forward calls F.dropout too: those calls are the module's (modes.py reads it).
_MODULE_CODE = torch.nn.Dropout.forward.__code__
_WRAPPER_CODES: set[Any] = set()  # the wrappers' code objects (the caller is the frame above)


@torch.jit.unused
def _notify(p: float, training: bool) -> None:
    """Python only (TorchScript leaves it out): the call's arguments to the listeners, unless
    the caller is nn.Dropout's forward (frame 2: the caller of the wrapper)."""
    if not _listeners or compiling():
        return
    try:
        if sys._getframe(2).f_code is not _MODULE_CODE:
            for listener in list(_listeners):
                listener.functional_dropout(p, training)
    except Exception:  # noqa: BLE001 - never reaches the user's call
        pass


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    # The wrapper has F.dropout's own signature and is scriptable: torch.jit.script of a
    # module whose forward calls F.dropout compiles this function while it is installed
    # (the notification is skipped when scripting, the original compiled as usual).
    def dropout(
        input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            _notify(p, training)
        return original(input, p, training, inplace)

    # No __wrapped__: inspect.getsource follows it, and TorchScript would compile the
    # original's source with this module's globals. A module scripted while attached sees
    # the original (_hooks.lift_while_scripting); a function scripted then compiles this one.
    dropout._traindoctor_original = original  # type: ignore[attr-defined]  (SCRIPT_ORIGINAL)
    _WRAPPER_CODES.add(dropout.__code__)
    dropout.__name__ = getattr(original, "__name__", "dropout")
    dropout.__doc__ = getattr(original, "__doc__", None)
    return dropout


def _patches() -> list[Patch]:
    return [Patch(torch.nn.functional, "dropout", _wrap)]


DROPOUT_PATCH = PatchSet("torch.nn.functional.dropout", _patches)
lift_while_scripting(torch.nn.functional, "dropout")


def add_dropout_listener(listener: Any) -> None:
    acquire(DROPOUT_PATCH)  # one hold per listener
    _listeners.append(listener)


def remove_dropout_listener(listener: Any) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
        release(DROPOUT_PATCH)


def training_left_default() -> dict[str, str] | None:
    """Called from a listener: the user's F.dropout call being notified, when it leaves
    `training` at its default (True) — `{"source": "path:line", "code": the call}` — else None:
    the call passes `training` (by keyword or as the third positional argument, however it is
    spread over lines), is made by library code (which passes its own mode), or cannot be
    read."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code not in _WRAPPER_CODES:
        frame = frame.f_back
    caller = frame.f_back if frame is not None else None
    if caller is None:
        return None
    key = (caller.f_code, caller.f_lasti)
    if key not in _CALLS:  # once per call site: Monte-Carlo dropout calls it every sample
        if len(_CALLS) >= 256:
            _CALLS.clear()
        _CALLS[key] = _default_at(caller)
    return _CALLS[key]


_CALLS: dict[tuple[Any, int], dict[str, str] | None] = {}


def _default_at(caller: Any) -> dict[str, str] | None:
    if not _source.is_user_file(caller.f_code.co_filename):
        return None
    try:
        positions = list(caller.f_code.co_positions())[caller.f_lasti // 2]
        start, end, col, end_col = positions
        if start is None or end is None or col is None or end_col is None:
            return None
        path = caller.f_code.co_filename
        lines = [linecache.getline(path, n) for n in range(start, end + 1)]
        if not all(lines):
            return None
        lines[-1] = lines[-1][:end_col]
        lines[0] = lines[0][col:]
        text = "".join(lines)
        call = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, IndexError, TypeError):
        return None
    if not isinstance(call, ast.Call):
        return None
    if len(call.args) >= 3 or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    if any(k.arg in ("training", None) for k in call.keywords):
        return None
    return {"source": f"{_source.relpath(path)}:{start}", "code": " ".join(text.split())}
