"""TD210 on a loss that is fit to ~0 and stays noisy: the per-step losses of pytorch/vision's
classification reference (resnet18 from scratch, batches of 16, SGD lr 0.02, 6 classes), as
measured under `traindoctor run`. Its lowest 5-step median is 0.001 and its last 0.04: a 38x
ratio of a tiny level, 2% of the starting loss, which was reported as an ERROR "diverges".
"""

from __future__ import annotations

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline, run_rule

# fmt: off
MEASURED = [
    1.855, 1.819, 1.833, 1.647, 0.759, 1.02, 0.451, 0.304, 0.246, 0.975, 0.165, 0.018, 2.294,
    1.011, 2.318, 5.534, 0.659, 3.097, 2.97, 2.469, 0.103, 0.324, 0.728, 1.465, 1.441, 4.763,
    0.201, 0.92, 0.936, 0.466, 0.342, 0.374, 0.026, 0.257, 0.086, 0.017, 0.011, 0.009, 0.001,
    0.001, 0.839, 0.001, 0.343, 0.001, 0.05, 0.233, 0.003, 0.031, 0.005, 0.041, 0.284, 0.0,
    0.041, 0.027,
]
# fmt: on


def _tl(losses):
    steps = {
        i: {"loss.train": [v], "optim.lr": {"opt0/group0": 0.02}, "loss_inputs.observed": [0]}
        for i, v in enumerate(losses, 1)
    }
    return make_timeline(params=["fc.weight"], steps=steps, events=[SUPERVISED_CE])


def test_a_loss_fit_to_zero_that_drifts_a_few_percent_is_no_divergence():
    found = run_rule("TD210", _tl(MEASURED))
    assert [f for f in found if f.evidence["kind"] == "divergence"] == [], found


def test_a_climb_back_to_the_starting_level_is_still_a_divergence():
    # the same start, fit to ~0.005, then back above 2 for the last steps
    losses = MEASURED[:30] + [0.005] * 10 + [2.5, 2.2, 3.0, 2.8, 2.6, 2.4, 3.1, 2.9, 2.7, 2.5]
    f = assert_fires("TD210", _tl(losses))
    assert f.evidence["kind"] == "divergence" and f.severity is Severity.ERROR


def test_a_rise_from_the_floor_by_half_the_start_is_judged():
    # lowest level 0.01, the last steps at 1.2: 0.65x the starting 1.85, a divergence from the
    # lowest level
    losses = [1.85, 1.8, 1.7, 1.2, 0.8, 0.4, 0.2] + [0.01] * 20 + [1.2] * 10
    f = assert_fires("TD210", _tl(losses))
    assert f.evidence["kind"] == "divergence"


def test_a_drift_below_half_the_start_from_a_tiny_floor_is_silent_as_divergence():
    losses = [1.85, 1.8, 1.7, 1.2, 0.8, 0.4, 0.2] + [0.01] * 20 + [0.3] * 10
    assert_silent("TD210", _tl(losses))
