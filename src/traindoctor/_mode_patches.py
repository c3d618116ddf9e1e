"""Shared patches that tell who changed a model's mode and where inference tensors come from.

- `nn.Module.train` (and so `.eval()`): listeners hear the outermost call only (a model's
  `.train()` recurses into every submodule), with the module and the mode.
- `torch.inference_mode` regions (context manager and decorator both enter through
  `__enter__`): listeners hear each region's entry and exit, outermost only.

Installed while at least one listener is registered; the originals come back when the last one
leaves (through _patching.py). A listener that raises is ignored: the user's call always runs and returns as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from ._patching import Patch, PatchSet, acquire, release

TrainListener = Callable[[torch.nn.Module, bool], None]

_local = threading.local()
_train_listeners: list[TrainListener] = []
_region_listeners: list[Any] = []  # objects with region_enter() and region_exit()


def _notify(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a listener never breaks the user's call
        pass


def _train_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def _train(self: torch.nn.Module, mode: bool = True) -> Any:
        depth = getattr(_local, "train_depth", 0)
        _local.train_depth = depth + 1
        try:
            out = original(self, mode)
        finally:
            _local.train_depth = depth
        if depth == 0:
            for fn in list(_train_listeners):
                _notify(fn, self, bool(mode))
        return out

    return _train


def _enter_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def _enter(self: Any) -> Any:
        depth = getattr(_local, "region_depth", 0)
        _local.region_depth = depth + 1
        if depth == 0:
            for listener in list(_region_listeners):
                _notify(listener.region_enter)
        return original(self)

    return _enter


def _exit_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def _exit(self: Any, *exc: Any) -> Any:
        out = original(self, *exc)
        depth = getattr(_local, "region_depth", 1) - 1
        _local.region_depth = max(depth, 0)
        if depth <= 0:
            for listener in list(_region_listeners):
                _notify(listener.region_exit)
        return out

    return _exit


TRAIN = Patch(torch.nn.Module, "train", _train_of)
REGION = PatchSet(
    "inference_mode",
    lambda: (
        Patch(torch.inference_mode, "__enter__", _enter_of),
        Patch(torch.inference_mode, "__exit__", _exit_of),
    ),
)


def add_train_listener(fn: TrainListener) -> None:
    acquire(TRAIN)  # one hold per listener
    _train_listeners.append(fn)


def remove_train_listener(fn: TrainListener) -> None:
    if fn in _train_listeners:
        _train_listeners.remove(fn)
        release(TRAIN)


def add_region_listener(listener: Any) -> None:
    acquire(REGION)
    _region_listeners.append(listener)


def remove_region_listener(listener: Any) -> None:
    if listener in _region_listeners:
        _region_listeners.remove(listener)
        release(REGION)
