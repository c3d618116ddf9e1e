"""What a closed Doctor keeps of the user's objects: nothing strong.

After the report, `Doctor._release` makes `doctor.models`/`doctor.optimizers` weak views
(readable while the user holds them) and `scrub`s traindoctor's own objects (the attach
context, the step driver, the probes): an attribute that is or holds a tensor, module or
optimizer is emptied, so one closed doctor per trial of a sweep keeps no trial's model or
optimizer state alive. `scrub` sets attributes of traindoctor's objects only, never of a
user's or a library's (tests/test_patching.py allows this module its `setattr`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
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


_USERS = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _holds_user(value: Any, depth: int = 0) -> bool:
    """Whether a value is, or a container (three levels down) holds, a tensor, module or
    optimizer: the user's objects (or tensors kept from them) that a closed doctor drops."""
    if isinstance(value, _USERS):
        return True
    if depth >= 3 or not isinstance(value, _CONTAINERS) or isinstance(value, WeakModels | WeakList):
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
        value, type | WeakModels | WeakList
    ):
        yield value  # ours only: a user's object (a scheduler, a loader) is never touched
