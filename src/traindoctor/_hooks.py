"""Hooks traindoctor puts on the user's modules, safe to pickle and to copy with the module.

`torch.save(model)`, `pickle.dumps(model)` and `copy.deepcopy(model)` serialize a module's hook
dicts with it. A closure there made `torch.save(model)` raise ("Can't pickle local object"),
and a deep copy (an EMA, the autopsy's replay copy) kept calling the live run's probes. A
`CopySafeHook` reduces to an inert hook built from the standard library only
(`functools.partial(sys.audit, ...)`, which accepts any arguments and returns None), so the
saved file loads where traindoctor is not installed, and a copy is not watched as the original.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

INERT_EVENT = "traindoctor.inert-hook"


class CopySafeHook:
    """Calls `fn`; pickled or copied, it becomes an inert hook."""

    __slots__ = ("fn", "__weakref__")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        return functools.partial, (sys.audit, INERT_EVENT)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.__reduce_ex__(None)
