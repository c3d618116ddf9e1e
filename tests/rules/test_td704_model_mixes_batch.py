"""TD704 model-mixes-batch on hand-built timelines (the experiment itself:
tests/experiments/test_recipe_scenarios.py)."""

from __future__ import annotations

import pytest

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def event(verdict: str, **facts) -> dict:
    return {
        "kind": "experiment",
        "step": 20,
        "name": "batch_independence",
        "verdict": verdict,
        "loss_fn": "cross_entropy",
        "source": "train.py:30",
        "seconds": 0.01,
        "facts": {"example": 8, "batch": 16, "examples_mixed_in": 8, **facts},
    }


def test_mixing_names_the_op_and_its_line():
    e = event("mixes", op="ViewBackward0", op_source="model.py:14")
    f = assert_fires("TD704", make_timeline(events=[e]))
    assert "mixes the examples" in f.title and "ViewBackward0" in f.title
    assert f.where.op == "ViewBackward0" and f.where.source == "model.py:14"


def test_independent_is_info():
    f = assert_fires("TD704", make_timeline(events=[event("independent", examples_mixed_in=0)]))
    assert "independent" in f.title and "15 other inputs" in f.title


def test_silent_when_not_measured():
    e = {"kind": "experiment", "step": 2, "name": "batch_independence", "verdict": "not_measured"}
    assert_silent("TD704", make_timeline(events=[e]))


DECISIVE = {
    "output_shape": [16, 3],
    "loss_input_shape": [16, 3],
    "other_tensor_inputs": 0,
    "mixes_in_eval": True,
}


@pytest.mark.parametrize(
    "op", ["MkldnnRnnLayerBackward0", "LogSoftmaxBackward0", "ViewBackward0", "TransposeBackward0"]
)
def test_a_warning_where_the_mix_cannot_be_a_design(op):
    f = assert_fires("TD704", make_timeline(events=[event("mixes", op=op, **DECISIVE)]))
    assert f.severity.value == "warning"


@pytest.mark.parametrize(
    "facts, why",
    [
        ({"op": "MmBackward0"}, "a matmul"),  # a graph network's A @ X, an in-batch similarity
        ({"op": "MeanBackward1"}, "a reduction"),  # a hand-written batch normalization
        ({"op": "ViewBackward0", "other_tensor_inputs": 1}, "other tensor inputs"),
        ({"op": "ViewBackward0", "output_shape": [16, 16]}, "not one prediction"),  # (B, B)
        ({"op": "MkldnnRnnLayerBackward0", "output_shape": [16, 4, 3]}, "sequence-first"),
        ({"op": "ViewBackward0", "loss_input_shape": [64, 3]}, "the loss reads"),
        ({"op": None}, "could not be named"),
        ({"op": "ViewBackward0", "output_shape": None}, "not recorded"),
        ({"op": "ViewBackward0", "mixes_in_eval": False}, "independent (a hand-written"),
        ({"op": "ViewBackward0", "mixes_in_eval": None}, "was not measured"),
    ],
)
def test_info_where_the_mix_may_be_the_design(facts, why):
    e = event("mixes", **{**DECISIVE, **facts})
    f = assert_fires("TD704", make_timeline(events=[e]))
    assert f.severity.value == "info" and why in f.cause, f.cause
