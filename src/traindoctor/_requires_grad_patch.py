"""Process-wide interception of `requires_grad` changes on `nn.Parameter`, shared by all doctors.

Asking a non-float tensor (a 4-bit `Params4bit` stored as uint8, int8 weights) to require
gradients raises `RuntimeError: only Tensors of floating point ... can require gradients`
inside torch's C setter. To say which parameter of which component that was, and from which
line, the two ways a parameter's flag is set are wrapped on `torch.nn.Parameter`:

- `param.requires_grad = ...` through a property whose getter IS the C getter of
  `TensorBase.requires_grad` (`fget` is the descriptor's own `__get__`) and whose setter calls
  the C setter, notifies on RuntimeError and re-raises the same exception object;
- `param.requires_grad_(...)` (also what `module.requires_grad_()` calls per parameter).

Why on `Parameter` and not `Tensor`: `optimizer.zero_grad(set_to_none=False)` calls
`p.grad.requires_grad_(False)` on every gradient every step, and gradients are plain tensors.
Why a property and not `Parameter.__setattr__`: `zero_grad()` assigns `p.grad = None` on every
parameter every step, which a `__setattr__` would slow by ~100 ns each; reads of
`p.requires_grad` (which torch's optimizers do not do per step) cost ~25 ns more through the
property (measured: 51 -> 78 ns per read; 49 ns per `p.grad = None` either way).

Installed when the first listener registers and removed with the last (through _patching.py); a
class attribute that someone else replaced in between is left as it is. Listeners are called behind a last-resort
`try`: the user's program sees exactly the exception torch raised, or nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._patching import Patch, PatchSet, acquire, release

# (param, requested flag, the error torch raised, how it was asked: "requires_grad =" or
# "requires_grad_()")
Listener = Callable[[torch.Tensor, bool, BaseException, str], None]

_DESCRIPTOR = torch._C.TensorBase.__dict__["requires_grad"]  # the C getset descriptor
_C_SET = _DESCRIPTOR.__set__
_C_REQUIRES_GRAD_ = torch._C.TensorBase.requires_grad_

_listeners: list[Listener] = []
# Bumped on every successful flag change of a Parameter while installed: probes compare it to
# know that the trainable set may have changed, without walking the model every step.
generation = 0


def _notify(param: torch.Tensor, requested: Any, err: BaseException, via: str) -> None:
    for listener in list(_listeners):
        try:
            listener(param, bool(requested), err, via)
        except Exception:  # noqa: BLE001  (listeners guard themselves; last line of defence)
            pass


def _set_requires_grad(self: torch.Tensor, value: Any) -> None:
    __tracebackhide__ = True  # noqa: F841  (pytest: the user's line is the one that matters)
    global generation
    try:
        _C_SET(self, value)
    except RuntimeError as err:
        _notify(self, value, err, "requires_grad =")
        raise
    generation += 1


def _requires_grad_(self: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
    __tracebackhide__ = True  # noqa: F841
    global generation
    try:
        out = _C_REQUIRES_GRAD_(self, requires_grad)
    except RuntimeError as err:
        _notify(self, requires_grad, err, "requires_grad_()")
        raise
    generation += 1
    return out


_requires_grad_.__doc__ = _C_REQUIRES_GRAD_.__doc__


PATCHES = PatchSet(
    "Parameter.requires_grad",
    lambda: (
        Patch(
            torch.nn.Parameter,
            "requires_grad",
            lambda _: property(_DESCRIPTOR.__get__, _set_requires_grad, doc=_DESCRIPTOR.__doc__),
        ),
        Patch(torch.nn.Parameter, "requires_grad_", lambda _: _requires_grad_),
    ),
)


def add_listener(listener: Listener) -> None:
    acquire(PATCHES)  # one hold per listener
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
        release(PATCHES)


def is_patched() -> bool:
    return bool(_listeners)
