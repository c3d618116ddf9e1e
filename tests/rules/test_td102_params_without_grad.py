"""TD102 params-without-grad on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias", "aux.weight", "aux.bias"]


def _calls(**over):
    base = {
        "enc": {"calls": 1, "grad_enabled": True, "output_requires_grad": True, "source": "m.py:5"},
        "head": {
            "calls": 1,
            "grad_enabled": True,
            "output_requires_grad": True,
            "source": "m.py:6",
        },
        "aux": {"calls": 1, "grad_enabled": True, "output_requires_grad": True, "source": "m.py:7"},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _tl(none_per_step, calls=None, ended=False, **extra):
    steps = {}
    for i, none in enumerate(none_per_step, 1):
        steps[i] = {"grads.none": none, "grads.observed": 1}
        if i == 1 and calls is not False:
            steps[i]["forward.calls"] = calls or _calls()
    for step, sigs in extra.pop("more", {}).items():
        steps.setdefault(step, {}).update(sigs)
    return make_timeline(params=PARAMS, steps=steps, ended=ended, **extra)


AUX = ["aux.bias", "aux.weight"]


def test_fires_for_module_left_out_of_the_loss():
    f = assert_fires("TD102", _tl([AUX, AUX, AUX]))
    assert f.step == 1
    assert f.where.module == "aux"
    assert f.where.params == ("aux.bias", "aux.weight")
    assert f.where.source == "m.py:7"
    assert f.evidence["params_without_grad"] == 2
    assert f.evidence["trainable_params"] == 6
    assert f.evidence["groups"] == ["aux"]
    assert f.evidence["observed_steps"] == [1, 2, 3]
    assert "2 of 6" in f.title and "aux.*" in f.title
    assert "left out of the loss" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD102", _tl([[], [], []]))


def test_param_that_gets_a_grad_at_a_later_step_is_silent():
    # Conditional computation: aux gets no grad on steps 1-2, then one on step 10.
    assert_silent("TD102", _tl([AUX, AUX, AUX, []]))


def test_partial_overlap_reports_only_the_always_missing():
    f = assert_fires("TD102", _tl([AUX + ["head.bias"], AUX, AUX]))
    assert f.where.params == ("aux.bias", "aux.weight")


def test_one_observation_waits_while_running():
    assert_silent("TD102", _tl([AUX]))


def test_one_observation_is_enough_once_the_run_ended():
    f = assert_fires("TD102", _tl([AUX], ended=True))
    assert f.evidence["observed_steps"] == [1]


def test_min_observations_option():
    assert_silent("TD102", _tl([AUX, AUX]), min_observations=3)
    assert_fires("TD102", _tl([AUX, AUX, AUX]), min_observations=3)


def test_cause_zero_grad_between_backward_and_step():
    more = {1: {"grads.cleared": PARAMS}}
    tl = _tl(
        [PARAMS, PARAMS],
        more=more,
        events=[{"kind": "optimizer_step", "step": 1, "source": "train.py:30"}],
    )
    f = assert_fires("TD102", tl)
    assert "zero_grad()" in f.cause
    assert f.where.source == "train.py:30"
    assert f.evidence["params_without_grad"] == 6


def test_cause_module_under_no_grad():
    calls = _calls(aux={"calls": 1, "grad_enabled": False, "output_requires_grad": False})
    f = assert_fires("TD102", _tl([AUX, AUX], calls=calls))
    assert "torch.no_grad()" in f.cause


def test_cause_module_never_called():
    f = assert_fires("TD102", _tl([AUX, AUX], calls=_calls(aux=None)))
    assert "never called" in f.cause
    assert f.where.module == "aux"


def test_cause_output_without_graph():
    calls = _calls(aux={"calls": 1, "grad_enabled": True, "output_requires_grad": False})
    f = assert_fires("TD102", _tl([AUX, AUX], calls=calls))
    assert ".data" in f.cause


def test_single_param_names_its_module():
    f = assert_fires("TD102", _tl([["head.bias"], ["head.bias"]]))
    assert f.where.module == "head"
    assert f.where.params == ("head.bias",)
    assert "`head.bias`" in f.title


def test_cause_loss_not_differentiable():
    tl = _tl(
        [PARAMS, PARAMS],
        events=[{"kind": "loss_not_differentiable", "step": 1, "source": "train.py:9"}],
    )
    f = assert_fires("TD102", tl)
    assert "TD101" in f.cause
    assert f.where.source == "train.py:9"


# -- a branch that gets its gradient on a later step (the `grads_seen_later` fact) -----------
def test_td102_a_branch_that_got_a_gradient_on_a_later_step_is_not_reported():
    params = ["body.weight", "aux.weight"]
    steps = {
        s: {"grads.none": ["aux.weight"], "grads.norm": {"body.weight": 1.0}, "backward.count": 1}
        for s in (1, 2, 3)
    }
    tl = make_timeline(params=params, steps=steps, ended=True)
    assert_fires("TD102", tl)
    tl.facts["grads_seen_later"] = {"aux.weight": 4}
    assert_silent("TD102", tl)


def test_module_the_forward_mentions_but_never_ran_is_info():
    """PatrickHua/SimSiam's projector built with 3 layers and run with 2 (`proj_layers: 2`,
    `self.layer2` under an `if`): dead weight, not a training failure, said at info. A layer
    the forward never mentions (defined and forgotten) stays an error."""
    mentioned = {"facts": {"modules_unrun_referenced": ["aux"]}}
    f = assert_fires("TD102", _tl([AUX, AUX], calls=_calls(aux=None), **mentioned))
    assert f.severity.value == "info" and "never called" in f.cause
    f = assert_fires("TD102", _tl([AUX, AUX], calls=_calls(aux=None)))
    assert f.severity.value == "error"


def test_nothing_called_gets_a_grad_is_still_an_error():
    everything = sorted(PARAMS)
    calls = {"other": {"calls": 1, "grad_enabled": True, "output_requires_grad": True}}
    mentioned = {"facts": {"modules_unrun_referenced": ["enc", "head", "aux"]}}
    f = assert_fires("TD102", _tl([everything, everything], calls=calls, **mentioned))
    assert f.severity.value == "error"


def test_module_called_but_left_out_of_the_loss_is_still_an_error():
    f = assert_fires("TD102", _tl([AUX, AUX, AUX]))
    assert f.severity.value == "error"


LATE = ["net.bias", "net.weight"]


def _two_phases(late_none, late_backward=0, ended=True, late_steps=(5, 6, 10)):
    """Phase 1: opt0 over the first model, a backward every step. Phase 2 (from step 5): a new
    model and opt1 over it (lukasruff/Deep-SVDD-PyTorch after its autoencoder pretraining)."""
    params = PARAMS + LATE
    steps = {
        s: {"grads.none": [], "grads.stepped": PARAMS, "backward.count": 1, "grads.observed": 1}
        for s in (1, 2, 3)
    }
    steps[1]["forward.calls"] = _calls()
    for s in late_steps:
        steps[s] = {"grads.none": late_none, "grads.stepped": LATE, "grads.observed": 1}
        if late_backward:
            steps[s]["backward.count"] = late_backward
    opt1 = {
        "class": "Adam",
        "groups": [{"id": "opt1/group0", "lr": 1e-4, "initial_lr": 1e-4, "weight_decay": 0.0}],
        "created_at": "train.py:28",
        "watched_at": None,
    }
    opt1["groups"][0].update(params=LATE, unnamed=[])
    return make_timeline(
        params=params,
        optimizers=[optimizer_facts(PARAMS), opt1],
        steps=steps,
        events=[
            {"kind": "optimizer_first_step", "step": 1, "optimizer": 0, "source": "train.py:12"},
            {"kind": "optimizer_first_step", "step": 5, "optimizer": 1, "source": "train.py:31"},
        ],
        ended=ended,
    )


def test_later_optimizer_that_never_had_a_backward_fires():
    """pyod#711 / Deep-SVDD: `loss.backward()` commented out in the second phase; its Adam
    steps on None gradients. The first phase's observations say nothing of those params."""
    f = assert_fires("TD102", _two_phases(LATE))
    assert f.step == 5 and f.where.params == tuple(LATE)
    assert f.where.source == "train.py:31"
    assert f.evidence["optimizer"] == "opt1" and f.evidence["backward_passes"] == 0
    assert "no backward() ran" in f.cause and "train.py:28" in f.cause
    assert f.severity.value == "error"


