"""Putting a traindoctor TorchFunctionMode on the torch-function mode stack, and taking it off,
without disturbing the user's modes.

A mode of ours goes to the *bottom* of the stack: a mode the user enters before it and leaves
while ours is on (a `with torch.device(...)` around the forward, whose exit pops the top of
the stack) then sits above it and pops its own entry. Only the default-device context of
`torch.set_default_device` stays below ours: its `__exit__` insists on the bottom.
"""

from __future__ import annotations

from typing import Any

import torch

# Our modes pushed with push_bottom and not yet removed, by id (held: an id is not reused
# while its mode is registered), and the modes each open `OursPaused` took off, bottom first.
_ours: dict[int, Any] = {}
_paused: list[list[Any]] = []
_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at


def push_bottom(mode: Any) -> None:
    _ours[id(mode)] = mode
    taken = [
        torch._C._pop_torch_function_stack() for _ in range(torch._C._len_torch_function_stack())
    ]
    taken.reverse()  # bottom first
    default = getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None)
    base = 1 if taken and default is not None and taken[0] is default else 0
    for m in [*taken[:base], mode, *taken[base:]]:
        torch._C._push_on_torch_function_stack(m)


def remove(mode: Any) -> None:
    """Take `mode` off the stack wherever it is; the modes above it stay, in order. If it is
    not there (someone popped it), the stack is left as it was."""
    _ours.pop(id(mode), None)
    for taken in _paused:  # off for a pause: it stays off when the pause ends
        taken[:] = [m for m in taken if m is not mode]
    _take_off(mode)


def _take_off(mode: Any) -> None:
    above = []
    while torch._C._len_torch_function_stack() > 0:
        m = torch._C._pop_torch_function_stack()
        if m is mode:
            break
        above.append(m)
    for m in reversed(above):
        torch._C._push_on_torch_function_stack(m)


class OursPaused:
    """`with OursPaused():` our own modes off the stack while our own code runs, then back at
    the bottom in their order; the user's modes stay where they are. A bus handler that reads
    10,000 `.grad`s would otherwise route each read through them (a Python call each), and
    they would see our calls as the user's. Re-entrant: a nested pause finds none of ours on
    the stack and does nothing; a mode removed during the pause stays off."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken: list[Any] | None = None

    def __enter__(self) -> OursPaused:
        n = _stack_len()
        if n == 0 or not _ours:
            return self
        taken = [m for m in map(_stack_at, range(n)) if id(m) in _ours]
        if taken:
            for m in taken:
                _take_off(m)
            _paused.append(taken)
            self.taken = taken
        return self

    def __exit__(self, *exc: object) -> None:
        taken, self.taken = self.taken, None
        if taken is None:
            return
        for i in range(len(_paused) - 1, -1, -1):
            if _paused[i] is taken:
                del _paused[i]
                break
        for m in reversed(taken):
            push_bottom(m)


# -- the user's modes and tensor subclasses do not see our own code ---------------------------
# Our code reads the user's tensors (norms, fingerprints, finite checks). Left as they were, each
# of those calls went through the user's `__torch_function__` subclass (a tensor class counting
# or logging its calls saw 1,419 calls where the program made 48), the user's TorchFunctionModes
# and TorchDispatchModes (a mode logging the aten ops of one step logged 88 for the user's 59).
# `with UsersOff():` around our code (probe hooks, bus handlers, guarded calls, loss and backward
# listeners): torch-function handling off (C: no Python call), and the user's dispatch modes
# off when there are any. The user's own code that we call again (replays)
# runs with torch function back on (TorchFunctionOn below); experiments/runner.clone_tree
# copies a batch with it on, so a copied subclass tensor keeps its class.
dispatch_len = torch._C._len_torch_dispatch_stack
TorchFunctionOff = torch._C.DisableTorchFunction
# Where our code runs the user's code again (the NaN autopsy's replayed forward, the
# experiments' replays, the loss code's replay): torch-function handling back on, so that the
# user's tensor subclasses behave as in their run and our tracing modes see the ops; the
# user's dispatch modes stay off (a replay is not the user's work: a caching or counting mode
# must not record it).
TorchFunctionOn = torch._C._EnableTorchFunction


def dispatch_modes_off() -> Any:
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def UsersOff() -> Any:  # noqa: N802  (used as a context manager class is)
    """`with UsersOff():` the user's torch-function subclasses and modes, and their dispatch
    modes, off while our own code runs; put back as they were after it (exceptions included).
    Without dispatch modes (nearly always) it is torch's own C context: no Python call to enter
    or leave it, on paths that run every step."""
    if dispatch_len():
        return _AllOff()
    return TorchFunctionOff()


class _AllOff:
    __slots__ = ("fn_off", "dispatch_off")

    def __enter__(self) -> _AllOff:
        fn_off = self.fn_off = TorchFunctionOff()
        fn_off.__enter__()
        try:
            off = dispatch_modes_off()
            off.__enter__()
        except BaseException:
            fn_off.__exit__(None, None, None)
            raise
        self.dispatch_off = off
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.dispatch_off.__exit__(*exc)
        finally:
            self.fn_off.__exit__(*exc)


def call_unseen(fn: Any, *args: Any) -> Any:
    """fn(*args) inside UsersOff."""
    with UsersOff():
        return fn(*args)
