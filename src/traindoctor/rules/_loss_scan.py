"""The training loss as TD108 and TD210 read it, kept between passes (rules/_incremental.py).

A pass folds in the steps settled since the last one: their per-step mean loss, the sorted
first and last windows (a fraction of the run: `width`), a k-th-smallest bound on the lowest
level, TD210's spike candidates (tests that do not depend on the run's length) and the
logged/backward scale ratios.
The newest step, which may still be written, is added for the pass and taken out after it, so
every statistic is the one a fresh pass computes over the whole series.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..timeline import TimelineView
from ._incremental import LowerBound, Reader, SortedWindow, fresh, step_mean
from ._objective_inputs import ObjectiveScan


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values or () if isinstance(v, int | float) and math.isfinite(v)]


def _finite_mean(values: Any) -> float | None:
    """The mean of a step's finite losses (the backward/logged scale check reads only those)."""
    xs = _finite(values)
    return statistics.fmean(xs) if xs else None


@dataclass
class SpikeTests:
    """TD210's spike options (the state is kept per rule options)."""

    spike_factor: float
    robust_z: float
    stand_out: float


@dataclass
class Levels:
    """The judged loss (finite per-step means of one signal) and its running statistics."""

    tests: SpikeTests | None
    width: Callable[[int], int]  # the first and last windows' length on n steps
    # compact (8 bytes a step each): these grow with the run
    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    prefix: SortedWindow = field(default_factory=SortedWindow)  # values[:len(prefix)]
    window: SortedWindow = field(default_factory=SortedWindow)  # values[-len(window):]
    low: LowerBound = field(default_factory=LowerBound)
    candidates: list[tuple[int, float]] = field(default_factory=list)  # (index, median before)
    settled: int = 0  # values[:settled] are folded in; the rest are this pass's newest
    distinct: set[float] = field(default_factory=set)  # up to 3 distinct settled values

    def add(self, step: int, v: float) -> None:
        """Fold in a settled step's loss for good."""
        self.steps.append(step)
        self.values.append(v)
        self.settled = n = len(self.values)
        self.window.add(v)
        while len(self.window) > self.width(n):
            self.window.remove(self.values[n - len(self.window)])
        self.low.add(v)
        if len(self.distinct) < 3:
            self.distinct.add(v)
        cand = self.candidate(n - 1)
        if cand is not None:
            self.candidates.append(cand)

    def head_median(self, w: int) -> float:
        """statistics.median(values[:w])."""
        while len(self.prefix) < w <= self.settled:
            self.prefix.add(self.values[len(self.prefix)])
        if len(self.prefix) == w:
            return self.prefix.median()
        return statistics.median(self.values[:w])  # the first steps of a run, or w shrank

    def tail_median(self, w: int) -> float:
        """statistics.median(values[-w:]): the kept window moved to the end for the pass."""
        n, start = len(self.values), self.settled - len(self.window)
        a = max(0, n - w)
        added = list(self.values[self.settled : n]) + list(
            self.values[a:start] if a < start else []
        )
        removed = list(self.values[start:a]) if a > start else []
        for v in added:
            self.window.add(v)
        for v in removed:
            self.window.remove(v)
        try:
            return self.window.median()
        finally:
            for v in removed:
                self.window.add(v)
            for v in added:
                self.window.remove(v)

    def few_values(self) -> bool:
        """Two distinct values or fewer (a bit-constant loss)."""
        return len(self.distinct.union(self.values[self.settled :])) <= 2

    def bound(self, k: int) -> float | None:
        """A lower bound of the k-th smallest loss (the k-th smallest settled one, or a newer
        loss below it), None when fewer than k are settled."""
        kth = self.low.kth(k)  # within 1% below the k-th smallest: still a lower bound
        if kth is None:
            return None
        return min([kth, *self.values[self.settled :]])

    def spikes(self) -> list[tuple[int, float]]:
        """The spike candidates, the newest steps' included."""
        newest = (self.candidate(i) for i in range(self.settled, len(self.values)))
        return self.candidates + [c for c in newest if c is not None]

    def candidate(self, i: int) -> tuple[int, float] | None:
        """Index `i` passes the spike tests that do not depend on the run's length: `factor`
        times the median of the 10 steps before, `robust_z` MADs and `stand_out` times their
        upper quartile above it."""
        if i < 10 or self.tests is None:
            return None
        window = self.values[i - 10 : i]
        v, t = self.values[i], self.tests
        assert t is not None
        ordered = sorted(window)
        med = (ordered[4] + ordered[5]) / 2  # statistics.median of 10
        if not (med > 0 and v >= t.spike_factor * med):
            return None
        mad = statistics.median([abs(x - med) for x in window])
        q = 0.75 * 9  # _quantile(window, 0.75): linear interpolation
        q75 = ordered[6] + (ordered[7] - ordered[6]) * (q - 6)
        if v >= med + t.robust_z * 1.4826 * mad and v >= t.stand_out * q75:
            return i, med
        return None


