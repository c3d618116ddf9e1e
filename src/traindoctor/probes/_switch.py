"""Module hooks registered once at attach and switched on only for the steps that need them.

Registering a hook on every module at each sampled step cost a handle, a closure and a guard
wrapper per module per step (14,036 handles in steps 1-3 of a 2,000-tensor model), and that
garbage made Python's full collections run more often. A hook left registered instead costs
every module call ~3.5 µs even when it returns at once (torch leaves its fast path), more than
the budget on models of many small layers. So each hook is registered once, through torch's
API (a RemovableHandle, keyed as usual), then its entries are taken out of the module's hook
dicts and put back, unchanged, on the steps that need it: switching allocates nothing, and an
unsampled step runs every module on torch's fast path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

import torch

from .._hooks import HOOK_DICTS
from .base import AttachContext

# Every dict of a module that may hold a hook's key (the hook itself, or its flags).
_DICTS = (*HOOK_DICTS, "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_DICTS = (*_DICTS, "_forward_pre_hooks_with_kwargs")


class _Entry:
    # No RemovableHandle kept (~2 tracked objects each, 20,000 entries on a model of 5,000
    # modules): `slots` names every dict that holds the key, which is what remove() needs.
    __slots__ = ("prefix", "key", "slots")

    def __init__(self, prefix: str, handle: Any, module: torch.nn.Module) -> None:
        self.prefix = prefix
        self.key = handle.id
        # dict, value, dict, value, ... for each dict that holds the key: put back as
        # registered. One flat tuple (not a list of pairs): an entry per hook and module, tens
        # of thousands on large models, each object one more for the cyclic collector to walk.
        slots: list[Any] = []
        for d in (getattr(module, attr, None) for attr in _DICTS):
            if isinstance(d, dict) and handle.id in d:
                slots += (d, d[handle.id])
        self.slots = tuple(slots)


class HookSwitch:
    """Forward (pre-)hooks of one probe on the eager models, registered off; `on()` and
    `off()` switch them all. A model found compiled since attach is never switched on again
    (a hook added to a compiled model recompiles it)."""

    def __init__(self, ctx: AttachContext) -> None:
        self._ctx = ctx
        self._entries: list[_Entry] = []
        # Every (dict, key, value) of the entries, as three parallel lists per type of dict,
        # in the order registered: switched by a C-level map over that type's own __setitem__
        # / pop (an OrderedDict's: dict's would skip its order list), where a Python loop was
        # ~0.2 µs an entry, 10,000 entries twice a sampled step on a model of 5,000 modules.
        self._slots: dict[type, tuple[list[Any], list[Any], list[Any]]] = {}
        self.active = False

    def __len__(self) -> int:
        return len(self._entries)

    def forward_pre_hook(
        self, prefix: str, module: torch.nn.Module, hook: Callable[..., Any], **kw: Any
    ) -> None:
        self._add(prefix, module, module.register_forward_pre_hook(hook, **kw))

    def forward_hook(
        self, prefix: str, module: torch.nn.Module, hook: Callable[..., Any], **kw: Any
    ) -> None:
        self._add(prefix, module, module.register_forward_hook(hook, **kw))

    def _add(self, prefix: str, module: torch.nn.Module, handle: Any) -> None:
        entry = _Entry(prefix, handle, module)
        self._entries.append(entry)
        for i in range(0, len(entry.slots), 2):
            d, value = entry.slots[i], entry.slots[i + 1]
            dicts, keys, values = self._slots.setdefault(type(d), ([], [], []))
            dicts.append(d)
            keys.append(entry.key)
            values.append(value)
        if not self.active:
            self._take_out(entry)

    def on(self) -> None:
        if self.active:
            return
        self.active = True
        compiled = self._ctx.compiled
        if compiled:  # some models are never switched on again: entry by entry
            for e in self._entries:
                if e.prefix not in compiled:
                    self._put_back(e)
            return
        for kind, (dicts, keys, values) in self._slots.items():
            deque(map(kind.__setitem__, dicts, keys, values), maxlen=0)

    def off(self) -> None:
        if not self.active:
            return
        self.active = False
        self._take_all_out()

    def _take_all_out(self) -> None:
        for kind, (dicts, keys, _) in self._slots.items():
            deque(map(kind.pop, dicts, keys, repeat(None, len(keys))), maxlen=0)

    @staticmethod
    def _put_back(e: _Entry) -> None:
        key, slots = e.key, e.slots
        for i in range(0, len(slots), 2):
            slots[i][key] = slots[i + 1]

    @staticmethod
    def _take_out(e: _Entry) -> None:
        key, slots = e.key, e.slots
        for i in range(0, len(slots), 2):
            slots[i].pop(key, None)

    def remove(self) -> None:
        """Unregister every hook for good (detach, or the probe's work is over)."""
        self._take_all_out()  # what RemovableHandle.remove() does, whether on or off
        self._entries.clear()
        self._slots.clear()
        self.active = False
