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


def _with_values(factors_per_step, values_per_step):
    steps = {
        s: {"loss.factor": list(fs), "loss.backward": list(vs), "backward.count": len(fs)}
        for s, (fs, vs) in enumerate(zip(factors_per_step, values_per_step), 1)
    }
    return make_timeline(params=["w"], steps=steps, events=[])


def test_count_normalizer_with_a_shorter_last_batch_is_silent():
    # `loss_sum / len(y)`: the last batch sums 4 samples, not 16, and is divided by 4. The
    # values before the factor (sums) follow the count: a normalizer, not a scale.
    factors = [[1 / 16]] * 6 + [[1 / 4]] + [[1 / 16]] * 6 + [[1 / 4]]
    values = [[16 * 1.1]] * 6 + [[4 * 1.05]] + [[16 * 0.9]] * 6 + [[4 * 0.95]]
    assert_silent("TD109", _with_values(factors, values))


def test_scaling_a_mean_on_one_micro_batch_still_fires_with_values():
    # The odd micro-batch's loss before the factor is on the common scale: it was scaled.
    factors = [[0.25, 1, 1, 1]] + [[1, 1, 1, 1]] * 4
    values = [[1.2, 1.1, 1.15, 1.05]] + [[1.0, 0.95, 1.02, 0.98]] * 4
    f = assert_fires("TD109", _with_values(factors, values))
    assert f.evidence["odd_steps"] == [1]


def test_two_losses_at_two_call_sites_are_not_micro_batches():
    # pix2pix/CycleGAN: `loss_D = (fake + real) * 0.5` and `loss_G` are backpropagated from two
    # lines every step; their factors differ by design.
    steps = {
        s: {"loss.factor": [0.5, 1.0], "loss.site": [0, 1], "backward.count": 2}
        for s in range(1, 41)
    }
    events = [
        {"kind": "backward_site", "step": 1, "site": 0, "source": "gan.py:30"},
        {"kind": "backward_site", "step": 1, "site": 1, "source": "gan.py:41"},
    ]
    assert_silent("TD109", make_timeline(params=["w"], steps=steps, events=events))


def test_inconsistent_scale_at_one_of_two_call_sites_names_that_site():
    steps = {
        s: {"loss.factor": [0.5, 0.25 if s == 1 else 1.0], "loss.site": [0, 1]}
        for s in range(1, 21)
    }
    events = [
        {"kind": "backward_site", "step": 1, "site": 0, "source": "gan.py:30"},
        {"kind": "backward_site", "step": 1, "site": 1, "source": "gan.py:41"},
    ]
    f = assert_fires("TD109", make_timeline(params=["w"], steps=steps, events=events))
    assert f.where.source == "gan.py:41"
    assert f.evidence["factors"] == {"1": 19, "1/4": 1}
