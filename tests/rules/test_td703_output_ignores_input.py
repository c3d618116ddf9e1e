"""TD703 output-ignores-input on hand-built timelines (the experiment itself:
tests/experiments/test_recipe_scenarios.py)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def event(verdict: str, real: float, zero: float, change: float = 0.5) -> dict:
    return {
        "kind": "experiment",
        "step": 20,
        "name": "input_independent",
        "verdict": verdict,
        "loss_fn": "mse_loss",
        "source": "train.py:30",
        "steps": 50,
        "seconds": 0.2,
        "curves": {"real inputs": [1.0, real], "zeroed inputs": [1.0, zero]},
        "facts": {
            "output_change": change,
            "output_scale": 1.0,
            "real_loss": real,
            "zeroed_loss": zero,
        },
    }


def test_ignores_input():
    f = assert_fires("TD703", make_timeline(events=[event("ignores_input", 1.0, 1.0, 0.0)]))
    assert "ignores the input" in f.title and f.evidence["curves"]["zeroed inputs"]


def test_no_better_than_zeros():
    f = assert_fires("TD703", make_timeline(events=[event("no_better_than_zeros", 0.9, 0.9)]))
    assert "no better" in f.title


def test_uses_its_input():
    f = assert_fires("TD703", make_timeline(events=[event("ok", 0.05, 1.3)]))
    assert "uses its input" in f.title and "0.05" in f.title


def test_silent_when_not_measured():
    assert_silent("TD703", make_timeline(last_step=20))
    e = {"kind": "experiment", "step": 2, "name": "input_independent", "verdict": "not_measured"}
    assert_silent("TD703", make_timeline(events=[e]))
