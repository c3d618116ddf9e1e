"""`AttachContext.named_params()`'s list, kept across steps while the module tree is unchanged.

Walking `named_parameters()` costs ~10 us a module in Python and makes a tuple and a name
string per parameter: on a model of 5,000 modules and 10,000 tensors, ~50 ms and 20,000 new
objects each step that asked for it (then promoted toward full collections). The list is
what the walk would return as long as every module's `_parameters` and `_modules` dicts hold
the same keys and the same objects, and the watched models are the same: that is checked in C
(`map` over the dicts kept from the walk), ~1 ms on that model, and the walk runs again only
when something changed (a layer or a parameter replaced, added, deleted, a parametrization
registered).

The watched models themselves (the roots) are held weakly: a zero-code run's model that the
script drops (a sweep's finished trial) is freed, and its callback drops this walk
(`AttachContext.forget_params`) with the modules and params it kept.

A module type that overrides `named_modules`, or a model that overrides `named_parameters` or
`_named_members` (FSDP's wrappers, say), may list params from elsewhere: such models are walked
again at each check, as before.
"""

from __future__ import annotations

import weakref
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import torch

_Module = torch.nn.Module
_PARAMETERS = attrgetter("_parameters")
_MODULES = attrgetter("_modules")
_NAME = itemgetter(0)
_TENSOR = itemgetter(1)


def walk(models: dict[str, torch.nn.Module]) -> list[tuple[str, torch.nn.Parameter]]:
    """(qualified name, param) of `models`, each param once (the first name it is found under)."""
    out: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    for prefix, model in models.items():
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            out.append((f"{prefix}{name}", p))
    return out


class NamedParams:
    """One walk's (name, param) list and what tells whether a new walk would differ."""

    __slots__ = ("pairs", "_models", "_modules", "_state")

    def __init__(
        self, models: dict[str, torch.nn.Module], previous: NamedParams | None = None
    ) -> None:
        pairs = walk(models)
        if previous is not None and _same_pairs(pairs, previous.pairs):
            pairs = previous.pairs  # the same list: a reader that compares lists sees no change
        self.pairs = pairs
        roots = list(models.values())
        self._models = [(p, weakref.ref(m)) for p, m in models.items()]
        modules: list[torch.nn.Module] | None = None
        if all(map(_plain_root, roots)):
            modules = list(chain.from_iterable(m.modules() for m in roots))
            if not all(map(_plain_type, set(map(type, modules)))):
                modules = None
            elif not {dict}.issuperset(map(type, map(_PARAMETERS, modules))) or not {
                dict
            }.issuperset(map(type, map(_MODULES, modules))):
                modules = None  # an OrderedDict's own order is not read here: walk again
        ids = set(map(id, roots))
        # the modules below the roots (the roots are read from `_models` when checked)
        self._modules = [m for m in modules if id(m) not in ids] if modules is not None else None
        self._state = _state([*roots, *self._modules]) if self._modules is not None else None

    @property
    def modules(self) -> list[torch.nn.Module] | None:
        """The modules of the walk, the models' roots first, where its dicts are plain (None:
        not kept, or a model is gone)."""
        roots = [r() for _, r in self._models]
        if self._modules is None or None in roots:
            return None
        return [*roots, *self._modules]

    def holds(self, models: dict[str, torch.nn.Module]) -> bool:
        """Whether a walk of `models` now would return `pairs` (False when it cannot tell)."""
        if self._modules is None or len(models) != len(self._models):
            return False
        if not all(a == b[0] and m is b[1]() for (a, m), b in zip(models.items(), self._models)):
            return False
        try:
            return _state([*models.values(), *self._modules]) == self._state
        except Exception:  # noqa: BLE001  (a module without its dicts: walk again)
            return False


def _same_pairs(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    return list(map(_NAME, a)) == list(map(_NAME, b)) and list(map(id, map(_TENSOR, a))) == list(
        map(id, map(_TENSOR, b))
    )


def _state(modules: list[torch.nn.Module]) -> tuple[list[int], list[str], list[int]]:
    """The ids of each module's two dicts, their keys, and the ids of their values (C loops)."""
    dicts = [*map(_PARAMETERS, modules), *map(_MODULES, modules)]
    keys = list(chain.from_iterable(map(dict.keys, dicts)))
    values = list(map(id, chain.from_iterable(map(dict.values, dicts))))
    return list(map(id, dicts)), keys, values


def _plain_root(model: Any) -> bool:
    cls = type(model)
    return (
        cls.named_parameters is _Module.named_parameters
        and cls._named_members is _Module._named_members
    )


def _plain_type(cls: type) -> bool:
    return cls.named_modules is _Module.named_modules
