"""TD201 nonfinite-loss on hand-built timelines (the events the numerics probe's autopsy writes)."""

from __future__ import annotations

from tests.rules._nonfinite import ACT_EVENT, LOSS_EVENT, nonfinite_tl
from traindoctor.testing import assert_fires, assert_silent


def test_td201_names_the_op_and_line_of_the_loss():
    f = assert_fires("TD201", nonfinite_tl([LOSS_EVENT]))
    assert f.step == 5
    assert f.where.op == "log" and f.where.source == "train.py:33"
    assert "finite input" in f.cause and "replayed model outputs were all finite" in f.cause
    assert f.evidence["first_nonfinite_step"] == 5


def test_td201_silent_without_a_loss_event():
    assert_silent("TD201", nonfinite_tl([ACT_EVENT]))
    assert_silent("TD201", nonfinite_tl([], bad_steps=()))
