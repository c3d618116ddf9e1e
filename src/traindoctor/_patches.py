"""Process-wide patches of `Tensor.backward` and `torch.autograd.backward`, shared by all doctors
(and, below, of the gradient-clipping functions and `GradScaler.unscale_`/`step`).

Installed when the first listener registers and removed with the last, restoring the original
functions exactly (through _patching.py, like every process-wide patch). A listener sees the root tensor before the original backward runs, so the
graph is still intact (and a loss without grad_fn is recorded before torch raises on it); an
optional `after` listener runs once the gradients are accumulated.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from types import GeneratorType
from typing import Any

import torch

from ._hooks import compiling
from ._mode_stack import UsersOff
from ._patching import Patch, PatchSet, acquire, release
from ._warnings import call_from
from .errors import StopTraining

Listener = Callable[[torch.Tensor, torch.Tensor], None]  # (root, unscaled loss)
AfterListener = Callable[[], None]

_listeners: list[Listener] = []
_after: list[AfterListener] = []
_local = threading.local()
# GradScaler.scale(loss) outputs, mapped back to the loss they scale: id(output) -> (weak
# output, loss). Keyed by id and checked with `is`: a dict keyed by tensors would compare
# them with `==` (an elementwise op, and a host sync on a GPU). The loss is held strongly while
# the output lives (the output's graph holds the loss's graph anyway): `scale(loss / accum)`
# scales a temporary that nothing else keeps. The entry goes when the output is freed.
_scaled: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
_SCALED_KEEP = 16


def note_scaled(output: Any, loss: Any) -> None:
    if not (isinstance(output, torch.Tensor) and isinstance(loss, torch.Tensor)):
        return
    if output is loss:
        return  # a disabled scaler returns its input
    key = id(output)

    def forget(ref: weakref.ref) -> None:
        entry = _scaled.get(key)
        if entry is not None and entry[0] is ref:
            del _scaled[key]

    try:
        _scaled[key] = (weakref.ref(output, forget), loss)
    except TypeError:
        return
    while len(_scaled) > _SCALED_KEEP:
        del _scaled[next(iter(_scaled))]


def unscaled(root: torch.Tensor) -> torch.Tensor:
    entry = _scaled.get(id(root))
    if entry is not None and entry[0]() is root:
        return entry[1]
    return root


def is_scaled(root: torch.Tensor) -> bool:
    """Whether `root` is the output of an (enabled) GradScaler.scale()."""
    entry = _scaled.get(id(root))
    return entry is not None and entry[0]() is root


def _call(fn: Callable[..., None], *args: Any) -> None:
    # Listeners guard themselves; this is the last line of defence for the user's backward().
    # The user's tensor subclasses and modes do not see them (_mode_stack.UsersOff).
    try:
        with UsersOff():
            fn(*args)
    except StopTraining:
        raise
    except Exception:  # noqa: BLE001
        pass


def _call_inside(fn: Callable[..., None], *args: Any) -> None:
    # _call, inside the one UsersOff its caller holds around a loop of listeners.
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
    if getattr(_local, "active", False) or not _listeners or compiling():
        return original(tensors, *args, **kwargs)
    with UsersOff():
        for root in _roots(tensors):
            loss = unscaled(root)
            for listener in list(_listeners):
                _call_inside(listener, root, loss)
    _local.active = True
    try:
        if threading.current_thread() is threading.main_thread():
            # A warning torch gives with a stacklevel that names the line calling backward()
            # (a full backward hook that fires without inputs needing grad) names it still,
            # not this file. sys._getframe(2): the caller of _tensor_backward/_autograd_backward.
            result = call_from(sys._getframe(2), (__file__,), original, tensors, *args, **kwargs)
        else:
            result = original(tensors, *args, **kwargs)
    finally:
        _local.active = False
    if _after:
        with UsersOff():
            for after in list(_after):
                _call_inside(after)
    return result


def _tensor_backward_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def _tensor_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return _run(original, self, args, kwargs)

    return _named_as(_tensor_backward, original)


def _autograd_backward_of(original: Callable[..., Any]) -> Callable[..., Any]:
    def _autograd_backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        return _run(original, tensors, args, kwargs)

    return _named_as(_autograd_backward, original)


def _named_as(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper under the original's names: a user's TorchFunctionMode that logs or matches
    `func.__name__` sees `backward` as it does without traindoctor (no `__wrapped__`: the
    wrapper is not to be unwrapped past)."""
    # Our own function's names (not a process-wide patch): assigned one by one, each may be
    # missing on a C builtin.
    try:
        wrapper.__module__ = original.__module__
        wrapper.__name__ = original.__name__
        wrapper.__qualname__ = original.__qualname__
        wrapper.__doc__ = original.__doc__
    except (AttributeError, TypeError):
        pass
    return wrapper


