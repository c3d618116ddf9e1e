"""TD706 lr-probe on hand-built timelines (the probe itself, on real runs:
tests/experiments/test_recipe_scenarios.py and tests/experiments/test_lr_probe.py)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

NAN = float("nan")


def probe(verdict: str, curves: dict, better=None, **facts) -> dict:
    return {
        "kind": "experiment",
        "step": 20,
        "name": "lr_probe",
        "verdict": verdict,
        "loss_fn": "cross_entropy",
        "source": "train.py:30",
        "seconds": 0.3,
        "steps": 0,
        "curves": curves,
        "facts": {
            "ratios": {},
            "blew_up": [],
            "fits": [],
            "better_lr_scale": better,
            "floor": 0.0,
            "k": 50,
            "lr": [0.5],
            "optimizer": "SGD",
            **facts,
        },
    }


def run_loss(values) -> dict:
    return {i: {"loss.backward": v} for i, v in enumerate(values, start=1)}


def test_too_high_says_the_lr_is_the_cause_and_by_how_much():
    curves = {"lr x0.1": [2.3] + [1.1] * 49 + [0.01], "lr x1": [2.3, 9.0, NAN]}
    tl = make_timeline(
        steps=run_loss([2.3, 3.0, 40.0, float("inf")]),
        events=[probe("too_high", curves, better=0.1, blew_up=["lr x1"])],
    )
    f = assert_fires("TD706", tl)
    assert f.title.startswith("The lr is the cause (too high): on one batch, at lr x0.1")
    assert "2.3 -> 0.01 in 50 steps" in f.title and "2.3 -> nan at step 2" in f.title
    assert "the run's own loss: 2.3 -> inf at step 3" in f.title
    assert "lower the lr about 10x (to 0.05)" in f.fix
    assert f.evidence["curves"] == curves and f.evidence["run_stalled"] is True


STUCK = run_loss([2.3, 2.31, 2.29, 2.3, 2.28, 2.3, 2.29, 2.3, 2.3, 2.29])


def test_silent_on_a_run_that_learns():
    """One batch blowing up at the lr while the run's loss falls: not 'the cause'."""
    curves = {"lr x0.1": [0.77, 0.0004], "lr x1": [0.77, 11.2, 1.56]}
    e = probe("too_high", curves, better=0.1, blew_up=["lr x1"])
    assert_silent(
        "TD706", make_timeline(steps=run_loss([0.97 - i / 50 for i in range(20)]), events=[e])
    )
    assert_silent("TD706", make_timeline(events=[e]))  # no loss recorded: no symptom known


def test_too_low_and_not_the_lr():
    curves = {"lr x1": [2.3, 2.29], "lr x10": [2.3, 0.1]}
    f = assert_fires(
        "TD706", make_timeline(steps=STUCK, events=[probe("too_low", curves, better=10.0)])
    )
    assert f.title.startswith("The lr is the cause (too low)") and "raise the lr" in f.fix
    warmup = {**STUCK, 30: {"optim.lr": {"opt0/group0": 5.0}}}
    e = probe("too_low", curves, better=10.0)
    assert_silent("TD706", make_timeline(steps=warmup, events=[e]))  # captured at a warmup
    curves = {k: [2.0, 1.1] for k in ("lr x0.1", "lr x1", "lr x10")}
    f = assert_fires("TD706", make_timeline(steps=STUCK, events=[probe("not_the_lr", curves)]))
    assert f.title.startswith("The lr is not the cause: no lr fits one batch")
    assert "look at the loss" in f.fix


def test_fits_as_written_only_when_a_long_run_stalled():
    curves = {"lr x1": [2.3, 0.01]}
    e = probe("fits_as_written", curves)
    # A short run (check's 20 steps), or one whose loss fell: nothing to conclude.
    assert_silent("TD706", make_timeline(steps=run_loss([2.3] * 20), events=[e]))
    assert_silent(
        "TD706", make_timeline(steps=run_loss([2.3 - i / 40 for i in range(60)]), events=[e])
    )
    f = assert_fires("TD706", make_timeline(steps=run_loss([2.3] * 60), events=[e]))
    assert f.title.startswith("The lr can fit one batch") and "look at the" in f.title


def test_silent_when_inconclusive_or_missing():
    assert_silent("TD706", make_timeline(events=[probe("inconclusive", {"lr x1": [1.0, 0.6]})]))
    assert_silent("TD706", make_timeline(events=[probe("not_measured", {})]))
    assert_silent("TD706", make_timeline())
