"""Python's cyclic collector paused while traindoctor's own passes allocate.

A diagnosis pass or a gradient walk's read-back allocates tens of thousands of short-lived
containers on a model of thousands of tensors: with the collector on, they set off young
collections inside the pass, and the ones alive at that moment (the pass's own working set)
are promoted and counted toward the next full collection, which walks the whole heap (0.3-0.7 s
on such a model). Paused, the pass frees them before any collection sees them; the next
allocation after it runs one young collection, as it would have. Nothing is left uncollected:
the collector runs again as soon as the pass ends, and a collector the user switched off stays
off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block (as it was before, after it)."""
    was = gc.isenabled()
    if was:
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
