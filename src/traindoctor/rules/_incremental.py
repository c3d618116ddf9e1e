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
import math
import statistics
from collections.abc import Iterator
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
        if self.done is None:
            # A whole read sees every write so far: only later ones below the newest step
            # make this reader stale (else a signal rewritten once would be read whole on
            # every pass).
            self.rewrites = tl.rewrites(self.name)
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
    """A sorted multiset with exact inverse operations (add/remove), for medians and order
    statistics of a window that slides or grows. Kept in sorted blocks of about `LOAD` values
    (as sortedcontainers does): an insert moves one block, not the whole list, so the cost
    stays flat up to millions of values."""

    LOAD = 1024

    def __init__(self) -> None:
        self._blocks: list[list[float]] = []
        self._maxes: list[float] = []  # the last (largest) value of each block
        self._len = 0

    def add(self, x: float) -> None:
        if not self._blocks:
            self._blocks, self._maxes = [[x]], [x]
        else:
            i = min(bisect.bisect_left(self._maxes, x), len(self._blocks) - 1)
            block = self._blocks[i]
            bisect.insort(block, x)
            self._maxes[i] = block[-1]
            if len(block) > 2 * self.LOAD:
                self._blocks[i : i + 1] = [block[: self.LOAD], block[self.LOAD :]]
                self._maxes[i : i + 1] = [block[self.LOAD - 1], block[-1]]
        self._len += 1

    def remove(self, x: float) -> None:
        """Remove one value equal to `x` (it must be held)."""
        i = bisect.bisect_left(self._maxes, x)
        block = self._blocks[i] if i < len(self._blocks) else []
        j = bisect.bisect_left(block, x)
        if j == len(block) or block[j] != x:
            raise ValueError(f"{x!r} is not in the window")
        del block[j]
        if block:
            self._maxes[i] = block[-1]
        else:
            del self._blocks[i], self._maxes[i]
        self._len -= 1

    def __getitem__(self, k: int) -> float:
        """The k-th smallest (0-based)."""
        for block in self._blocks:
            if k < len(block):
                return block[k]
            k -= len(block)
        raise IndexError(k)

    def median(self) -> float:
        """statistics.median of the values held (same arithmetic)."""
        n = self._len
        if n % 2 == 1:
            return self[n // 2]
        return (self[n // 2 - 1] + self[n // 2]) / 2

    def __iter__(self) -> Iterator[float]:
        for block in self._blocks:
            yield from block

    def __len__(self) -> int:
        return self._len


class LowerBound:
    """A lower bound of the k-th smallest of a growing multiset, in bounded memory: counts per
    1% band of positive values (all values <= 0 in one band, bounded by -inf). The bound is
    the lower edge of the band holding the k-th smallest: at most 1% below it. For a test that
    only needs to rule a statistic out before computing it exactly."""

    STEP = math.log(1.01)

    def __init__(self) -> None:
        self.counts: dict[int | None, int] = {}
        self.n = 0

    def add(self, x: float) -> None:
        # values <= 0 (or not finite: never fed) in the band below all: bound -inf
        band = math.floor(math.log(x) / self.STEP) if x > 0 and math.isfinite(x) else None
        self.counts[band] = self.counts.get(band, 0) + 1
        self.n += 1

    def kth(self, k: int) -> float | None:
        """A value <= the k-th smallest (1-based), None with fewer than k values."""
        if k <= 0 or k > self.n:
            return None
        seen = self.counts.get(None, 0)
        if seen >= k:
            return -math.inf
        for band in sorted(b for b in self.counts if b is not None):
            seen += self.counts[band]
            if seen >= k:
                # exp() of the band's edge, less a margin for its rounding
                return math.exp(band * self.STEP) * (1 - 1e-9)
        return None  # not reached: the counts add up to n
