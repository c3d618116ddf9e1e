"""Forward hooks on many modules, taken off together, with no handle kept per module.

torch's RemovableHandle is ~5 objects the cyclic collector tracks (the handle, its __dict__,
weak references to the hook dicts, a tuple): the forward, init and work probes hook every
module for the structural steps, 15,000 registrations on a model of 5,000 modules, ~75,000
objects that every full collection walked until the hooks went. Here a probe keeps the
modules and the hooks' keys in two lists; `remove()` deletes each key from the dicts torch
put it in (what RemovableHandle.remove does). A copy of the model made meanwhile keeps its
own copies of the hooks, as it does with handles (CopySafeHook makes them inert there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# The dicts a forward hook's key goes in (the hook; the with_kwargs / always_call flags).
_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


class ForwardHooks:
    """One probe's forward hooks; in `Probe.handles` it is removed with the others."""

    __slots__ = ("_modules", "_keys")

    def __init__(self) -> None:
        self._modules: list[torch.nn.Module] = []
        self._keys: list[int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, module: torch.nn.Module, hook: Callable[..., Any]) -> None:
        handle = module.register_forward_hook(hook)
        self._modules.append(module)
        self._keys.append(handle.id)

    def remove(self) -> None:
        modules, keys = self._modules, self._keys
        self._modules, self._keys = [], []
        for module, key in zip(modules, keys):
            for attr in _DICTS:
                d = module.__dict__.get(attr)
                if d is not None:
                    d.pop(key, None)
