"""TD705 experiments-not-run on hand-built timelines (end to end:
tests/experiments/test_isolation.py)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def test_skipped_says_why():
    e = {
        "kind": "experiment",
        "step": 3,
        "name": "skipped",
        "verdict": "not_measured",
        "reason": "the loss is custom code",
    }
    f = assert_fires("TD705", make_timeline(events=[e]))
    assert "custom code" in f.title


def test_an_experiment_error_is_reported():
    e = {
        "kind": "experiment",
        "step": 3,
        "name": "overfit_one_batch",
        "verdict": "error",
        "reason": "RuntimeError: boom",
    }
    f = assert_fires("TD705", make_timeline(events=[e]))
    assert "overfit_one_batch" in f.title and "boom" in f.title


def test_silent_when_the_experiments_ran():
    e = {"kind": "experiment", "step": 3, "name": "init_loss", "verdict": "ok", "facts": {}}
    assert_silent("TD705", make_timeline(events=[e]))
