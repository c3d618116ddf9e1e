"""Overhead governor: measures the time traindoctor spends in its hooks against step time and
widens the sampling interval of the moderate/expensive probes to stay within budget."""

from __future__ import annotations

import time


class Budget:
    def __init__(
        self,
        budget: float = 0.03,
        structural_steps: int = 3,
        interval: int = 10,
        min_interval: int = 5,
        max_interval: int = 1000,
        window: int = 20,
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
        self._spent = 0.0
        self._window_spent = 0.0
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self.history: list[tuple[int, float, int]] = []  # (step, overhead ratio, interval)

    def sampled(self, step: int) -> bool:
        return step <= self.structural_steps or step % self.interval == 0

    def spend(self, seconds: float) -> None:
        self._spent += seconds
        self._window_spent += seconds

    @property
    def spent(self) -> float:
        return self._spent

    def step_end(self, step: int) -> None:
        if not self.adaptive:
            return
        if step <= self.structural_steps:
            # Structural steps are deliberately thorough; start the first window after them.
            self._reset_window()
            return
        self._window_steps += 1
        if self._window_steps < self.window:
            return
        elapsed = time.perf_counter() - self._window_start
        ratio = self._window_spent / max(elapsed - self._window_spent, 1e-9)
        if ratio > self.budget:
            self.interval = min(self.max_interval, self.interval * 2)
        elif ratio < self.budget / 4:
            self.interval = max(self.min_interval, self.interval // 2)
        self.history.append((step, ratio, self.interval))
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_spent = 0.0
        self._window_start = time.perf_counter()
        self._window_steps = 0