def test_later_optimizer_healthy_twins_are_silent():
    # the later phase has its backward
    assert_silent("TD102", _two_phases([], late_backward=1))
    # a backward in its steps that does not reach them: not this judgement (no measured
    # forward calls in a later phase to name a cause)
    assert_silent("TD102", _two_phases(LATE, late_backward=1))
    # one of the params it steps has a gradient: the step is no no-op
    assert_silent("TD102", _two_phases(["net.bias"]))
    # one observed step of a run still going: not enough
    assert_silent("TD102", _two_phases(LATE, ended=False, late_steps=(5,)))
    # a gradient seen later on an unsampled step
    tl = _two_phases(LATE)
    tl.facts["grads_seen_later"] = {"net.bias": 7}
    assert_silent("TD102", tl)


def test_cause_no_backward_in_the_whole_run():
    """A one-phase loop with `loss.backward()` commented out: steps taken, no backward recorded,
    no param ever had a gradient. The cause is the missing backward, not a detached output."""
    step = [{"kind": "optimizer_step", "step": 1, "source": "train.py:30"}]
    everything = sorted(PARAMS)
    f = assert_fires("TD102", _tl([everything, everything], events=step))
    assert "no backward() ran" in f.cause and f.where.source == "train.py:30"
    # with a backward recorded, the module's own cause stays
    backward = {"more": {1: {"backward.count": 1}, 2: {"backward.count": 1}}}
    f = assert_fires("TD102", _tl([AUX, AUX], events=step, **backward))
    assert "no backward() ran" not in f.cause and "left out of the loss" in f.cause
