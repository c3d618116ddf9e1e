"""The overhead governor widens the sampling interval when traindoctor costs too much."""

from __future__ import annotations

import time

from traindoctor.budget import Budget


def _run(budget: Budget, steps: int, spend: float, step_time: float) -> None:
    for step in range(1, steps + 1):
        budget.spend(spend)
        time.sleep(step_time)
        budget.step_end(step)


def test_interval_widens_when_over_budget_and_narrows_when_far_under():
    b = Budget(0.03, window=5)
    _run(b, 3 + 5, spend=0.001, step_time=0.002)  # "spent" 1 ms of a ~2 ms step: way over
    assert b.interval == 20
    b2 = Budget(0.03, window=5, interval=40)
    _run(b2, 3 + 5, spend=0.0, step_time=0.001)  # nothing spent: far under
    assert b2.interval == 20


def test_structural_steps_are_always_sampled_and_fixed_schedules_do_not_move():
    b = Budget(0.03, window=5)
    b.adaptive = False
    _run(b, 3 + 10, spend=0.001, step_time=0.002)
    assert b.interval == 10
    assert [s for s in range(1, 31) if b.sampled(s)] == [1, 2, 3, 10, 20, 30]