class StepMeans:
    """One loss signal's settled steps: (step, mean of its values, mean of its finite values or
    None), 24 bytes a step. A step whose list is empty is no step of either mean."""

    def __init__(self) -> None:
        self.steps, self.means, self.finite = array("q"), array("d"), array("d")  # NaN: None
        self.sums = array("d")  # the sum of the step's finite losses (NaN: none)

    def append(self, step: int, values: Any) -> None:
        mean = step_mean(values)
        if mean is None:
            return
        fin = _finite(values)
        self.steps.append(step)
        self.means.append(mean)
        self.finite.append(statistics.fmean(fin) if fin else math.nan)
        self.sums.append(math.fsum(fin) if fin else math.nan)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> tuple[int, float, float | None]:
        fin = self.finite[i]
        return self.steps[i], self.means[i], None if math.isnan(fin) else fin

    def since(self, i: int) -> list[tuple[int, float, float | None]]:
        return [self[j] for j in range(i, len(self))]

    def sums_since(self, i: int) -> list[float | None]:
        """The finite sums of the steps from index `i`, as since() lists them."""
        return [None if math.isnan(v) else v for v in self.sums[i:]]


def _means(step: int, values: Any) -> list[tuple[int, float, float | None]]:
    """A newest step as StepMeans holds one (none for an empty list)."""
    mean = step_mean(values)
    return [] if mean is None else [(step, mean, _finite_mean(values))]


