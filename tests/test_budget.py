"""The overhead governor measures the floor and the extra cost of a sampled step, and picks
the sampling interval that keeps their sum within the budget."""

from __future__ import annotations

import pytest

from traindoctor.budget import Budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(budget: Budget, clock: FakeClock, steps: int, user: float, floor: float, extra: float):
    """Steps of `user` seconds of training plus traindoctor's `floor`, and `extra` more on
    the steps the budget samples."""
    for step in range(1, steps + 1):
        cost = floor + (extra if budget.sampled(step) else 0.0)
        budget.spend(cost)
        clock.now += user + cost
        budget.step_end(step)


@pytest.mark.parametrize(
    ("floor", "extra", "expected"),
    [
        (0.0001, 0.003, 15),  # 1% floor leaves 0.2 ms a step: 3 ms every 15 steps
        (0.0, 0.003, 10),  # 3% of a 10 ms step is 0.3 ms: 3 ms every 10 steps
        (0.0002, 0.0004, 5),  # 2% floor, 0.4 ms extra -> 4, held at the minimum of 5
    ],
)
def test_interval_solves_floor_plus_sampled_extra_within_budget(floor, extra, expected):
    clock = FakeClock()
    b = Budget(0.03, window=20, clock=clock)
    _run(b, clock, 400, user=0.010, floor=floor, extra=extra)
    assert b.interval == expected
    assert b.floor_share == pytest.approx(floor / 0.010, rel=1e-6)
    assert (floor + extra / b.interval) / 0.010 <= 0.03 + 1e-9  # the schedule holds the budget


def test_floor_over_budget_samples_at_the_maximum_interval_and_recovers():
    clock = FakeClock()
    b = Budget(0.03, window=20, clock=clock)
    _run(b, clock, 400, user=0.010, floor=0.0004, extra=0.002)  # 4% floor: over budget
    assert b.interval == b.max_interval
    assert b.floor_share == pytest.approx(0.04)
    # the floor drops (a probe retired): sampling comes back without waiting for a sample
    for step in range(401, 441):
        b.spend(0.00005)
        clock.now += 0.010
        b.step_end(step)
    assert b.interval == 9  # 2 ms extra / (3% - 0.5% floor) of 9.95 ms user steps = 8.05


def test_the_interval_widens_at_most_twofold_per_decision():
    clock = FakeClock()
    b = Budget(0.03, window=20, clock=clock)
    seen = []
    for step in range(1, 200):
        b.spend(0.001)  # a floor of 10%: over budget
        clock.now += 0.011
        b.step_end(step)
        seen.append(b.interval)
    widened = [b for a, b in zip(seen, seen[1:]) if b != a]
    assert widened[:4] == [20, 40, 80, 160]


def test_a_long_interval_does_not_ratchet_up():
    """The old governor doubled the interval on every window holding a sampled step, so an
    interval longer than the window could only grow."""
    clock = FakeClock()
    b = Budget(0.03, window=20, interval=80, clock=clock)
    _run(b, clock, 2000, user=0.010, floor=0.0001, extra=0.004)
    assert b.interval == 20  # 4 ms / (2% of 10 ms)


def test_structural_steps_are_always_sampled_and_fixed_schedules_do_not_move():
    clock = FakeClock()
    b = Budget(0.03, window=5, clock=clock)
    b.adaptive = False
    _run(b, clock, 3 + 10, user=0.002, floor=0.001, extra=0.0)
    assert b.interval == 10
    assert [s for s in range(1, 31) if b.sampled(s)] == [1, 2, 3, 10, 20, 30]


def test_budget_must_be_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        Budget(3)
