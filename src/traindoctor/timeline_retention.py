"""Which records of a long run a Timeline keeps in memory (everything goes to disk as the run
goes: timeline_store.py), so its working set is bounded however long the run.

Per signal, in the order its records are written:

- the **head**, its records of the first `HEAD` steps from its first record, kept exact (what
  the run looked like at the start);
- the **tail**, its records of the last `TAIL` steps, kept exact (what the rules that keep a
  state between passes read with `series_since`: the widest interval between two mid-run
  passes is under it; and what the probes read back with `Timeline.get`);
- the **middle**, thinned: the records leaving the tail fall into buckets of `stride` records,
  each keeping its first record and, for numbers, the records of its lowest and highest value;
  when there are more than `BUCKETS` buckets, neighbours merge and the stride doubles. Records
  holding a NaN or an infinity are kept whatever their bucket (the first `NONFINITE_KEEP` of
  them): the anomalies a rule looks for survive the thinning.

So a signal recorded every step holds at most HEAD + TAIL + 3 * BUCKETS records, and one
recorded every k steps about 1/k of the head and tail and the same middle. A record holding
many items (a per-parameter dict, a list per micro-batch) counts its items against a cell
budget, so a model of 10,000 parameter tensors keeps fewer of its per-parameter records than a
small one keeps of its loss. The decisions depend only on the records and their order, never
on timing: identical runs keep identical records.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

# Steps of the head and of the tail, and buckets of the middle (at most 3 records each).
HEAD = 256
TAIL = 2048
BUCKETS = 128
# Records of many items: items kept in each part, and the fewest records kept whatever their size.
HEAD_CELLS = 1 << 12
TAIL_CELLS = 1 << 15
BUCKET_CELLS = 1 << 13
HEAD_MIN, TAIL_MIN, BUCKETS_MIN = 2, 8, 4
NONFINITE_KEEP = 64  # non-finite records kept outside the buckets, per signal
_LEVEL_ITEMS = 8  # a container of at most this many numbers has a level: their mean
_MISSING = object()


def cells(value: Any) -> int:
    """Items a record holds (1 for a scalar): what it costs to keep."""
    if isinstance(value, dict | list | tuple):
        return max(1, len(value))
    return 1


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float | int):
        return [value]
    if not isinstance(value, dict | list | tuple):
        return None
    out = []
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, bool) or not isinstance(item, float | int):
            return None
        out.append(item)
    return out


def level(value: Any) -> float | None:
    """The number a bucket compares records by: a scalar, or the mean of a few numbers; None
    for anything else or for a non-finite one (kept as an anomaly instead)."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple) and len(value) > _LEVEL_ITEMS:
        return None
    numbers = _numbers(value)
    if not numbers:
        return None
    mean = math.fsum(numbers) / len(numbers)
    return mean if math.isfinite(mean) else None


def nonfinite(value: Any) -> bool:
    """Whether a record holds a NaN or an infinity (one level into dicts and lists)."""
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict | list | tuple):
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if type(item) is float and not math.isfinite(item):
                return True
    return False


class Retention:
    """One signal's retention state. `compact(steps, held)` is given the steps written to the
    signal's dict `data` since the last call, in order, and those not yet streamed to disk
    (which stay); it deletes from `data` what the signal no longer keeps."""

    __slots__ = ("_data", "_first", "_head", "_pending", "_buckets", "_stride", "_protected")

    def __init__(self, data: dict[int, Any]) -> None:
        self._data = data
        self._first: int | None = None  # the step of the signal's first record
        self._head = 0  # records kept in the head so far
        self._pending: deque[int] = deque()  # the tail's steps, oldest first
        # Each bucket: [records merged, first, low step, low level, high step, high level].
        self._buckets: list[list[Any]] = []
        self._stride = 1
        self._protected: set[int] = set()  # non-finite records kept outside the buckets

    def compact(self, steps: list[int], held: set[int] | None = None) -> None:
        pending = self._pending
        pending.extend(steps)
        if len(pending) <= TAIL_MIN:
            return
        data = self._data
        if self._first is None:
            self._first = pending[0]
        head_end = self._first + HEAD
        tail_start = pending[-1] - TAIL  # records after it are the tail
        # One size for the batch: a signal's records have one shape (a dict per parameter...).
        size = cells(data.get(pending[0]))
        tail = _cap(TAIL, TAIL_CELLS, TAIL_MIN, size)
        head = _cap(HEAD, HEAD_CELLS, HEAD_MIN, size)
        buckets = _cap(BUCKETS, BUCKET_CELLS, BUCKETS_MIN, size)
        to_middle = self._to_middle
        while len(pending) > TAIL_MIN:
            oldest = pending[0]
            if (oldest > tail_start and len(pending) <= tail) or (held and oldest in held):
                return
            pending.popleft()
            value = data.get(oldest, _MISSING)
            if value is _MISSING:
                continue
            if self._head < head and (oldest < head_end or self._head < HEAD_MIN):
                self._head += 1
                continue
            to_middle(oldest, value, buckets)

    def _to_middle(self, step: int, value: Any, max_buckets: int) -> None:
        kind = type(value)
        if kind is list and len(value) == 1:  # one value per micro-batch, one micro-batch
            value = value[0]
            kind = type(value)
        if kind is float:  # the common case, without the general checks
            finite = value - value == 0.0
            lvl = value if finite else None
        elif kind is int:
            finite, lvl = True, float(value)
        else:
            finite = not nonfinite(value)
            lvl = level(value)
        if not finite and len(self._protected) < NONFINITE_KEEP:
            self._protected.add(step)
        buckets = self._buckets
        last = buckets[-1] if buckets else None
        if last is None or last[0] >= self._stride:
            buckets.append([1, step, step, lvl, step, lvl])
            if len(buckets) > max_buckets:
                self._merge()
            return
        last[0] += 1
        drop = [step]
        if lvl is not None:
            if last[3] is None or lvl < last[3]:
                drop.append(last[2])
                last[2], last[3] = step, lvl
            if last[5] is None or lvl > last[5]:
                drop.append(last[4])
                last[4], last[5] = step, lvl
        # The new record stays if it is the bucket's low or high; a displaced low or high goes.
        reps = _reps(last)
        self._drop([s for s in drop if s not in reps])

    def _merge(self) -> None:
        """Halve the buckets: neighbours merge, keeping the first record and the extremes."""
        merged = []
        buckets = self._buckets
        for i in range(0, len(buckets) - 1, 2):
            a, b = buckets[i], buckets[i + 1]
            low = a if b[3] is None or (a[3] is not None and a[3] <= b[3]) else b
            high = a if b[5] is None or (a[5] is not None and a[5] >= b[5]) else b
            bucket = [a[0] + b[0], a[1], low[2], low[3], high[4], high[5]]
            self._drop((set(_reps(a)) | set(_reps(b))) - set(_reps(bucket)))
            merged.append(bucket)
        if len(buckets) % 2:
            merged.append(buckets[-1])
        self._buckets = merged
        self._stride *= 2

    def _drop(self, steps: Iterable[int]) -> None:
        data, protected = self._data, self._protected
        for step in steps:
            if step not in protected:
                data.pop(step, None)


def _reps(bucket: list[Any]) -> tuple[int, int, int]:
    return bucket[1], bucket[2], bucket[4]


def _cap(records: int, budget: int, floor: int, size: int) -> int:
    if size <= 1:
        return records
    return max(floor, min(records, budget // size))