BACKWARD = PatchSet(
    "backward",
    lambda: (
        Patch(torch.Tensor, "backward", _tensor_backward_of),
        Patch(torch.autograd, "backward", _autograd_backward_of),
    ),
)


def add_backward_listener(listener: Listener, after: AfterListener | None = None) -> None:
    acquire(BACKWARD)  # one hold per listener
    _listeners.append(listener)
    if after is not None:
        _after.append(after)


def remove_backward_listener(listener: Listener, after: AfterListener | None = None) -> None:
    if after is not None and after in _after:
        _after.remove(after)
    if listener in _listeners:
        _listeners.remove(listener)
        release(BACKWARD)
    if not _listeners:
        _after.clear()


def is_patched() -> bool:
    return bool(_listeners)


# -- GradScaler instances (watch mode) ------------------------------------------------------
# One wrapper per scaler instance, shared by every doctor watching it, removed with the last:
# the instance's attributes are then exactly what they were (usually: none, the class methods).
# id(scaler) -> (its patches, the listeners of its update())
_scalers: dict[int, tuple[PatchSet, list[AfterListener]]] = {}


def _scaler_patches(scaler: Any, listeners: list[AfterListener]) -> PatchSet:
    def scale_of(scale_fn: Callable[..., Any]) -> Callable[..., Any]:
        def scale(outputs: Any) -> Any:
            out = scale_fn(outputs)
            note_scaled(out, outputs)
            return out

        return scale

    def update_of(update_fn: Callable[..., Any]) -> Callable[..., Any]:
        def update(*args: Any, **kwargs: Any) -> Any:
            result = update_fn(*args, **kwargs)
            for fn in list(listeners):
                _call(fn)
            return result

        return update

    return PatchSet(
        f"GradScaler instance {id(scaler):#x}",
        lambda: (Patch(scaler, "scale", scale_of), Patch(scaler, "update", update_of)),
    )


def watch_scaler(scaler: Any, on_update: AfterListener) -> None:
    entry = _scalers.get(id(scaler))
    if entry is None:
        listeners: list[AfterListener] = []
        patches = _scaler_patches(scaler, listeners)
        acquire(patches)  # one hold for all the doctors watching this scaler
        entry = _scalers[id(scaler)] = (patches, listeners)
    entry[1].append(on_update)


def unwatch_scaler(scaler: Any, on_update: AfterListener) -> None:
    entry = _scalers.get(id(scaler))
    if entry is None:
        return
    patches, listeners = entry
    if on_update in listeners:
        listeners.remove(on_update)
    if listeners:
        return
    del _scalers[id(scaler)]
    release(patches)


def scaler_watched(scaler: Any) -> bool:
    """Whether a doctor was given this scaler (watch(scaler=...)) and watches it itself."""
    return id(scaler) in _scalers


# -- GradScaler class (watch mode without scaler=) ------------------------------------------
# `GradScaler.scale` / `update` on torch.amp.GradScaler (torch.cuda.amp.GradScaler inherits
# them), patched while a listener (scaler_find.py) is registered and restored exactly with the
# last: the instances are not touched (pickling, deepcopy and state_dict() see nothing). The
# original runs with the same arguments and its result is returned unchanged.


