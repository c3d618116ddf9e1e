"""TD202 nonfinite-grad on hand-built timelines (the events the numerics probe's autopsy writes)."""

from __future__ import annotations

from tests.rules._nonfinite import GRAD_EVENT, nonfinite_tl
from traindoctor.testing import assert_fires, assert_silent


def test_td202_gradient_made_by_backward():
    f = assert_fires("TD202", nonfinite_tl([GRAD_EVENT]))
    assert f.where.module == "head" and f.where.params == ("head.weight",)
    assert "backward produced" in f.cause


def test_td202_weights_already_nonfinite():
    e = {
        "kind": "nonfinite",
        "step": 3,
        "first": "param",
        "module": "fc1",
        "params": ["fc1.weight", "head.weight"],
    }
    f = assert_fires("TD202", nonfinite_tl([e]))
    assert f.title.startswith("weights of `fc1`")
    assert_silent("TD201", nonfinite_tl([e]))
    assert_silent("TD203", nonfinite_tl([e]))


PARAM_EVENT = {
    "kind": "nonfinite",
    "step": 7,
    "first": "param",
    "module": "fc1",
    "params": ["fc1.weight", "fc1.bias", "head.weight", "head.bias"],
    "loss": "nan",
}


def test_td202_weights_nan_after_a_nan_gradient_is_folded_into_the_first_finding():
    # The NaN gradient of step 6 applied by optimizer.step(): step 7's weights are NaN. One
    # root cause, one finding; the follow-on is its evidence.
    f = assert_fires("TD202", nonfinite_tl([GRAD_EVENT, PARAM_EVENT], bad_steps=(6, 7)))
    assert f.title.startswith("gradient of `head`")
    after = f.evidence["weights_nonfinite_after"]
    assert after["step"] == 7 and after["count"] == 4
    assert "optimizer.step() applied it" in f.cause


def test_td202_weights_nan_after_a_nonfinite_loss_is_left_to_that_finding():
    loss_event = {**GRAD_EVENT, "first": "loss", "step": 5, "module": None, "params": []}
    assert_silent("TD202", nonfinite_tl([loss_event, PARAM_EVENT], bad_steps=(5, 7)))
