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

import torch
from torch.fx import _symbolic_trace

from ._mode_stack import TorchFunctionOff, dispatch_len, dispatch_modes_off
from ._patching import Patch, PatchSet, acquire, release

INERT_EVENT = "traindoctor.inert-hook"


_is_compiling = torch.compiler.is_compiling
_jit_tracing = torch._C._is_tracing  # torch.jit.trace (also torch.onnx.export's trace)
_func_transforming = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
# fx symbolic tracing: a module global up to torch 2.13, a thread-local read by
# _get_is_fx_tracing() since (is_fx_tracing() itself logs a warning on its first call). The
# global is read through a partial of getattr: a C call, where a lambda was three calls (this
# runs in every hook call of every step).
_fx_tracing: Callable[[], bool] = getattr(
    _symbolic_trace, "_get_is_fx_tracing", None
) or functools.partial(getattr, _symbolic_trace, "_is_fx_tracing_flag", False)


def _compiling() -> bool:
    # torch.compile first: dynamo folds it to True and traces none of the others. The hooks
    # below write the same test out (one frame less per hook call).
    return _is_compiling() or _jit_tracing() or _func_transforming() or _fx_tracing()


# Every function traindoctor puts in torch's place (losses, clip_grad_norm_, Tensor.data), every
# module hook and every global hook asks this first. While torch traces the user's code into a
# graph, it is the original alone: torch.compile (a graph break or a guard on our state
# otherwise), torch.jit.trace (our ops recorded into the user's graph, and the trace's check
# failing because our hooks do different things on different calls: "Graphs differed across
# invocations"), torch.fx.symbolic_trace (our ops on Proxy objects), and the torch.func
# transforms (vmap/grad: our hooks would see batched tensors and raise inside them, e.g. a
# random op under vmap). What runs there is not observed.
compiling = _compiling
# The same four tests, for a hook that writes them out inline (probes/base.py's GuardedHook).
COMPILE_TESTS = (_is_compiling, _jit_tracing, _func_transforming, _fx_tracing)


# Calls of plain CopySafeHooks since import (a GuardedHook times itself and is not counted):
# the governor charges each what a hook call costs outside any timer. Process-wide; a list, so
# that the hot path needs no `global`.
UNTIMED_HOOK_CALLS = [0]


class CopySafeHook:
    """Calls `fn`; pickled or copied, it becomes an inert hook."""

    __slots__ = ("fn", "__weakref__")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _is_compiling() or _jit_tracing() or _func_transforming() or _fx_tracing():
            # Traced by torch.compile (dynamo inlines module hooks): a hook that returns at
            # once traces to nothing, so it causes no graph break and no guard on our state;
            # the compiled graph runs without it (see compiled.py).
            return None
        UNTIMED_HOOK_CALLS[0] += 1
        # Unseen by the user's tensor subclasses and modes (_mode_stack.UsersOff, inline).
        with TorchFunctionOff():
            if dispatch_len():
                with dispatch_modes_off():
                    return self.fn(*args, **kwargs)
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


def _getstate_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def __getstate__(self: Any) -> Any:  # noqa: N807
        return _without_our_hooks(original(self))

    __getstate__.__wrapped__ = original  # type: ignore[attr-defined]
    return __getstate__


# -- scripting a module leaves traindoctor's hooks out ----------------------------------------
# `torch.jit.script(model)` compiles the module's forward hooks into the ScriptModule (each must
# be a scriptable function): with our CopySafeHooks there it raised "AttributeError:
# 'CopySafeHook' object has no attribute '__name__'". Every module that torch.jit scripts, or
# traces (torch.jit.trace scripts an empty copy of each module), goes through
# `torch.jit._recursive.create_script_module`; while a doctor is attached it runs with our hooks
# out of the hook dicts of the module and its submodules (the dict objects themselves swapped
# for copies without them, the originals put back after: their order, and the handles that
# point at them, are untouched). The ScriptModule then is what it is without traindoctor: the
# user's own hooks, in their order, and none of ours.


def _our_keys(module: Any) -> set[int]:
    ours: set[int] = set()
    for attr in HOOK_DICTS:
        hooks = module.__dict__.get(attr)
        if hooks:
            ours.update(k for k, h in hooks.items() if isinstance(h, CopySafeHook))
    return ours


def _hide_our_hooks(root: Any) -> list[tuple[Any, str, Any]]:
    hidden: list[tuple[Any, str, Any]] = []
    modules = root.modules() if callable(getattr(root, "modules", None)) else ()
    for module in modules:
        ours = _our_keys(module)
        if not ours:
            continue
        for attr in HOOK_DICTS + _KEYED_BY_HOOK:
            hooks = module.__dict__.get(attr)
            if hooks is None or not ours & set(hooks):
                continue
            hidden.append((module, attr, hooks))
            module.__dict__[attr] = type(hooks)((k, v) for k, v in hooks.items() if k not in ours)
    return hidden


