"""What a Doctor keeps of the user's objects: nothing strong once closed, and in a zero-code
run nothing strong of a model or optimizer the script dropped.

After the report, `Doctor._release` makes `doctor.models`/`doctor.optimizers` weak views
(readable while the user holds them) and `scrub`s traindoctor's own objects (the attach
context, the step driver, the probes): an attribute that is or holds a tensor, module or
optimizer is emptied, so one closed doctor per trial of a sweep keeps no trial's model or
optimizer state alive. `scrub` sets attributes of traindoctor's objects only, never of a
user's or a library's (tests/test_patching.py allows this module its `setattr`).

During a zero-code run (`traindoctor run`: a sweep, k-fold CV, trials built and dropped one
after another) the watched models and optimizers are held the same weak way (`RunModels`,
`WeakSlots`): a trial the script drops is freed as it is without traindoctor, and the
Doctor's callback (`Doctor._dropped`) purges what the caches kept of it. A dropped
optimizer keeps its position as a `DroppedOptimizer` (the probes number optimizers
`opt{i}`), which holds no tensor.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


class WeakModels(dict):
    """A closed doctor's `models`: prefix -> model while the user still holds it."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self._refs = {p: weakref.ref(m) for p, m in models.items()}

    def _alive(self) -> dict[str, torch.nn.Module]:
        return {p: m for p, r in self._refs.items() if (m := r()) is not None}

    def __len__(self) -> int:
        return len(self._alive())

    def __iter__(self) -> Iterator[str]:
        return iter(self._alive())

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._alive()

    def __getitem__(self, prefix: str) -> torch.nn.Module:
        return self._alive()[prefix]

    def __bool__(self) -> bool:
        return bool(self._alive())

    def get(self, prefix: str, default: Any = None) -> Any:
        return self._alive().get(prefix, default)

    def keys(self):  # type: ignore[override]
        return self._alive().keys()

    def values(self):  # type: ignore[override]
        return self._alive().values()

    def items(self):  # type: ignore[override]
        return self._alive().items()

    def __eq__(self, other: object) -> bool:
        return self._alive() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._alive())


class WeakList(list):
    """A closed doctor's `optimizers`: those the user still holds, in their order."""

    def __init__(self, items: Iterable[Any]) -> None:
        super().__init__()
        self._refs = [weakref.ref(o) for o in items]

    def _alive(self) -> list[Any]:
        return [o for r in self._refs if (o := r()) is not None]

    def __len__(self) -> int:
        return len(self._alive())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._alive())

    def __getitem__(self, i: Any) -> Any:
        return self._alive()[i]

    def __bool__(self) -> bool:
        return bool(self._alive())

    def __contains__(self, item: object) -> bool:
        return any(o is item for o in self._alive())  # identity: Optimizer has no __eq__

    def __eq__(self, other: object) -> bool:
        return self._alive() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._alive())


_DEREF = weakref.ref.__call__  # (mapped in C: no Python frame per object)


class RunModels(dict):
    """A zero-code run's `models`: prefix -> model, each held weakly. The weakrefs are the
    dict's own values (its keys, length and membership read in C); `items()`, `values()` and
    `[]` give the models. The Doctor replaces it when one is freed (Doctor._dropped), so its
    readers never meet a dead entry. `strong`: the models held strongly all the same (our
    own: the loose tensors of a script without modules)."""

    def __init__(
        self,
        models: dict[str, torch.nn.Module],
        strong: Callable[[torch.nn.Module], bool] | None = None,
    ) -> None:
        super().__init__({p: weakref.ref(m) for p, m in models.items()})
        self._strong = [m for m in models.values() if strong is not None and strong(m)]

    def items(self):  # type: ignore[override]
        values = list(map(_DEREF, dict.values(self)))
        if None in values:
            return [(k, v) for k, v in zip(dict.keys(self), values) if v is not None]
        return list(zip(dict.keys(self), values))

    def values(self):  # type: ignore[override]
        values = list(map(_DEREF, dict.values(self)))
        return [v for v in values if v is not None] if None in values else values

    def keys(self):  # type: ignore[override]
        return [k for k, _ in self.items()]

    def __iter__(self) -> Iterator[str]:  # (and dict(models) copies the models)
        return iter(self.keys())

    def __getitem__(self, prefix: str) -> torch.nn.Module:
        model = dict.__getitem__(self, prefix)()
        if model is None:
            raise KeyError(prefix)
        return model

    def get(self, prefix: str, default: Any = None) -> Any:
        ref = dict.get(self, prefix)
        model = ref() if ref is not None else None
        return default if model is None else model

    def __eq__(self, other: object) -> bool:
        return dict(self.items()) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class DroppedOptimizer(torch.optim.Optimizer):
    """The slot of a watched optimizer the script dropped (a finished trial's): no group, no
    state. `name`: its class's name."""

    def __init__(self, name: str) -> None:  # (no Optimizer.__init__: it wants params)
        self.name = name
        self.defaults: dict[str, Any] = {}
        self.state: dict[Any, Any] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()

    def step(self, closure: Any = None) -> None:  # never stepped: nobody holds it
        return None

    def __repr__(self) -> str:
        return f"DroppedOptimizer({self.name})"


