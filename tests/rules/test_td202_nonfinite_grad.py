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
