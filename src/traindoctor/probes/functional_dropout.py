"""Functional dropout calls: `F.dropout(x, p, training=self.training)` in a module's forward.

A model that drops out through the functional call (pytorch/examples' GAT) holds no Dropout
module, yet its forward depends on its mode. `torch.nn.functional.dropout` is wrapped while a
listener is attached (through _patching.py, restored exactly); each call made outside an
`nn.Dropout` module passes its `p` and `training` arguments to the listeners, then runs
unchanged (same arguments, same random numbers). Calls under torch.compile's tracing go
straight to the original.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from .._hooks import compiling
from .._patching import Patch, PatchSet, acquire, release

_listeners: list[Any] = []  # objects with functional_dropout(p, training)
# nn.Dropout's forward calls F.dropout too: those calls are the module's (modes.py reads it).
_MODULE_CODE = torch.nn.Dropout.forward.__code__


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    def dropout(*args: Any, **kwargs: Any) -> Any:
        if _listeners and not compiling():
            try:
                if sys._getframe(1).f_code is not _MODULE_CODE:
                    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                    training = kwargs.get("training", args[2] if len(args) > 2 else True)
                    for listener in list(_listeners):
                        listener.functional_dropout(p, training)
            except Exception:  # noqa: BLE001 - never reaches the user's call
                pass
        return original(*args, **kwargs)

    dropout.__wrapped__ = original  # type: ignore[attr-defined]
    dropout.__name__ = getattr(original, "__name__", "dropout")
    dropout.__doc__ = getattr(original, "__doc__", None)
    return dropout


def _patches() -> list[Patch]:
    return [Patch(torch.nn.functional, "dropout", _wrap)]


DROPOUT_PATCH = PatchSet("torch.nn.functional.dropout", _patches)


def add_dropout_listener(listener: Any) -> None:
    acquire(DROPOUT_PATCH)  # one hold per listener
    _listeners.append(listener)


def remove_dropout_listener(listener: Any) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
        release(DROPOUT_PATCH)
