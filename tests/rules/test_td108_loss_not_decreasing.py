"""TD108 loss-not-decreasing on hand-built timelines."""

from __future__ import annotations

import pytest

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]


def _flat(n):
    """A loss that wiggles around 2.0 without going down."""
    return [2.0 + 0.01 * ((i * 7) % 5) for i in range(n)]


def _tl(values, ratio=1e-8, lr=1e-7, per_step=1):
    steps = {}
    for i, v in enumerate(values, 1):
        steps[i] = {
            "loss.train": [v] * per_step,
            "optim.lr": {"opt0/group0": lr},
        }
        if i % 10 == 0 or i <= 3:
            steps[i]["params.norm"] = dict.fromkeys(PARAMS, 4.0)
            steps[i]["params.update"] = dict.fromkeys(PARAMS, 4.0 * ratio)
    events = [{"kind": "log_call", "step": 1, "validating": False, "source": "train.py:88"}]
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_fires_for_a_learning_rate_far_too_small():
    f = assert_fires("TD108", _tl(_flat(60)))
    assert f.severity is Severity.WARNING
    assert f.step == 1
    assert f.where.source == "train.py:88"
    assert f.evidence["steps"] == 60
    assert f.evidence["first_median"] == pytest.approx(2.02)
    assert f.evidence["last_median"] == pytest.approx(2.02)
    assert f.evidence["relative_change"] == pytest.approx(0.0)
    assert f.evidence["median_update_ratio"] == pytest.approx(1e-8)
    assert f.confidence == 0.7
    assert "updates are tiny" in f.cause and "lr=1e-07" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD108", _tl([2.0 * 0.97**i for i in range(60)], ratio=1e-3, lr=0.05))


def test_before_min_steps_is_silent():
    assert_silent("TD108", _tl(_flat(49)))
    assert_fires("TD108", _tl(_flat(50)))
    assert_fires("TD108", _tl(_flat(20)), min_steps=20)


def test_bit_constant_loss_is_left_to_td107():
    assert_silent("TD108", _tl([2.0] * 80))


def test_drop_just_above_the_threshold_is_silent():
    # first fifth at 2.0, last fifth 6% lower
    values = [2.0 + 0.001 * (i % 3) for i in range(30)] + [
        1.88 + 0.001 * (i % 3) for i in range(30)
    ]
    assert_silent("TD108", _tl(values))
    assert_fires("TD108", _tl(values), min_rel_drop=0.10)


def test_micro_batches_are_averaged_per_step():
    f = assert_fires("TD108", _tl(_flat(60), per_step=4))
    assert f.evidence["steps"] == 60


@pytest.mark.parametrize(
    ("ratio", "words"),
    [(0.5, "updates are huge"), (1e-3, "normal rate"), (0.0, "do not change at all")],
)
def test_cause_follows_the_measured_update_size(ratio, words):
    f = assert_fires("TD108", _tl(_flat(60), ratio=ratio, lr=0.1))
    assert words in f.cause


def test_no_update_measured():
    tl = make_timeline(
        params=PARAMS, steps={i: {"loss.train": [v]} for i, v in enumerate(_flat(60), 1)}
    )
    f = assert_fires("TD108", tl)
    assert f.evidence["median_update_ratio"] is None
    assert "no parameter update was measured" in f.cause
