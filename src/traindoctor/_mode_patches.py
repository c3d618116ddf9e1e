"""Shared patches that tell who changed a model's mode and where inference tensors come from.

- `nn.Module.train` (and so `.eval()`): listeners hear the outermost call only (a model's
  `.train()` recurses into every submodule), with the module and the mode.
- `torch.inference_mode` regions (context manager and decorator both enter through
  `__enter__`): listeners hear each region's entry and exit, outermost only.

Installed while at least one listener is registered; the originals come back when the last one
leaves. A listener that raises is ignored: the user's call always runs and returns as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

TrainListener = Callable[[torch.nn.Module, bool], None]

_local = threading.local()
_train_listeners: list[TrainListener] = []
_region_listeners: list[Any] = []  # objects with region_enter() and region_exit()
_original_train: Any = None
_original_enter: Any = None
_original_exit: Any = None


def _notify(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a listener never breaks the user's call
        pass


def _train(self: torch.nn.Module, mode: bool = True) -> Any:
    depth = getattr(_local, "train_depth", 0)
    _local.train_depth = depth + 1
    try:
        out = _original_train(self, mode)
    finally:
        _local.train_depth = depth
    if depth == 0:
        for fn in list(_train_listeners):
            _notify(fn, self, bool(mode))
    return out


def _enter(self: Any) -> Any:
    depth = getattr(_local, "region_depth", 0)
    _local.region_depth = depth + 1
    if depth == 0:
        for listener in list(_region_listeners):
            _notify(listener.region_enter)
    return _original_enter(self)


def _exit(self: Any, *exc: Any) -> Any:
    out = _original_exit(self, *exc)
    depth = getattr(_local, "region_depth", 1) - 1
    _local.region_depth = max(depth, 0)
    if depth <= 0:
        for listener in list(_region_listeners):
            _notify(listener.region_exit)
    return out


def add_train_listener(fn: TrainListener) -> None:
    global _original_train
    if _original_train is None:
        _original_train = torch.nn.Module.train
        torch.nn.Module.train = _train  # type: ignore[method-assign]
    _train_listeners.append(fn)


def remove_train_listener(fn: TrainListener) -> None:
    global _original_train
    if fn in _train_listeners:
        _train_listeners.remove(fn)
    if not _train_listeners and _original_train is not None:
        torch.nn.Module.train = _original_train  # type: ignore[method-assign]
        _original_train = None


def add_region_listener(listener: Any) -> None:
    global _original_enter, _original_exit
    if _original_enter is None:
        cls = torch.inference_mode
        _original_enter, _original_exit = cls.__enter__, cls.__exit__
        cls.__enter__ = _enter  # type: ignore[method-assign]
        cls.__exit__ = _exit  # type: ignore[method-assign]
    _region_listeners.append(listener)


def remove_region_listener(listener: Any) -> None:
    global _original_enter, _original_exit
    if listener in _region_listeners:
        _region_listeners.remove(listener)
    if not _region_listeners and _original_enter is not None:
        cls = torch.inference_mode
        cls.__enter__, cls.__exit__ = _original_enter, _original_exit  # type: ignore[method-assign]
        _original_enter = _original_exit = None
