"""TD208 loss-component-dominates on hand-built timelines."""

from __future__ import annotations

import pytest

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(values, grads, steps=(1, 2, 3)):
    data = {s: {"loss.parts": dict(values), "loss.parts_grad": dict(grads)} for s in steps}
    events = [{"kind": "log_call", "step": 1, "validating": False, "source": "train.py:50"}]
    return make_timeline(params=["w"], steps=data, events=events)


def test_reports_value_and_gradient_shares():
    f = assert_fires(
        "TD208", _tl({"box": 0.85, "cls": 0.7, "dfl": 8.45}, {"box": 0.1, "cls": 0.0, "dfl": 0.9})
    )
    assert f.title.startswith("dfl: 90% of the gradient norm, 84% of the loss value")
    assert f.evidence["parts"]["dfl"]["grad_share"] == pytest.approx(0.9)
    assert f.evidence["parts"]["dfl"]["value_share"] == pytest.approx(0.845)
    assert f.where.source == "train.py:50"
    assert f.evidence["measured_steps"] == [1, 2, 3]


def test_needs_value_and_gradient_dominance():
    # large value, small gradient (a constant offset): silent
    assert_silent("TD208", _tl({"a": 9.0, "b": 0.5, "c": 0.5}, {"a": 0.2, "b": 0.4, "c": 0.4}))
    # large gradient, small value: silent
    assert_silent("TD208", _tl({"a": 0.3, "b": 0.5, "c": 0.5}, {"a": 0.9, "b": 0.05, "c": 0.05}))


def test_balanced_parts_are_silent():
    assert_silent("TD208", _tl({"a": 1.0, "b": 0.8, "c": 0.6}, {"a": 0.4, "b": 0.3, "c": 0.3}))


def test_values_without_gradient_measure_are_silent():
    data = {1: {"loss.parts": {"a": 9.0, "b": 0.1}}}
    assert_silent("TD208", make_timeline(params=["w"], steps=data))