class WeakSlots(list):
    """A zero-code run's `optimizers`, in their order, each held weakly (the weakrefs are the
    list's own items: its length read in C); one the script dropped reads as its
    `DroppedOptimizer`: positions never move. Replaced, never mutated (`plus`)."""

    def __init__(self, items: Iterable[Any] = (), dropped: dict[int, Any] | None = None) -> None:
        items = list(items)
        super().__init__(weakref.ref(o) for o in items)
        self._names = [type(o).__name__ for o in items]
        # slot -> its placeholder, shared by the copies of this list
        self._dropped: dict[int, Any] = dropped if dropped is not None else {}

    def plus(self, opt: Any) -> WeakSlots:
        """A copy with `opt` appended."""
        out = WeakSlots((), self._dropped)
        list.extend(out, list.__iter__(self))
        list.append(out, weakref.ref(opt))
        out._names = [*self._names, type(opt).__name__]
        return out

    def _objects(self) -> list[Any]:
        out = list(map(_DEREF, list.__iter__(self)))
        if None in out:
            for i, o in enumerate(out):
                if o is None:
                    placeholder = self._dropped.get(i)
                    if placeholder is None:
                        placeholder = self._dropped[i] = DroppedOptimizer(self._names[i])
                    out[i] = placeholder
        return out

    def live(self) -> list[Any]:
        """The optimizers someone still holds, in their order."""
        return [o for o in map(_DEREF, list.__iter__(self)) if o is not None]

    def __iter__(self) -> Iterator[Any]:
        out = list(map(_DEREF, list.__iter__(self)))
        return iter(self._objects() if None in out else out)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._objects()[i]
        opt = list.__getitem__(self, i)()
        return opt if opt is not None else self._objects()[i]

    def __contains__(self, item: object) -> bool:
        for r in list.__iter__(self):  # noqa: SIM110  (a loop: no generator frame)
            if r() is item:  # identity: Optimizer has no __eq__
                return True
        return False

    def __eq__(self, other: object) -> bool:
        return self._objects() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._objects())


_USERS = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _holds_user(value: Any, depth: int = 0) -> bool:
    """Whether a value is, or a container (three levels down) holds, a tensor, module or
    optimizer: the user's objects (or tensors kept from them) that a closed doctor drops."""
    if isinstance(value, _USERS):
        return True
    if (
        depth >= 3
        or not isinstance(value, _CONTAINERS)
        or isinstance(value, WeakModels | RunModels | WeakList | WeakSlots)
    ):
        return False
    if isinstance(value, dict):
        return any(_holds_user(k, depth + 1) or _holds_user(v, depth + 1) for k, v in value.items())
    return any(_holds_user(v, depth + 1) for v in value)


def scrub(obj: Any, keep: set[int], depth: int = 0) -> None:
    """Drop what `obj` holds of the user's: an attribute that is, or is a container of, a
    tensor, module or optimizer becomes an empty container of its type or None (read after
    close, it reads as nothing watched); our own objects it holds (directly or in containers)
    are scrubbed the same way, down to a few levels. `keep`: ids never entered (the run's
    shared services, the report's timeline) or already done."""
    if depth > 4 or id(obj) in keep:
        return
    keep.add(id(obj))
    state = getattr(obj, "__dict__", None)
    names = list(state) if isinstance(state, dict) else []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else [n for n in slots if n != "__dict__"]
    for name in names:
        value = getattr(obj, name, None)
        if _holds_user(value):
            empty = None
            if isinstance(value, _CONTAINERS):
                with contextlib.suppress(Exception):
                    empty = type(value)()
            with contextlib.suppress(Exception):
                setattr(obj, name, empty)  # a frozen dataclass keeps its fields
            continue
        for inner in _objects(value):
            scrub(inner, keep, depth + 1)


def _objects(value: Any, depth: int = 0) -> Iterator[Any]:
    """Our objects a value is or holds (containers two levels down)."""
    if isinstance(value, _CONTAINERS):
        if depth < 2:
            items = value.values() if isinstance(value, dict) else value
            for v in list(items)[:10_000]:
                yield from _objects(v, depth + 1)
    elif type(value).__module__.startswith("traindoctor.") and not isinstance(
        value, type | WeakModels | RunModels | WeakList | WeakSlots | DroppedOptimizer
    ):
        yield value  # ours only: a user's object (a scheduler, a loader) is never touched
