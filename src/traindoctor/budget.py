"""Overhead governor: measures the time traindoctor spends in its hooks against step time and
sets the sampling interval of the moderate/expensive probes to stay within budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Budget:
    """Splits traindoctor's cost into the floor (what every step costs) and the extra of a
    sampled step, both measured, and picks the interval that keeps their sum in budget:

        floor share + extra / (interval * user step time) <= budget

    A fixed window that doubles the interval whenever it holds a sampled step ratchets up to
    the maximum once the interval exceeds the window; solving for the interval does not.
    When the floor alone exceeds the budget, sampling falls to `max_interval`, doubling the
    interval at most once per decision on the way.
    """

    def __init__(
        self,
        budget: float = 0.03,
        structural_steps: int = 3,
        interval: int = 10,
        min_interval: int = 5,
        max_interval: int = 1000,
        window: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0 < budget <= 1:
            raise ValueError(
                f"budget must be a fraction in (0, 1], e.g. 0.03 for 3% (got {budget})"
            )
        self.budget = budget
        self.structural_steps = structural_steps
        self.interval = interval
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.window = window
        # False keeps the interval fixed: reproducible schedules for the bundled scenarios,
        # whose verdicts must not depend on how busy the machine is.
        self.adaptive = True
        self._clock = clock
        self._spent = 0.0
        self._step_spent = 0.0
        self._last_end = clock()
        self._reset_window()
        self._extra: float | None = None  # measured extra cost of a sampled step (seconds)
        self.floor_share: float | None = None  # last measured floor, share of user step time
        self.history: list[tuple[int, float, int]] = []  # (step, overhead ratio, interval)

    def sampled(self, step: int) -> bool:
        return step <= self.structural_steps or step % self.interval == 0

    def spend(self, seconds: float) -> None:
        self._spent += seconds
        self._step_spent += seconds

    @property
    def spent(self) -> float:
        return self._spent

    def step_end(self, step: int) -> None:
        now = self._clock()
        wall, self._last_end = now - self._last_end, now
        spent, self._step_spent = self._step_spent, 0.0
        if not self.adaptive:
            return
        if step <= self.structural_steps:
            # Structural steps are deliberately thorough; start measuring after them.
            self._reset_window()
            return
        self._wall += wall
        self._total += spent
        if self.sampled(step):
            self._sampled_spent += spent
            self._sampled_n += 1
        else:
            self._plain_spent += spent
            self._plain_n += 1
        if self._plain_n < self.window:
            return
        self._decide(step)
        self._reset_window()

    def _decide(self, step: int) -> None:
        steps = self._plain_n + self._sampled_n
        user_step = max((self._wall - self._total) / steps, 1e-9)
        floor = self._plain_spent / self._plain_n
        if self._sampled_n:
            extra = max(self._sampled_spent / self._sampled_n - floor, 0.0)
            self._extra = extra if self._extra is None else 0.5 * (self._extra + extra)
        self.floor_share = floor / user_step
        available = self.budget - self.floor_share
        if self._extra is None:
            interval = self.interval  # no sampled step measured yet: keep the schedule
        elif available <= 0:
            interval = self.max_interval
        else:
            interval = math.ceil(self._extra / (available * user_step) - 1e-9)
        # Widen at most twofold per decision: a change in the model a few steps later (a head
        # replaced, layers unfrozen) still meets a sampled step, on a toy model whose floor
        # alone exceeds the budget too. Narrowing is immediate.
        interval = min(interval, 2 * self.interval)
        self.interval = min(self.max_interval, max(self.min_interval, interval))
        self.history.append(
            (step, self._total / max(self._wall - self._total, 1e-9), self.interval)
        )

    def _reset_window(self) -> None:
        self._wall = 0.0
        self._total = 0.0
        self._plain_spent = 0.0
        self._plain_n = 0
        self._sampled_spent = 0.0
        self._sampled_n = 0