def _show_our_hooks(hidden: list[tuple[Any, str, Any]]) -> None:
    for module, attr, hooks in reversed(hidden):
        module.__dict__[attr] = hooks


# Functions a forward may call that traindoctor wraps while attached (F.dropout): TorchScript
# compiles whatever it finds there into the user's scripted module, so while it compiles one
# the originals are put back. A wrapper names its original in this attribute.
SCRIPT_ORIGINAL = "_traindoctor_original"
_script_lifts: list[tuple[Any, str]] = []


def lift_while_scripting(owner: Any, attribute: str) -> None:
    """`owner.attribute`, when one of our wrappers, is the original while a module scripts."""
    if (owner, attribute) not in _script_lifts:
        _script_lifts.append((owner, attribute))


def _lift_wrappers() -> list[Patch]:
    lifted = []
    for owner, attribute in _script_lifts:
        if getattr(getattr(owner, attribute, None), SCRIPT_ORIGINAL, None) is None:
            continue
        patch = Patch(owner, attribute, lambda wrapper: getattr(wrapper, SCRIPT_ORIGINAL, None))
        acquire(patch)
        lifted.append(patch)
    return lifted


def _create_script_module(nn_module: Any, *args: Any, **kwargs: Any) -> Any:
    # Through __wrapped__: a wrapper someone put around ours after attach may outlive it.
    original = _create_script_module.__wrapped__  # type: ignore[attr-defined]
    hidden: list[tuple[Any, str, Any]] = []
    lifted: list[Patch] = []
    try:
        hidden = _hide_our_hooks(nn_module)
        lifted = _lift_wrappers()
    except Exception:  # noqa: BLE001  (never into the user's torch.jit call)
        pass
    try:
        return original(nn_module, *args, **kwargs)
    finally:
        _show_our_hooks(hidden)
        for patch in lifted:
            release(patch)


def _script_of(original: Any) -> Any:
    if original is _create_script_module:
        return None  # ours already (left under someone else's wrapper): nothing to do
    _create_script_module.__wrapped__ = original  # type: ignore[attr-defined]
    _create_script_module.__doc__ = original.__doc__
    return _create_script_module


def _pickle_patches() -> list[Patch]:
    from torch.jit import _recursive

    patches = [Patch(_recursive, "create_script_module", _script_of, optional=True)]
    stack: list[type] = [torch.nn.Module]
    seen: set[type] = set()
    while stack:  # every Module class that defines its own __getstate__ (those existing now)
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if "__getstate__" in cls.__dict__:
            patches.append(Patch(cls, "__getstate__", _getstate_of))
        stack.extend(cls.__subclasses__())
    return patches


PICKLES = PatchSet("Module.__getstate__ and jit's create_script_module", _pickle_patches)


def strip_hooks_from_pickles() -> None:
    """Start (reference-counted, one per attached doctor): pickles, copies and torch.jit see the
    user's modules without our hooks."""
    acquire(PICKLES)


def keep_hooks_in_pickles() -> None:
    """Stop (the last attached doctor detached): the original __getstate__ methods return."""
    release(PICKLES)


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


# Every hook dict of an nn.Module: a copy for a replay or an experiment leaves them all out.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def copy_without_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` without any hook (theirs and ours): the memo maps every hook
    dict to an empty one, so a hook's owner (possibly not copyable) is never copied. Raises
    what `copy.deepcopy` raises (a lock or a generator as an attribute)."""
    import copy

    memo: dict[int, Any] = {}
    for m in model.modules():
        for attr in HOOK_DICTS:
            hooks = m.__dict__.get(attr)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)()
        # Tensors of the graph kept as plain attributes (an RNN's `self.hidden`, a policy's
        # `saved_log_probs` list) cannot be deep-copied (only graph leaves can): their values,
        # detached, are.
        for key, value in m.__dict__.items():
            if key not in _MODULE_STORES and key not in HOOK_DICTS:
                _detach_graph_tensors(value, memo, [_GRAPH_TENSORS_SEEN])
    return copy.deepcopy(model, memo)


_MODULE_STORES = ("_parameters", "_buffers", "_modules")
_GRAPH_TENSORS_SEEN = 10_000  # values looked at per attribute (a long list of them)


def _detach_graph_tensors(value: Any, memo: dict[int, Any], budget: list[int], depth: int = 0):
    budget[0] -= 1
    if budget[0] < 0 or depth > 3:
        return
    if isinstance(value, torch.Tensor):
        if value.grad_fn is not None and id(value) not in memo:
            memo[id(value)] = value.detach().clone()
    elif isinstance(value, list | tuple | set):
        for item in value:
            _detach_graph_tensors(item, memo, budget, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _detach_graph_tensors(item, memo, budget, depth + 1)
