"""TD109 accumulation-scaling-inconsistent on hand-built timelines."""

from __future__ import annotations

import pytest

from traindoctor.testing import assert_fires, assert_silent, make_timeline, run_rule


def _tl(factors_per_step, events=None):
    steps = {
        s: {"loss.factor": list(fs), "backward.count": len(fs)}
        for s, fs in enumerate(factors_per_step, 1)
    }
    if events is None:
        events = [
            {"kind": "backward_call", "step": 1, "source": "train.py:14", "factor": 0.25},
            {"kind": "backward_call", "step": 1, "source": "train.py:16", "factor": 1.0},
        ]
    return make_timeline(params=["w"], steps=steps, events=events)


def test_fires_when_only_the_first_micro_batch_is_divided():
    # seed 002: `loss = loss / accum` sits in a debug block that runs for the first batch only.
    f = assert_fires("TD109", _tl([[0.25, 1, 1, 1]] + [[1, 1, 1, 1]] * 4))
    assert f.step == 1
    assert f.evidence == {"factors": {"1": 19, "1/4": 1}, "odd_steps": [1], "weight_ratio": 4.0}
    assert f.where.op == "DivBackward0"
    assert f.where.source == "train.py:14"
    assert "only on the first backward pass" in f.cause
    assert "4x" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD109", _tl([[0.25] * 4] * 5))


def test_gradient_accumulation_without_scaling_is_silent():
    assert_silent("TD109", _tl([[1.0] * 8] * 5))


def test_many_distinct_data_dependent_factors_are_silent():
    factors = [[1 / (7 + i), 1 / (9 + i), 1 / (13 + i), 1 / (5 + i)] for i in range(6)]
    assert_silent("TD109", _tl(factors))
    assert_silent("TD109", _tl([[0.5, 0.25, 0.125, 1.0]] * 3))


def test_max_distinct_option():
    assert_fires("TD109", _tl([[0.5, 0.25, 0.125, 1.0]] * 3), max_distinct=4)


def test_scaling_on_some_micro_batches_across_steps():
    f = assert_fires("TD109", _tl([[0.125] * 4, [1.0, 0.125, 0.125, 0.125], [0.125] * 4]))
    assert f.step == 2
    assert f.evidence["odd_steps"] == [2]
    assert f.evidence["weight_ratio"] == 8.0
    assert "2 different loss scales" in f.cause


def test_shorter_last_cycle_is_reported():
    # Documented known false positive: a last, shorter cycle divided by its own length.
    f = assert_fires("TD109", _tl([[0.25] * 4] * 3 + [[1 / 3] * 3]))
    assert f.evidence["odd_steps"] == [4]


def test_no_backward_is_silent():
    assert_silent("TD109", make_timeline(params=["w"]))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_factor_does_not_crash_the_rule(bad):
    # `loss * w` with a Python float w that became inf/nan: LossProbe records w as the factor.
    run_rule("TD109", _tl([[1.0, bad], [1.0, 1.0]]))
