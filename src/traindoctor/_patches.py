"""Process-wide patches of `Tensor.backward` and `torch.autograd.backward`, shared by all doctors.

Installed when the first listener registers and removed with the last, restoring the original
functions exactly. A listener sees the root tensor before the original backward runs, so the
graph is still intact (and a loss without grad_fn is recorded before torch raises on it).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

Listener = Callable[[torch.Tensor, torch.Tensor], None]  # (root, unscaled loss)

_listeners: list[Listener] = []
_originals: dict[str, Any] = {}
_local = threading.local()
# GradScaler.scale(loss) outputs, mapped back to the loss they scale (weak on both sides).
_scaled: weakref.WeakKeyDictionary[torch.Tensor, weakref.ref] = weakref.WeakKeyDictionary()


def note_scaled(output: Any, loss: Any) -> None:
    if isinstance(output, torch.Tensor) and isinstance(loss, torch.Tensor):
        try:
            _scaled[output] = weakref.ref(loss)
        except TypeError:
            pass


def _dispatch(tensors: Any) -> None:
    if getattr(_local, "active", False) or not _listeners:
        return
    roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors or ())
    for root in roots:
        if not isinstance(root, torch.Tensor):
            continue
        ref = _scaled.get(root)
        loss = ref() if ref is not None else None
        for listener in list(_listeners):
            listener(root, loss if loss is not None else root)


def _tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    _dispatch(self)
    prev = getattr(_local, "active", False)
    _local.active = True
    try:
        return _originals["Tensor.backward"](self, *args, **kwargs)
    finally:
        _local.active = prev


def _autograd_backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
    _dispatch(tensors)
    prev = getattr(_local, "active", False)
    _local.active = True
    try:
        return _originals["autograd.backward"](tensors, *args, **kwargs)
    finally:
        _local.active = prev


def add_backward_listener(listener: Listener) -> None:
    if not _listeners:
        _originals["Tensor.backward"] = torch.Tensor.backward
        _originals["autograd.backward"] = torch.autograd.backward
        torch.Tensor.backward = _tensor_backward  # type: ignore[method-assign]
        torch.autograd.backward = _autograd_backward  # type: ignore[assignment]
    _listeners.append(listener)


def remove_backward_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
    if not _listeners and _originals:
        torch.Tensor.backward = _originals.pop("Tensor.backward")  # type: ignore[method-assign]
        torch.autograd.backward = _originals.pop("autograd.backward")  # type: ignore[assignment]


def is_patched() -> bool:
    return bool(_listeners)
