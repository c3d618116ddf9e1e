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


def push_bottom(mode: Any) -> None:
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
    above = []
    while torch._C._len_torch_function_stack() > 0:
        m = torch._C._pop_torch_function_stack()
        if m is mode:
            break
        above.append(m)
    for m in reversed(above):
        torch._C._push_on_torch_function_stack(m)
