"""The one place where traindoctor replaces attributes of torch (and of the libraries it watches)
process-wide, and puts them back.

A `Patch` names one target, `owner.attribute`, and how to build its replacement from what is
there (`make(original)`); a `PatchSet` is a group decided when first acquired (the scheduler
classes, the Module subclasses that exist then) and installed all or none. Both are
reference-counted keys: `acquire(key)` installs on the first acquire, `release(key)` restores on
the last. The wrappers themselves live with the code that needs them (a loss wrapper in the
loss probe); only the bookkeeping is here, so "detach restores exactly" is checked in one place
(tests/test_patching.py, tests/test_patches_restored.py).

Restoring is exact: what `owner.__dict__` held before goes back, and an attribute that was
inherited (absent from `owner.__dict__`) is deleted again, so lookup reaches the base class's.
A replacement someone else put on top of ours after we installed (a user's or another
library's patch) stays: ours is forgotten under it and passes calls through once its listeners
are gone. If one of our own patches sits on top (two keys on one target), it inherits what we
had saved, so the last of them to go restores the original.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

MISSING: Any = object()  # "absent from owner.__dict__" (inherited, or from a module __getattr__)


class Patch:
    """`owner.attribute` replaced by `make(original)` while acquired.

    `original` is `getattr(owner, attribute)` at install time. `make` may return None to leave
    the target alone (it is ours already); an `optional` patch is skipped when the attribute is
    absent or None (a function this torch version does not have)."""

    __slots__ = ("attribute", "make", "optional", "owner")

    def __init__(
        self, owner: Any, attribute: str, make: Callable[[Any], Any], optional: bool = False
    ) -> None:
        self.owner = owner
        self.attribute = attribute
        self.make = make
        self.optional = optional

    def __repr__(self) -> str:
        return (
            f"Patch({getattr(self.owner, '__name__', type(self.owner).__name__)}.{self.attribute})"
        )


class PatchSet:
    """Patches decided when first acquired (`plan()` runs then), installed all or none."""

    __slots__ = ("name", "plan")

    def __init__(self, name: str, plan: Callable[[], Iterable[Patch]]) -> None:
        self.name = name
        self.plan = plan

    def __repr__(self) -> str:
        return f"PatchSet({self.name})"


@dataclass(eq=False)
class Installed:
    """One replaced attribute: what `owner.__dict__` held before (or MISSING) and ours."""

    owner: Any
    attribute: str
    before: Any
    ours: Any


@dataclass(eq=False)
class _Held:
    count: int
    installed: list[Installed]


_lock = threading.RLock()
_held: dict[Patch | PatchSet, _Held] = {}  # keys by identity: one Patch object, one target use


def _current(owner: Any, attribute: str) -> Any:
    return vars(owner).get(attribute, MISSING)


def _install(patch: Patch) -> Installed | None:
    owner, attribute = patch.owner, patch.attribute
    before = _current(owner, attribute)
    original = getattr(owner, attribute, None) if patch.optional else getattr(owner, attribute)
    if original is None and patch.optional:
        return None
    ours = patch.make(original)
    if ours is None:
        return None
    setattr(owner, attribute, ours)
    return Installed(owner, attribute, before, ours)


def _restore(entry: Installed) -> None:
    owner, attribute = entry.owner, entry.attribute
    if _current(owner, attribute) is not entry.ours:
        # Replaced since. One of ours on top inherits what we saved (so that it restores the
        # original when it goes); anyone else's stays, with ours forgotten under it.
        for held in _held.values():
            for other in held.installed:
                same_target = other.owner is owner and other.attribute == attribute
                if same_target and other.before is entry.ours:
                    other.before = entry.before
        return
    if entry.before is MISSING:
        delattr(owner, attribute)
    else:
        setattr(owner, attribute, entry.before)


def acquire(key: Patch | PatchSet) -> None:
    """Hold `key`: installed on the first acquire. An exception while installing (in `plan`,
    `make` or the assignment) undoes what was installed so far and propagates."""
    with _lock:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return
        installed: list[Installed] = []
        try:
            patches = (key,) if isinstance(key, Patch) else tuple(key.plan())
            for patch in patches:
                entry = _install(patch)
                if entry is not None:
                    installed.append(entry)
        except BaseException:
            for entry in reversed(installed):
                _restore(entry)
            raise
        _held[key] = _Held(1, installed)


def release(key: Patch | PatchSet) -> bool:
    """Let go of `key`; True when that was the last hold (its targets are restored). Releasing a
    key that is not held does nothing."""
    with _lock:
        held = _held.get(key)
        if held is None:
            return False
        held.count -= 1
        if held.count > 0:
            return False
        del _held[key]
        for entry in reversed(held.installed):
            _restore(entry)
        return True


def is_held(key: Patch | PatchSet) -> bool:
    return key in _held


def patched_targets() -> list[Installed]:
    """Every attribute replaced now (for tests: after the last doctor closes, none)."""
    with _lock:
        return [entry for held in _held.values() for entry in held.installed]
