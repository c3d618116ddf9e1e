"""The sampling schedule: planned from counted work (budget.py), moved by step count only."""

from __future__ import annotations

import math

import pytest

from traindoctor.budget import Budget, Work, predicted_sampled_seconds, predicted_step_seconds

TINY = Work(modules=6, tensors=6, elements=2442, activations=2368, flops=8e4)


def test_the_interval_is_planned_from_counted_work_and_never_from_timing():
    def run(clock_speed: float) -> list[int]:
        now = [0.0]

        def clock() -> float:
            return now[0]

        b = Budget(0.03, clock=clock)
        sampled = []
        for step in range(1, 400):
            if b.sampled(step):
                sampled.append(step)
                b.spend(0.01 * clock_speed)
            now[0] += 0.001 * clock_speed
            if step == 1:
                b.plan(TINY)
            b.step_end(step)
        return sampled

    assert run(1.0) == run(100.0)


def test_the_interval_widens_twofold_per_window_toward_its_target():
    b = Budget(0.03, window=20)
    b.plan(TINY)  # tiny: slow
    assert b.target is not None and b.target > 100
    seen, sampled = [], []
    for step in range(1, 4000):
        if b.sampled(step):
            sampled.append(step)
        b.step_end(step)
        seen.append(b.interval)
    doubling = [10]
    while 2 * doubling[-1] < b.target:
        doubling.append(2 * doubling[-1])
    assert sorted(set(seen)) == [*doubling, b.target]
    assert sampled[:12] == [1, 2, 3, 10, 20, 30, 40, 60, 80, 160, 320, 640]


def test_a_large_step_narrows_the_interval_at_once():
    b = Budget(0.03)
    # ~10 GFLOP forward in 10 modules: a sampled step costs little next to the step.
    b.plan(Work(modules=10, tensors=10, elements=4_000_000, activations=1_000_000, flops=1e10))
    assert b.target == b.min_interval == b.interval


def test_the_plan_keeps_predicted_sampling_cost_within_its_share_of_the_budget():
    b = Budget(0.03)
    work = Work(modules=34, tensors=34, elements=1_055_242, activations=525_568, flops=1.35e8)
    target = b.plan(work)
    share = predicted_sampled_seconds(work) / (target * predicted_step_seconds(work))
    assert share <= 0.03 * 0.5 + 1e-9
    assert b.plan(TINY) == target  # planned once


def test_structural_steps_are_always_sampled_and_fixed_schedules_do_not_move():
    b = Budget(0.03, window=5)
    b.adaptive = False
    b.plan(TINY)
    for step in range(1, 40):
        b.step_end(step)
    assert b.interval == 10
    assert [s for s in range(1, 31) if b.sampled(s)] == [1, 2, 3, 10, 20, 30]


def test_without_counted_work_the_interval_stays_at_its_start():
    b = Budget(0.03)
    for step in range(1, 300):
        b.step_end(step)
    assert b.interval == 10


@pytest.mark.parametrize("bad", [3, 0, -0.1, "0.03", True, None])
def test_budget_must_be_a_fraction(bad):
    with pytest.raises(ValueError, match="fraction"):
        Budget(bad)


def test_the_structural_steps_are_paid_back_within_their_cap():
    from traindoctor.budget import (
        HORIZON,
        SAMPLED_SHARE,
        STRUCTURAL_CAP,
        predicted_structural_seconds,
    )

    # Many small modules: the structural steps cost many plain steps.
    work = Work(modules=10_001, tensors=10_000, elements=720_000, activations=160_000, flops=4e6)
    b = Budget(0.03)
    b.max_interval = 10**9  # the bound alone
    target = b.plan(work)
    assert b.predicted is not None
    step, sampled = predicted_step_seconds(work), predicted_sampled_seconds(work)
    share = 0.03 * SAMPLED_SHARE * step
    debt = b.predicted["structural_per_step_s"]
    assert debt == min(predicted_structural_seconds(work) / HORIZON, STRUCTURAL_CAP * share)
    assert debt == STRUCTURAL_CAP * share  # capped: sampling is at most twice as sparse
    assert sampled / target + debt <= share + 1e-12
    # Without the structural steps' debt the same work is sampled more densely.
    assert math.ceil(sampled / share - 1e-9) < target
    # A large model: the structural steps are a small debt, below the cap.
    big = Work(modules=34, tensors=34, elements=1_055_242, activations=525_568, flops=1.35e8)
    b2 = Budget(0.03)
    b2.plan(big)
    assert b2.predicted is not None
    assert b2.predicted["structural_per_step_s"] < STRUCTURAL_CAP * 0.03 * SAMPLED_SHARE * (
        predicted_step_seconds(big)
    )