class ScalerListener:
    """What a GradScaler-class listener implements (called behind `_call`)."""

    def scaled(self, scaler: Any) -> None: ...

    def updated(self, scaler: Any, stepped: frozenset[int]) -> None:
        """`stepped`: ids of the optimizers this scaler unscaled or stepped since its last
        update() (its per-optimizer states, read just before update() resets them)."""


_scaler_listeners: list[Any] = []


def scaler_classes(method: str) -> list[type]:
    """torch.amp.GradScaler and torch's own subclasses of it loaded now that define `method`
    themselves: FSDP's ShardedGradScaler overrides scale(), unscale_() and update() without
    calling GradScaler's, so a patch of the base alone never sees them. (A user's subclass is
    left alone: its methods may take other arguments.)"""
    out, todo, seen = [], [torch.amp.GradScaler], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if method in vars(cls):
            out.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c.__module__.startswith("torch."))
    return out


def _outermost(name: str) -> bool:
    """Enter the wrapper `name` on this thread; False when already inside it (a subclass's
    method that calls the base's: both are patched, the outer one notifies)."""
    inside = getattr(_local, "inside", None)
    if inside is None:
        inside = _local.inside = set()
    if name in inside:
        return False
    inside.add(name)
    return True


def _left(name: str) -> None:
    _local.inside.discard(name)


def _class_scale_of(scale_fn: Callable[..., Any]) -> Callable[..., Any]:
    def scale(scaler: Any, outputs: Any) -> Any:
        if not _outermost("scale"):
            return scale_fn(scaler, outputs)
        try:
            out = scale_fn(scaler, outputs)
        finally:
            _left("scale")
        if _scaler_listeners and not compiling():
            _call(note_scaled, out, outputs)
            for listener in list(_scaler_listeners):
                _call(listener.scaled, scaler)
        return out

    return scale


def scaler_stepped(scaler: Any) -> frozenset[int]:
    """The ids of the optimizers `scaler` stepped (or unscaled) since its last update()."""
    states = getattr(scaler, "_per_optimizer_states", None)
    return frozenset(states) if isinstance(states, dict) else frozenset()  # keys: no new entry


def _class_update_of(update_fn: Callable[..., Any]) -> Callable[..., Any]:
    def update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
        if not _scaler_listeners or compiling() or not _outermost("update"):
            return update_fn(scaler, *args, **kwargs)
        try:
            try:
                stepped = scaler_stepped(scaler)
            except Exception:  # noqa: BLE001  (never into the user's update())
                stepped = frozenset()
            result = update_fn(scaler, *args, **kwargs)
        finally:
            _left("update")
        for listener in list(_scaler_listeners):
            _call(listener.updated, scaler, stepped)
        return result

    return update


SCALER_CLASS = PatchSet(
    "GradScaler.scale/update",
    lambda: (
        *(Patch(cls, "scale", _class_scale_of) for cls in scaler_classes("scale")),
        *(Patch(cls, "update", _class_update_of) for cls in scaler_classes("update")),
    ),
)


def add_scaler_listener(listener: Any) -> None:
    acquire(SCALER_CLASS)  # one hold per listener
    _scaler_listeners.append(listener)


def remove_scaler_listener(listener: Any) -> None:
    if listener in _scaler_listeners:
        _scaler_listeners.remove(listener)
        release(SCALER_CLASS)


# -- Mixed precision: clip functions and GradScaler methods (process-wide) ------------------
# `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_` (in `torch.nn.utils` and
# `torch.nn.utils.clip_grad`) and `GradScaler.unscale_` / `GradScaler.step`, patched on their
# owners when the first listener registers and restored exactly with the last. The originals
# run with the same arguments and their result is returned unchanged; a generator of params is
# materialized once and handed on as a generator over the same tensors.


