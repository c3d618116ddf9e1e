"""TD704 model-mixes-batch on hand-built timelines (the experiment itself:
tests/experiments/test_recipe_scenarios.py)."""

from __future__ import annotations

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
