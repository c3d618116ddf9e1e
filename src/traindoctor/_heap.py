"""The top-level modules alive in the process, found in one scan of the collector's objects.

Zero-code attach scans the heap for the models that own the optimizers' params, and the copies
probe scans it again, in the same attach, for unwatched copies of them: after `import torch`
the heap holds ~300k objects (far more with transformers loaded), ~70 ms a scan on this CPU.
Inside `one_scan()` the first scan is reused by every later call (attach is one moment: the
script runs no code in between); outside it, each call scans afresh.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch

_shared: list[list[torch.nn.Module] | None] = []  # one slot per open one_scan()


def _module_types() -> set[type]:
    """nn.Module and every subclass defined so far: the class of any live module is among them
    (`type(o) in types` is a set lookup where issubclass walks the MRO)."""
    out: set[type] = {torch.nn.Module}
    stack = [torch.nn.Module]
    while stack:
        for sub in type.__subclasses__(stack.pop()):
            if sub not in out:
                out.add(sub)
                stack.append(sub)
    return out


def _scan() -> list[torch.nn.Module]:
    types = _module_types()
    # type() rather than isinstance(): isinstance reads __class__, which some proxies warn on.
    modules = [o for o in gc.get_objects() if type(o) in types]
    children = {id(c) for m in modules for c in m._modules.values() if c is not None}
    return [m for m in modules if id(m) not in children]


def heap_roots() -> list[torch.nn.Module]:
    """Modules that no other module holds as a child, in the collector's order."""
    if _shared and _shared[-1] is not None:
        return _shared[-1]
    roots = _scan()
    if _shared:
        _shared[-1] = roots
    return roots


@contextlib.contextmanager
def one_scan() -> Iterator[None]:
    """Every `heap_roots()` inside shares one scan; the modules are let go at the end."""
    _shared.append(None)
    try:
        yield
    finally:
        _shared.pop()