class AmpListener:
    """What an AMP listener may implement (all optional, all called behind `_call`)."""

    def clip_before(self, fn: str, params: list[torch.Tensor], threshold: Any) -> None: ...

    def clip_after(
        self, fn: str, params: list[torch.Tensor], threshold: Any, result: Any
    ) -> None: ...

    def unscaled(self, scaler: Any, optimizer: Any) -> None: ...

    def scaler_step(self, scaler: Any, optimizer: Any, done: bool) -> None: ...


_amp_listeners: list[Any] = []


def in_scaler_step() -> bool:
    """True while `GradScaler.step()` runs (its optimizer.step() call is not a bypass)."""
    return getattr(_local, "scaler_step", 0) > 0


def _clip_wrapper(name: str, original: Callable[..., Any], arg: str) -> Callable[..., Any]:
    def clip(*args: Any, **kwargs: Any) -> Any:
        if not _amp_listeners or getattr(_local, "clipping", False) or compiling():
            return original(*args, **kwargs)
        params_arg = args[0] if args else kwargs.get("parameters")
        if isinstance(params_arg, torch.Tensor):
            params = [params_arg]
        elif isinstance(params_arg, list | tuple):
            params = list(params_arg)
        else:
            try:
                params = list(params_arg)
            except TypeError:
                return original(*args, **kwargs)  # torch raises its own error
            handed: Any = (p for p in params) if isinstance(params_arg, GeneratorType) else params
            if args:
                args = (handed, *args[1:])
            else:
                kwargs = {**kwargs, "parameters": handed}
        threshold = args[1] if len(args) > 1 else kwargs.get(arg)
        tensors = [p for p in params if isinstance(p, torch.Tensor)]
        for listener in list(_amp_listeners):
            _call(listener.clip_before, name, tensors, threshold)
        _local.clipping = True
        try:
            result = original(*args, **kwargs)
        finally:
            _local.clipping = False
        for listener in list(_amp_listeners):
            _call(listener.clip_after, name, tensors, threshold, result)
        return result

    clip.__wrapped__ = original  # type: ignore[attr-defined]
    return clip


def _unscale_of(unscale_fn: Callable[..., Any]) -> Callable[..., Any]:
    def unscale_(scaler: Any, optimizer: Any) -> Any:
        if not _outermost("unscale_"):
            return unscale_fn(scaler, optimizer)
        try:
            result = unscale_fn(scaler, optimizer)
        finally:
            _left("unscale_")
        for listener in list(_amp_listeners):
            _call(listener.unscaled, scaler, optimizer)
        return result

    return unscale_


def _step_of(step_fn: Callable[..., Any]) -> Callable[..., Any]:
    def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        for listener in list(_amp_listeners):
            _call(listener.scaler_step, scaler, optimizer, False)
        _local.scaler_step = getattr(_local, "scaler_step", 0) + 1
        try:
            result = step_fn(scaler, optimizer, *args, **kwargs)
        finally:
            _local.scaler_step -= 1
        for listener in list(_amp_listeners):
            _call(listener.scaler_step, scaler, optimizer, True)
        return result

    return step


def _amp_patches() -> list[Patch]:
    from torch.nn import utils as nn_utils
    from torch.nn.utils import clip_grad

    patches: list[Patch] = []
    shared: dict[int, Callable[..., Any]] = {}  # id(original) -> its wrapper, one for both owners
    for fn_name, arg in (("clip_grad_norm_", "max_norm"), ("clip_grad_value_", "clip_value")):

        def clip_of(original: Any, fn_name: str = fn_name, arg: str = arg) -> Any:
            wrapper = shared.get(id(original))
            if wrapper is None:
                wrapper = shared[id(original)] = _clip_wrapper(fn_name, original, arg)
            return wrapper

        # Only where the owner defines it itself (as before: not a name it re-exports lazily).
        patches += [
            Patch(owner, fn_name, clip_of)
            for owner in (clip_grad, nn_utils)
            if owner.__dict__.get(fn_name) is not None
        ]
    return [
        *patches,
        *(Patch(cls, "unscale_", _unscale_of) for cls in scaler_classes("unscale_")),
        *(Patch(cls, "step", _step_of) for cls in scaler_classes("step")),
    ]


