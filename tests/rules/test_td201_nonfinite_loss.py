"""TD201 nonfinite-loss on hand-built timelines (the events the numerics probe's autopsy writes)."""

from __future__ import annotations

from tests.rules._nonfinite import ACT_EVENT, LOSS_EVENT, PARAMS, nonfinite_tl
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def test_td201_names_the_op_and_line_of_the_loss():
    f = assert_fires("TD201", nonfinite_tl([LOSS_EVENT]))
    assert f.step == 5
    assert f.where.op == "log" and f.where.source == "train.py:33"
    assert "finite input" in f.cause and "replayed model outputs were all finite" in f.cause
    assert f.evidence["first_nonfinite_step"] == 5


def test_td201_silent_without_a_loss_event():
    assert_silent("TD201", nonfinite_tl([ACT_EVENT]))
    assert_silent("TD201", nonfinite_tl([], bad_steps=()))


def _with_losses(events, losses, bad=7):
    steps = {s: {"numerics.checked": {"loss": int(s != bad)}} for s in range(1, 9)}
    steps[bad]["numerics.nonfinite"] = ["loss"]
    for step, value in losses.items():
        steps[step]["loss.backward"] = [value]
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_td201_an_overflow_after_a_climbing_loss_names_the_divergence():
    # PyTorch's custom-Function polynomial tutorial with the backward's grad_output dropped
    # (k2-fsa/k2#341): the summed squared error climbs 462 -> 1.1e29 in 24 steps, then `pow`
    # overflows. The fix is the divergence, not a log-space loss or a guarded division.
    pow_event = dict(LOSS_EVENT, step=7, loss="inf", op="pow")
    pow_event["culprits"] = [{"op": "pow", "node": "PowBackward0", "fraction": 0.48}]
    tl = _with_losses(
        [pow_event], {1: 462.0, 2: 480.0, 3: 900.0, 4: 3e3, 5: 2e4, 6: 5e4, 7: float("inf")}
    )
    f = assert_fires("TD201", tl)
    assert "climbed from 462 at step 1 to 5e+04 at step 6" in f.cause
    assert "divergence is the cause" in f.cause and "log space" not in f.fix
    assert f.evidence["loss_rise_before"] == (1, 462.0, 6, 5e4)


def test_td201_a_steady_loss_before_keeps_the_loss_code_cause():
    event = dict(LOSS_EVENT, step=7)
    tl = _with_losses([event], {1: 2.3, 2: 2.2, 3: 2.1, 4: 2.0, 5: 1.9, 6: 1.9, 7: float("nan")})
    f = assert_fires("TD201", tl)
    assert "climbed" not in f.cause and "log space" in f.fix
    assert f.evidence["loss_rise_before"] is None
