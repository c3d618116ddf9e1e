"""TD105 optimizer-never-steps on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

EVENTS = [
    {"kind": "backward_call", "step": 1, "source": "train.py:20", "factor": 1.0},
    {"kind": "optimizer_step", "step": 1, "source": "train.py:23"},
]


def _tl(counts, stepped=(), skipped=()):
    """counts: {step: backward passes}; stepped: steps whose optimizer.step() ran."""
    steps = {s: {"backward.count": c} for s, c in counts.items()}
    for s in stepped:
        steps.setdefault(s, {})["optim.step"] = 1
    for s in skipped:
        steps.setdefault(s, {})["amp.skipped"] = 1
    return make_timeline(params=["w"], steps=steps, events=EVENTS)


def test_fires_when_step_stops_after_the_first_batch():
    # The step sits in a debug block: it runs once, then every later backward piles up in step 2.
    f = assert_fires("TD105", _tl({1: 1, 2: 20}, stepped=[1]))
    assert f.step == 2
    assert f.where.source == "train.py:23"
    assert f.evidence == {
        "optimizer_steps": 1,
        "backward_passes": 21,
        "backward_since_last_step": 20,
        "backward_per_step_before": 1,
    }
    assert "the last at step 1" in f.title and "20 backward passes" in f.title


def test_fires_when_step_is_never_called():
    f = assert_fires("TD105", _tl({1: 12}))
    assert f.step == 1
    assert f.evidence["optimizer_steps"] == 0
    assert f.evidence["backward_since_last_step"] == 12
    assert f.where.source == "train.py:20"
    assert "never called" in f.title


def test_healthy_twin_is_silent():
    assert_silent("TD105", _tl(dict.fromkeys(range(1, 31), 1), stepped=range(1, 31)))


def test_gradient_accumulation_of_eight_is_silent():
    counts = dict.fromkeys(range(1, 11), 8)
    assert_silent("TD105", _tl(counts, stepped=range(1, 11)))
    # ... also in the middle of an accumulation cycle, and one cycle late.
    assert_silent("TD105", _tl({**counts, 11: 7}, stepped=range(1, 11)))
    assert_silent("TD105", _tl({**counts, 11: 31}, stepped=range(1, 11)))
    assert_fires("TD105", _tl({**counts, 11: 32}, stepped=range(1, 11)))


def test_below_min_backward_is_silent():
    assert_silent("TD105", _tl({1: 7}))
    assert_silent("TD105", _tl({1: 7}), min_backward=8)
    assert_fires("TD105", _tl({1: 7}), min_backward=4)


def test_steps_skipped_by_grad_scaler_count_as_steps():
    counts = dict.fromkeys(range(1, 13), 1)
    assert_silent("TD105", _tl(counts, stepped=range(4, 13), skipped=range(1, 4)))


def test_no_backward_is_silent():
    assert_silent("TD105", make_timeline(params=["w"]))


def _no_optimizer_tl(forward_ran: bool):
    # td.watch(model) without an optimizer: every backward piles up in step 1.
    signals = {"backward.count": 40}
    if forward_ran:
        signals["data.inputs"] = {"in0": {"dtype": "float32", "shape": [16, 10], "float": True}}
    events = [{"kind": "backward_call", "step": 1, "source": "train.py:17", "factor": 1.0}]
    return make_timeline(params=["w"], steps={1: signals}, events=events, optimizers=[])


def test_watched_copy_without_optimizer_says_what_was_measured():
    # td.watch(copy_of_model) with no optimizer, the loop trains another model: "there is no
    # torch optimizer" would be wrong. The watched model ran no forward: say so.
    f = assert_fires("TD105", _no_optimizer_tl(forward_ran=False))
    assert f.severity is Severity.WARNING
    assert "ran no forward pass" in f.title and "not the one trained" in f.title
    assert "no torch optimizer" not in f.title + f.cause
    assert "td.watch(model, optimizer)" in f.fix


def test_watched_model_without_optimizer_or_update_is_an_error():
    f = assert_fires("TD105", _no_optimizer_tl(forward_ran=True))
    assert f.severity is Severity.ERROR
    assert "no optimizer was given" in f.title
    assert "no torch optimizer" not in f.title + f.cause


def _idle_tl(fed: int, **use: object) -> object:
    """Step 1 stepped, then 20 backward passes; the 8th and 16th measured (idle_backward)."""
    steps = {1: {"backward.count": 1, "optim.step": 1}, 2: {"backward.count": 20}}
    idle = [
        {
            "kind": "idle_backward",
            "step": 2,
            "backward_since_step": n,
            "fed": fed,
            "trained": 4,
            **use,
        }
        for n in (8, 16)
    ]
    return make_timeline(params=["w"], steps=steps, events=[*EVENTS, *idle])


def test_backward_passes_that_feed_no_watched_param_are_an_info():
    # A later phase trains another model (a student updated by hand): not the watched one's bug.
    f = assert_fires("TD105", _idle_tl(fed=0))
    assert f.severity is Severity.INFO
    assert f.evidence["watched_params_fed"] == 0
    assert f.evidence["measured_at_backward"] == [8, 16]


def test_backward_passes_that_feed_the_watched_params_stay_an_error():
    f = assert_fires("TD105", _idle_tl(fed=4))
    assert f.severity is Severity.ERROR


def test_backward_passes_of_a_gradient_evaluation_are_an_info():
    # FGSM after training (eval mode, the input requires grad), a Fisher estimate (eval mode).
    for use in ({"training": False, "input_grads": 1}, {"training": False, "input_grads": 0}):
        f = assert_fires("TD105", _idle_tl(fed=4, **use))
        assert f.severity is Severity.INFO, use
        assert "evaluation" in f.title
    # Saliency maps in train mode: the input's gradient is what the passes compute.
    f = assert_fires("TD105", _idle_tl(fed=4, training=True, input_grads=2))
    assert f.severity is Severity.INFO


def test_backward_passes_in_training_mode_on_params_only_stay_an_error():
    f = assert_fires("TD105", _idle_tl(fed=4, training=True, input_grads=0))
    assert f.severity is Severity.ERROR
