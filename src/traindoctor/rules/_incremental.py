"""Incremental rule passes (issue 15): what a rule keeps between passes to read only new records.

A rule declared with `@rule(state=Factory)` gets `func(view, state, **options)`; diagnosis.py keeps
one state per rule (and options) per timeline, so a mid-run pass and close() read only the
records written since the last pass, and a fresh pass (`report --rediagnose`, tests) starts from
a new state and gives the same findings. The newest step of a signal may still be written (a
list appended per micro-batch, values read back in batches), so a reader folds a record in for
good only once a later step exists, and hands the newest one back each pass; a write below a
signal's newest step (Timeline.rewrites) sends the rule back to a fresh state.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
from typing import Any

from ..timeline import TimelineView


class Reader:
    """One signal read pass by pass: `settled` records once each, the newest one every pass."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.done: int | None = None  # the last step handed out as settled
        self.rewrites = 0

    def stale(self, tl: TimelineView) -> bool:
        """An earlier step of the signal was written since this reader started."""
        return tl.rewrites(self.name) != self.rewrites

    def read(self, tl: TimelineView) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
        """(new settled records, the pending newest record or none)."""
        recs = tl.series(self.name) if self.done is None else tl.series_since(self.name, self.done)
        if not recs:
            return [], []
        settled, pending = recs[:-1], recs[-1:]
        if settled:
            self.done = settled[-1][0]
        return settled, pending


def fresh(state: Any, tl: TimelineView) -> bool:
    """Whether `state` (with `readers`) may go on: no reader's signal was rewritten below its
    newest step since the state started."""
    return not any(r.stale(tl) for r in state.readers)


def step_mean(values: Any) -> float | None:
    """The mean of one step's list of losses (utils.per_step_mean on one step)."""
    xs = [float(v) for v in values or ()]
    return statistics.fmean(xs) if xs else None


class SortedWindow:
    """A sorted list with exact inverse operations (insert/remove), for medians and order
    statistics of a window that slides or grows. O(log n) to find, a memmove to insert."""

    def __init__(self) -> None:
        self.xs: list[float] = []

    def add(self, x: float) -> None:
        bisect.insort(self.xs, x)

    def remove(self, x: float) -> None:
        i = bisect.bisect_left(self.xs, x)
        if i < len(self.xs) and (self.xs[i] == x or (math.isnan(x) and math.isnan(self.xs[i]))):
            del self.xs[i]
            return
        self.xs.remove(x)  # NaN or -0.0 vs 0.0: never expected, exact anyway

    def median(self) -> float:
        """statistics.median of the values held (same arithmetic)."""
        xs, n = self.xs, len(self.xs)
        if n % 2 == 1:
            return xs[n // 2]
        i = n // 2
        return (xs[i - 1] + xs[i]) / 2

    def __len__(self) -> int:
        return len(self.xs)


class KthSmallest:
    """The k-th smallest of a growing multiset, k non-decreasing: two heaps, O(log n) a value."""

    def __init__(self) -> None:
        self.low: list[float] = []  # the k smallest, negated (a max-heap)
        self.high: list[float] = []

    def add(self, x: float) -> None:
        if self.low and x < -self.low[0]:
            heapq.heappush(self.low, -x)
        else:
            heapq.heappush(self.high, x)

    def kth(self, k: int) -> float | None:
        """The k-th smallest (1-based), None with fewer than k values."""
        while len(self.low) > k:
            heapq.heappush(self.high, -heapq.heappop(self.low))
        while len(self.low) < k and self.high:
            heapq.heappush(self.low, -heapq.heappop(self.high))
        # Every value of `low` stays <= every value of `high` (add() and the moves keep it).
        return -self.low[0] if k > 0 and len(self.low) == k else None