AMP = PatchSet("clip functions and GradScaler.unscale_/step", _amp_patches)


def add_amp_listener(listener: Any) -> None:
    acquire(AMP)  # one hold per listener
    _amp_listeners.append(listener)


def remove_amp_listener(listener: Any) -> None:
    if listener in _amp_listeners:
        _amp_listeners.remove(listener)
        release(AMP)


def amp_is_patched() -> bool:
    return bool(_amp_listeners)


# -- Tensor.data of watched params (hand-written weight updates) ----------------------------
# `p.data.add_(...)` writes p through a tensor whose version counter is its own: p._version does
# not move. While a DataWatch listens, `Tensor.data` (a property on torch.Tensor, restored
# exactly by deleting it: torch defines `data` on TensorBase) hands out the very tensor torch's
# getter returns and, for the params the watch names, keeps it with the caller's line until
# taken; a kept tensor whose _version moved was written in place. `p.data = t` is noted too.
_DATA = torch._C.TensorBase.__dict__["data"]
_DATA_KEEP = 1 << 16  # kept tensors between two takes, at most (unmodified ones go first)
_data_watches: list[DataWatch] = []


class DataWatch:
    """The `.data` accesses and assignments of the tensors whose ids are in `ids`."""

    __slots__ = ("assigned", "handed", "ids", "where")

    def __init__(self) -> None:
        self.ids: set[int] = set()
        # (id of the param, the tensor handed out, caller's file, caller's line)
        self.handed: list[tuple[int, torch.Tensor, str | None, int]] = []
        self.assigned: set[int] = set()
        self.where = True  # note the caller's line (off once the owner knows it)

    def clear(self) -> None:
        self.handed = []
        self.assigned = set()


def _data_get(self: torch.Tensor) -> torch.Tensor:
    data = _DATA.__get__(self)
    if compiling():
        return data
    for watch in _data_watches:
        if id(self) in watch.ids:
            try:
                handed = watch.handed
                if len(handed) >= _DATA_KEEP:
                    handed[:] = [e for e in handed if e[1]._version]
                if len(handed) >= _DATA_KEEP:
                    pass
                elif watch.where:
                    frame = sys._getframe(1)
                    handed.append((id(self), data, frame.f_code.co_filename, frame.f_lineno))
                else:
                    handed.append((id(self), data, None, 0))
            except Exception:  # noqa: BLE001  (never into the user's expression)
                pass
    return data


def _data_set(self: torch.Tensor, value: Any) -> None:
    _DATA.__set__(self, value)
    if compiling():
        return
    for watch in _data_watches:
        if id(self) in watch.ids:
            watch.assigned.add(id(self))


# Frames of the `.data` property: the torch call under one is the caller's own `.data` read
# (what the cut tracker attributes to the user's line), not a call traindoctor makes.
DATA_CODES = frozenset({_data_get.__code__, _data_set.__code__})


class _DataProperty(property):
    """`Tensor.data` as a Python property, named "data" as torch's own descriptor is: a
    TorchFunctionMode sees a `.data` read as `__get__` of this object, and the cut tracker
    (probes/cuts.py) and a user's mode tell `.data` from other property reads by that name."""

    __name__ = "data"


DATA = Patch(torch.Tensor, "data", lambda _: _DataProperty(_data_get, _data_set, doc=_DATA.__doc__))


def add_data_watch(watch: DataWatch) -> None:
    acquire(DATA)  # one hold per watch
    _data_watches.append(watch)


def remove_data_watch(watch: DataWatch) -> None:
    if watch in _data_watches:
        _data_watches.remove(watch)
        release(DATA)


def data_is_patched() -> bool:
    return bool(_data_watches)
