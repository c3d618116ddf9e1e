"""Hooks traindoctor puts on the user's modules, left out when the module is pickled or copied.

`torch.save(model)`, `pickle.dumps(model)` and `copy.deepcopy(model)` serialize a module's hook
dicts with it. A closure there made `torch.save(model)` raise ("Can't pickle local object"),
and a deep copy (an EMA, the autopsy's replay copy) kept calling the live run's probes. While a
doctor is attached, modules' `__getstate__` leaves every `CopySafeHook` out (below), so a saved
model holds no trace of traindoctor and loads under `torch.serialization.safe_globals` with the
user's own classes only. A `CopySafeHook` that still reaches a pickle (a class defined after
attach with its own `__getstate__`) reduces to an inert hook from the standard library
(`functools.partial(sys.audit, ...)`, which accepts any arguments and returns None).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

INERT_EVENT = "traindoctor.inert-hook"


def _compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


# Every function traindoctor puts in torch's place (losses, clip_grad_norm_, Tensor.data) and
# every global hook asks this first: traced by torch.compile, it is the original alone (a
# graph break or a guard on our state otherwise).
compiling = _compiling


class CopySafeHook:
    """Calls `fn`; pickled or copied, it becomes an inert hook."""

    __slots__ = ("fn", "__weakref__")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _compiling():
            # Traced by torch.compile (dynamo inlines module hooks): a hook that returns at
            # once traces to nothing, so it causes no graph break and no guard on our state;
            # the compiled graph runs without it (see compiled.py).
            return None
        return self.fn(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        return functools.partial, (sys.audit, INERT_EVENT)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.__reduce_ex__(None)


# -- pickling a module leaves traindoctor's hooks out -----------------------------------------
# A CopySafeHook that reaches a pickle becomes an inert stdlib hook, but any global in a saved
# model breaks `torch.load(f)` under `torch.serialization.safe_globals([...the user's classes])`
# (pytorch/examples word_language_model), and the inert hook stays on the loaded model. While a
# doctor is attached, `__getstate__` of nn.Module, and of every subclass that defines its own
# (RNNBase copies its __dict__ without calling super), drops our hooks from the state it
# returns: torch.save, pickle and copy.deepcopy then see the module as it was before attach.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_KEYED_BY_HOOK = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)
_getstate_originals: dict[type, Any] = {}
_users = [0]


def _without_our_hooks(state: Any) -> Any:
    if not isinstance(state, dict):
        return state
    ours: set[int] = set()
    copied = None
    for attr in HOOK_DICTS:
        hooks = state.get(attr)
        if not hooks or not any(isinstance(h, CopySafeHook) for h in hooks.values()):
            continue
        if copied is None:
            copied = dict(state)
        kept = type(hooks)()
        for key, h in hooks.items():
            if isinstance(h, CopySafeHook):
                ours.add(key)
            else:
                kept[key] = h
        copied[attr] = kept
    if copied is None:
        return state
    for attr in _KEYED_BY_HOOK:
        flags = copied.get(attr)
        if flags and ours & set(flags):
            copied[attr] = type(flags)((k, v) for k, v in flags.items() if k not in ours)
    return copied


def _wrap_getstate(cls: type) -> None:
    original = cls.__dict__["__getstate__"]

    def __getstate__(self: Any) -> Any:  # noqa: N807
        return _without_our_hooks(original(self))

    __getstate__.__wrapped__ = original  # type: ignore[attr-defined]
    _getstate_originals[cls] = original
    cls.__getstate__ = __getstate__  # type: ignore[attr-defined]


def strip_hooks_from_pickles() -> None:
    """Start (reference-counted, one per attached doctor)."""
    import torch

    _users[0] += 1
    if _users[0] > 1:
        return
    stack: list[type] = [torch.nn.Module]
    seen: set[type] = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if "__getstate__" in cls.__dict__:
            _wrap_getstate(cls)
        stack.extend(cls.__subclasses__())


def keep_hooks_in_pickles() -> None:
    """Stop (the last attached doctor detached): the original __getstate__ methods return."""
    _users[0] = max(0, _users[0] - 1)
    if _users[0]:
        return
    for cls, original in _getstate_originals.items():
        current = cls.__dict__.get("__getstate__")
        if getattr(current, "__wrapped__", None) is original:
            cls.__getstate__ = original  # type: ignore[attr-defined]
    _getstate_originals.clear()


def remove_our_hooks(model: Any) -> int:
    """Take every CopySafeHook off the model's modules at once; returns how many went.

    For a model found running compiled (compiled.py): our hooks never run inside its graph,
    and each later removal would fail one of dynamo's guards, recompiling it once more.
    """
    removed = 0
    for module in model.modules():
        ours: set[int] = set()
        for attr in HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if not hooks:
                continue
            for key in [k for k, h in hooks.items() if isinstance(h, CopySafeHook)]:
                del hooks[key]
                ours.add(key)
        if not ours:
            continue
        removed += len(ours)
        for attr in _KEYED_BY_HOOK:
            flags = getattr(module, attr, None)
            for key in ours & set(flags or ()):
                del flags[key]
    return removed
