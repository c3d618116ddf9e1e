"""TD701 loss-at-init-off on hand-built timelines (the experiment itself:
tests/experiments/test_recipe_scenarios.py)."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def init_event(verdict: str, measured: float, expected: float | None = 1.0986, **facts) -> dict:
    f = {"measured": measured, "what": "cross_entropy of the initial weights", **facts}
    if expected is not None:
        f.update(expected=expected, classes=3, per_example_expected=1.0986)
    return {
        "kind": "experiment",
        "step": 20,
        "name": "init_loss",
        "verdict": verdict,
        "loss_fn": "cross_entropy",
        "source": "train.py:12",
        "facts": f,
    }


def test_as_expected_is_reported_as_info_with_what_was_measured():
    f = assert_fires("TD701", make_timeline(events=[init_event("ok", 1.12)], last_step=20))
    assert f.severity is Severity.INFO
    assert "1.12" in f.title and "ln 3" in f.title and "as expected" in f.title
    assert f.evidence["measured"] == 1.12 and f.evidence["expected"] == 1.0986


def test_too_high_says_the_initial_predictions_are_confident():
    f = assert_fires("TD701", make_timeline(events=[init_event("too_high", 14.2)], last_step=20))
    assert "too high" in f.title and "confident" in f.cause
    assert "last layer" in f.fix


def test_a_summed_loss_states_its_expected_sum():
    e = init_event("ok", 35.0, expected=35.15)
    f = assert_fires("TD701", make_timeline(events=[e], last_step=20))
    assert "per example" in f.title


def test_other_losses_are_reported_as_measured():
    e = init_event("measured", 0.7, expected=None)
    e["loss_fn"] = "mse_loss"
    f = assert_fires("TD701", make_timeline(events=[e], last_step=20))
    assert "mse_loss" in f.title


def test_silent_without_the_experiment_or_when_it_failed():
    assert_silent("TD701", make_timeline(last_step=20))
    e = {"kind": "experiment", "step": 20, "name": "init_loss", "verdict": "error", "reason": "x"}
    assert_silent("TD701", make_timeline(events=[e], last_step=20))
