"""TD203 nonfinite-activation on hand-built timelines (the events the numerics probe's autopsy
writes)."""

from __future__ import annotations

from tests.rules._nonfinite import ACT_EVENT, nonfinite_tl
from traindoctor.testing import assert_fires, assert_silent


def test_td203_names_the_first_module_and_only_once_per_place():
    later = {**ACT_EVENT, "step": 9}
    f = assert_fires("TD203", nonfinite_tl([ACT_EVENT, later]))
    assert (f.where.module, f.where.op, f.where.source) == ("fc1", "linear", "model.py:20")
    assert f.step == 4
    assert_silent("TD202", nonfinite_tl([ACT_EVENT]))


def test_td203_input_batch():
    f = assert_fires(
        "TD203",
        nonfinite_tl([{"kind": "nonfinite", "step": 2, "first": "input", "module": "<input>"}]),
    )
    assert "input batch" in f.title
