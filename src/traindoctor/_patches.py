"""Process-wide patches of `Tensor.backward` and `torch.autograd.backward`, shared by all doctors.

Installed when the first listener registers and removed with the last, restoring the original
functions exactly. A listener sees the root tensor before the original backward runs, so the
graph is still intact (and a loss without grad_fn is recorded before torch raises on it); an
optional `after` listener runs once the gradients are accumulated.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .errors import StopTraining

Listener = Callable[[torch.Tensor, torch.Tensor], None]  # (root, unscaled loss)
AfterListener = Callable[[], None]

_listeners: list[Listener] = []
_after: list[AfterListener] = []
_originals: dict[str, Any] = {}
_local = threading.local()
# GradScaler.scale(loss) outputs, mapped back to the loss they scale: id(output) -> (weak
# output, weak loss). Keyed by id and checked with `is`: a dict keyed by tensors would compare
# them with `==` (an elementwise op, and a host sync on a GPU).
_scaled: dict[int, tuple[weakref.ref, weakref.ref]] = {}
_SCALED_KEEP = 16


def note_scaled(output: Any, loss: Any) -> None:
    if not (isinstance(output, torch.Tensor) and isinstance(loss, torch.Tensor)):
        return
    try:
        _scaled[id(output)] = (weakref.ref(output), weakref.ref(loss))
    except TypeError:
        return
    if len(_scaled) > _SCALED_KEEP:
        for key in [k for k, (out, _) in _scaled.items() if out() is None]:
            del _scaled[key]
        while len(_scaled) > _SCALED_KEEP:
            del _scaled[next(iter(_scaled))]


def unscaled(root: torch.Tensor) -> torch.Tensor:
    entry = _scaled.get(id(root))
    if entry is not None and entry[0]() is root:
        loss = entry[1]()
        if loss is not None:
            return loss
    return root


def _call(fn: Callable[..., None], *args: Any) -> None:
    # Listeners guard themselves; this is the last line of defence for the user's backward().
    try:
        fn(*args)
    except StopTraining:
        raise
    except Exception:  # noqa: BLE001
        pass


def _roots(tensors: Any) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    try:
        return [t for t in tensors or () if isinstance(t, torch.Tensor)]
    except TypeError:
        return []


def _run(original: Callable[..., Any], tensors: Any, args: Any, kwargs: Any) -> Any:
    if getattr(_local, "active", False) or not _listeners:
        return original(tensors, *args, **kwargs)
    for root in _roots(tensors):
        loss = unscaled(root)
        for listener in list(_listeners):
            _call(listener, root, loss)
    _local.active = True
    try:
        result = original(tensors, *args, **kwargs)
    finally:
        _local.active = False
    for after in list(_after):
        _call(after)
    return result


def _tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    return _run(_originals["Tensor.backward"], self, args, kwargs)


def _autograd_backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
    return _run(_originals["autograd.backward"], tensors, args, kwargs)


def add_backward_listener(listener: Listener, after: AfterListener | None = None) -> None:
    if not _listeners:
        _originals["Tensor.backward"] = torch.Tensor.backward
        _originals["autograd.backward"] = torch.autograd.backward
        torch.Tensor.backward = _tensor_backward  # type: ignore[method-assign]
        torch.autograd.backward = _autograd_backward  # type: ignore[assignment]
    _listeners.append(listener)
    if after is not None:
        _after.append(after)


def remove_backward_listener(listener: Listener, after: AfterListener | None = None) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
    if after is not None and after in _after:
        _after.remove(after)
    if not _listeners and _originals:
        torch.Tensor.backward = _originals.pop("Tensor.backward")  # type: ignore[method-assign]
        torch.autograd.backward = _originals.pop("autograd.backward")  # type: ignore[assignment]
        _after.clear()


def is_patched() -> bool:
    return bool(_listeners)


# -- GradScaler instances (watch mode) ------------------------------------------------------
# One wrapper per scaler instance, shared by every doctor watching it, removed with the last:
# the instance's attributes are then exactly what they were (usually: none, the class methods).
_MISSING = object()
_scalers: dict[int, dict[str, Any]] = {}


def watch_scaler(scaler: Any, on_update: AfterListener) -> None:
    entry = _scalers.get(id(scaler))
    if entry is None:
        before = {n: scaler.__dict__.get(n, _MISSING) for n in ("scale", "update")}
        scale_fn, update_fn = scaler.scale, scaler.update
        listeners: list[AfterListener] = []

        def scale(outputs: Any) -> Any:
            out = scale_fn(outputs)
            note_scaled(out, outputs)
            return out

        def update(*args: Any, **kwargs: Any) -> Any:
            result = update_fn(*args, **kwargs)
            for fn in list(listeners):
                _call(fn)
            return result

        entry = {
            "before": before,
            "listeners": listeners,
            "ours": {"scale": scale, "update": update},
        }
        _scalers[id(scaler)] = entry
        scaler.scale, scaler.update = scale, update
    entry["listeners"].append(on_update)


def unwatch_scaler(scaler: Any, on_update: AfterListener) -> None:
    entry = _scalers.get(id(scaler))
    if entry is None:
        return
    if on_update in entry["listeners"]:
        entry["listeners"].remove(on_update)
    if entry["listeners"]:
        return
    del _scalers[id(scaler)]
    for name, before in entry["before"].items():
        if scaler.__dict__.get(name) is not entry["ours"][name]:
            continue  # replaced by the user since: theirs stays
        if before is _MISSING:
            delattr(scaler, name)
        else:
            setattr(scaler, name, before)