def tenth(n: int) -> int:
    """TD210's windows: a tenth of the run, at least 3 steps."""
    return max(3, n // 10)


class LossScan:
    """What TD108 and TD210 keep between passes: the per-step loss means of both loss signals
    (settled steps), the judged loss's Levels, and the logged/backward scale ratios."""

    def __init__(self, width: Callable[[int], int] = tenth) -> None:
        self.width = width
        self.train, self.back = Reader("loss.train"), Reader("loss.backward")
        self.readers = (self.train, self.back)
        self.logged, self.backs = StepMeans(), StepMeans()
        self.pending: dict[str, list[tuple[int, float, float | None]]] = {}
        self.pending_sums: dict[str, list[float | None]] = {}  # their finite sums
        self.train_seen = False  # loss.train has a record (even an empty one): it is judged
        self.levels: Levels | None = None
        self.full = 0  # settled steps of the judged loss, non-finite ones included
        self.nonfinite_at = -1  # the index among them of the last non-finite one
        self.source: str | None = None
        self.fed = 0  # settled steps of the judged signal folded into `levels`
        self.ratios = SortedWindow()
        # the same with each step's backward losses summed: a logged loss that adds up the
        # step's micro-batches (the Hugging Face Trainer at gradient accumulation k logs k times
        # the loss of one pass)
        self.sum_ratios = SortedWindow()
        self.fin_logged = 0  # logged steps folded into `ratios`
        self.fin_backs = 0  # backward steps they covered
        self.first_back: tuple[int, float] | None = None  # the first finite backward loss
        self.first_back_sum: float | None = None  # that step's losses summed
        self.backs_scanned = 0
        self.objective = ObjectiveScan()  # what objective() reads, parsed once a record
        self.logged_finite = False  # a settled log has a finite loss

    def read(self, tl: TimelineView, tests: SpikeTests | None = None) -> None:
        if not fresh(self, tl):
            self.__init__(self.width)  # an earlier step was rewritten: read everything again
        for name, reader, settled_list in (
            ("train", self.train, self.logged),
            ("back", self.back, self.backs),
        ):
            settled, pending = reader.read(tl)
            start = len(settled_list)
            for s, v in settled:
                settled_list.append(s, v)
            if name == "train":
                self.train_seen = self.train_seen or bool(settled or pending)
                self.logged_finite = self.logged_finite or any(
                    f is not None for _, _, f in settled_list.since(start)
                )
            self.pending[name] = [m for s, v in pending for m in _means(s, v)]
            self.pending_sums[name] = [
                math.fsum(_finite(v)) if _finite(v) else None
                for _, v in pending
                if step_mean(v) is not None
            ]
        source = "train" if self.train_seen else "back"
        if source != self.source or self.levels is None:
            # the logged loss, once there is one, is judged (as train_loss_values)
            self.source, self.levels, self.fed = source, Levels(tests, self.width), 0
            self.full, self.nonfinite_at = 0, -1
        judged = self.logged if source == "train" else self.backs
        for s, m, _ in judged.since(self.fed):
            if math.isfinite(m):
                self.levels.add(s, m)
            else:
                self.nonfinite_at = self.full
            self.full += 1
        self.fed = len(judged)
        if self.first_back is None:
            first = next(
                (
                    (s, f, t)
                    for (s, _, f), t in zip(
                        self.backs.since(self.backs_scanned),
                        self.backs.sums_since(self.backs_scanned),
                        strict=True,
                    )
                    if f is not None
                ),
                None,
            )
            if first is not None:
                self.first_back, self.first_back_sum = first[:2], first[2]
            self.backs_scanned = len(self.backs)
        self._fold_ratios()

    def _fold_ratios(self) -> None:
        """Fold the logged steps whose backward losses are all settled into `ratios`."""
        done = self.back.done
        while done is not None and self.fin_logged < len(self.logged):
            step, _, v = self.logged[self.fin_logged]
            if step > done:
                break
            self.fin_logged += 1
            if v is None:
                continue  # no finite log: its backward losses count with the next log's
            covered, sums = [], []
            while self.fin_backs < len(self.backs) and self.backs[self.fin_backs][0] <= step:
                f = self.backs[self.fin_backs][2]
                if f is not None:
                    covered.append(f)
                    sums.append(self.backs.sums[self.fin_backs])
                self.fin_backs += 1
            if covered and statistics.fmean(covered) > 0:
                self.ratios.add(v / statistics.fmean(covered))
                self.sum_ratios.add(v / statistics.fmean(sums))

    def _newest(self) -> list[float]:
        """The newest step's mean loss of the judged signal (none or one value)."""
        pending = self.pending["train" if self.source == "train" else "back"]
        return [m for _, m, _ in pending if m is not None]

    def steps_measured(self) -> int:
        """Steps of the judged loss, non-finite ones included."""
        return self.full + len(self._newest())

    def nonfinite_within(self, last: int) -> bool:
        """A non-finite mean loss among the last `last` steps of the judged loss."""
        newest = self._newest()
        if last > 0 and any(not math.isfinite(m) for m in newest[-last:]):
            return True
        return last > len(newest) and self.nonfinite_at >= self.full - (last - len(newest))

    @contextmanager
    def current(self) -> Iterator[Levels]:
        """The Levels with the newest step added for this pass, taken out afterwards."""
        levels = self.levels
        assert levels is not None
        added = [
            (s, m)
            for s, m, _ in self.pending["train" if self.source == "train" else "back"]
            if m is not None and math.isfinite(m)
        ]
        for s, m in added:
            levels.steps.append(s)
            levels.values.append(m)
        try:
            yield levels
        finally:
            for _ in added:
                levels.steps.pop()
                levels.values.pop()

    def before(self, first_step: int) -> float | None:
        """The backward loss of the run's first step, before any update, when the loss judged
        is the logged one and the backward losses are on its scale.

        A logged loss is often a mean over the steps since the last log (the Hugging Face
        Trainer logs every `logging_steps`): when a far too high lr blows the loss up within
        the first steps, the first logged value already holds the blown-up steps (60.9, the
        mean of 3.5 .. 121, for run_clm.py at lr x1000). Same scale: the median over the logs
        of (logged value) / (mean of the backward losses of the steps it covers) within
        [0.8, 1.25], over 3 logs or more; finite losses only. Or the logged value is the sum
        of each step's backward losses (the Trainer adds up its micro-batches' losses at
        gradient accumulation): the same median with the steps' sums, and the first step's
        losses summed is returned."""
        if not self.logged_finite and not any(f is not None for _, _, f in self.pending["train"]):
            return None
        first_back, first_sum = self.first_back, self.first_back_sum
        if first_back is None:
            first = next(
                (
                    (s, f, t)
                    for (s, _, f), t in zip(
                        self.pending["back"], self.pending_sums["back"], strict=True
                    )
                    if f is not None
                ),
                None,
            )
            first_back, first_sum = (first[:2], first[2]) if first is not None else (None, None)
        if first_back is None or first_back[0] > first_step or first_back[1] <= 0:
            return None
        # the logs not folded yet (their backward losses not all settled), and the newest ones
        rest_logged = [
            (s, f)
            for s, _, f in self.logged.since(self.fin_logged) + self.pending["train"]
            if f is not None
        ]
        rest_backs = [
            (s, f, t)
            for (s, _, f), t in zip(
                self.backs.since(self.fin_backs) + self.pending["back"],
                self.backs.sums_since(self.fin_backs) + self.pending_sums["back"],
                strict=True,
            )
            if f is not None
        ]
        added, added_sums, j = [], [], 0
        for step, v in rest_logged:
            covered, sums = [], []
            while j < len(rest_backs) and rest_backs[j][0] <= step:
                covered.append(rest_backs[j][1])
                sums.append(rest_backs[j][2])
                j += 1
            if covered and statistics.fmean(covered) > 0:
                added.append(v / statistics.fmean(covered))
                added_sums.append(v / statistics.fmean(sums))
        for r in added:
            self.ratios.add(r)
        for r in added_sums:
            self.sum_ratios.add(r)
        try:
            if len(self.ratios) < 3:
                return None
            if 0.8 <= self.ratios.median() <= 1.25:
                return first_back[1]
            if first_sum is not None and 0.8 <= self.sum_ratios.median() <= 1.25:
                return first_sum  # one pass a step gives the same ratios: the mean's held
            return None
        finally:
            for r in added:
                self.ratios.remove(r)
            for r in added_sums:
                self.sum_ratios.remove(r)
