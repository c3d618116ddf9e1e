"""TD702 cannot-overfit-one-batch on hand-built timelines (the experiment itself:
tests/experiments/test_recipe_scenarios.py)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, run_rule


def overfit_event(verdict: str, curves: dict, ratios: dict, fit=None) -> dict:
    return {
        "kind": "experiment",
        "step": 20,
        "name": "overfit_one_batch",
        "verdict": verdict,
        "loss_fn": "mse_loss",
        "source": "train.py:30",
        "seconds": 0.4,
        "steps": sum(len(c) - 1 for c in curves.values()),
        "curves": curves,
        "facts": {
            "ratios": ratios,
            "floor": 0.0,
            "fit_at_lr_scale": fit,
            "optimizer": "Adam",
            "lr": [0.01],
            "k": 50,
        },
    }


def test_fails_at_every_lr_says_the_bug_is_not_the_lr():
    curves = {k: [2.0] + [1.1] * 50 for k in ("lr x1", "lr x10", "lr x0.1")}
    e = overfit_event("failed", curves, {k: 0.55 for k in curves})
    f = assert_fires("TD702", make_timeline(events=[e], last_step=20))
    assert "cannot overfit one batch at any lr" in f.title
    assert "not in the data or the learning rate" in f.cause
    assert f.evidence["curves"] == curves and f.evidence["cost"].startswith("150 steps")


def test_fits_names_the_lr_that_did():
    curves = {"lr x1": [1.4, 0.9], "lr x10": [1.4, 0.01]}
    e = overfit_event("ok", curves, {"lr x1": 0.6, "lr x10": 0.007}, fit=10.0)
    f = assert_fires("TD702", make_timeline(events=[e], last_step=20))
    assert "overfits one batch" in f.title and "lr x10" in f.title
    assert "too low" in f.cause


def test_partial_and_not_measured():
    curves = {k: [1.0, 0.7] for k in ("lr x1", "lr x10", "lr x0.1")}
    f = assert_fires(
        "TD702", make_timeline(events=[overfit_event("partial", curves, {"lr x1": 0.3})])
    )
    assert "only partly" in f.title
    e = {
        "kind": "experiment",
        "step": 3,
        "name": "overfit_one_batch",
        "verdict": "not_measured",
        "reason": "no torch optimizer holds the model's params",
    }
    (f,) = run_rule("TD702", make_timeline(events=[e], last_step=3))
    assert "not measured" in f.title


def test_silent_without_the_experiment():
    assert_silent("TD702", make_timeline(last_step=20))


def test_lr_too_high_does_not_blame_the_model():
    curves = {"lr x1": [0.9, 5.0, 300.0], "lr x10": [0.9, 1e9], "lr x0.1": [0.9, 0.6, 0.47]}
    e = overfit_event("lr_too_high", curves, {"lr x1": 1.0, "lr x10": 1.0, "lr x0.1": 0.51})
    f = assert_fires("TD702", make_timeline(events=[e], last_step=20))
    assert "blows up" in f.title and "not established" in f.cause
    assert "lower the learning rate" in f.fix


def _zeroed(verdict: str) -> dict:
    return {
        "kind": "experiment",
        "step": 20,
        "name": "input_independent",
        "verdict": verdict,
        "facts": {"real_loss": 1.1, "zeroed_loss": 1.1},
    }


def test_a_warning_only_when_no_better_than_a_constant():
    """Cannot fit, and zeroed inputs do as well (or the output ignores them): decisive. A model
    that still uses its input (too small, regularized) stays info, as does an unknown floor."""
    curves = {k: [2.0] + [1.1] * 50 for k in ("lr x1", "lr x10", "lr x0.1")}
    failed = overfit_event("failed", curves, {k: 0.55 for k in curves})
    for zeroed in ("inconclusive", "ignores_input"):
        f = assert_fires("TD702", make_timeline(events=[failed, _zeroed(zeroed)], last_step=20))
        assert f.severity.value == "warning", zeroed
        assert "constant prediction" in f.cause or "input is zeroed" in f.cause
    f = assert_fires("TD702", make_timeline(events=[failed, _zeroed("ok")], last_step=20))
    assert f.severity.value == "info"
    f = assert_fires("TD702", make_timeline(events=[failed], last_step=20))
    assert f.severity.value == "info"  # no baseline measured
    unknown = {**failed, "facts": {**failed["facts"], "floor": None}}
    f = assert_fires(
        "TD702", make_timeline(events=[unknown, _zeroed("inconclusive")], last_step=20)
    )
    assert f.severity.value == "info"
    several = {**failed, "facts": {**failed["facts"], "several_losses": True}}
    f = assert_fires(
        "TD702", make_timeline(events=[several, _zeroed("inconclusive")], last_step=20)
    )
    assert f.severity.value == "info"
    # A warmup: the run's lr rose to 10x the captured one.
    warm = make_timeline(
        steps={1: {"optim.lr": {"opt0/group0": 0.001}}, 9: {"optim.lr": {"opt0/group0": 0.1}}},
        events=[failed, _zeroed("inconclusive")],
        last_step=20,
    )
    assert assert_fires("TD702", warm).severity.value == "info"
    steady = make_timeline(
        steps={1: {"optim.lr": {"opt0/group0": 0.01}}, 9: {"optim.lr": {"opt0/group0": 0.01}}},
        events=[failed, _zeroed("inconclusive")],
        last_step=20,
    )
    assert assert_fires("TD702", steady).severity.value == "warning"
    for verdict in ("ok", "partial", "lr_too_high"):
        e = overfit_event(verdict, curves, {k: 0.3 for k in curves}, fit=1.0)
        f = assert_fires("TD702", make_timeline(events=[e, _zeroed("inconclusive")], last_step=20))
        assert f.severity.value == "info", verdict
