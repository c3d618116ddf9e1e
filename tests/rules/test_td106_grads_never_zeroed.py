"""TD106 grads-never-zeroed on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = ["fc.weight", "fc.bias", "out.weight"]
EVENTS = [{"kind": "optimizer_step", "step": 1, "source": "train.py:33"}]


def _tl(carried_per_step, norms_per_step=None, first_step=1):
    steps = {}
    for i, carried in enumerate(carried_per_step, first_step):
        steps[i] = {"grads.carried": carried, "grads.observed": 1}
    for i, norms in enumerate(norms_per_step or [], first_step):
        steps.setdefault(i, {})["grads.norm"] = norms
    return make_timeline(params=PARAMS, steps=steps, events=EVENTS)


def _all(v):
    return dict.fromkeys(PARAMS, v)


def test_fires_when_grads_are_carried_into_the_next_step():
    norms = [_all(1.0), _all(2.0), _all(3.0)]
    f = assert_fires("TD106", _tl([{}, _all(1.0), _all(2.0)], norms))
    assert f.step == 2
    assert f.where.params == ("fc.bias", "fc.weight", "out.weight")
    assert f.where.source == "train.py:33"
    assert f.evidence["params_carrying_grad"] == 3
    assert f.evidence["observed_steps"] == [2, 3]
    assert f.evidence["grad_norm_steps"] == [1, 3]
    growth = [v for k, v in f.evidence.items() if k.startswith("grad_norm[")]
    assert growth == [[1.0, 3.0]]
    assert f.title.startswith("all trainable params")


def test_healthy_twin_is_silent():
    assert_silent("TD106", _tl([{}, {}, {}, {}]))


def test_grads_zeroed_in_place_are_silent():
    # zero_grad(set_to_none=False) leaves zeros in .grad: measured norm 0, nothing carried.
    assert_silent("TD106", _tl([{}, _all(0.0), _all(0.0)]))


def test_step_one_is_not_an_observation():
    # Whatever is in .grad before the very first backward is not a carried-over gradient.
    assert_silent("TD106", _tl([_all(1.0), _all(1.0)]))


def test_needs_two_observations():
    assert_silent("TD106", _tl([{}, _all(1.0)]))
    assert_fires("TD106", _tl([{}, _all(1.0)]), min_observations=1)


def test_carried_only_once_is_silent():
    assert_silent("TD106", _tl([{}, _all(1.0), {}]))


def test_subset_of_params_is_reported_with_its_share():
    part = {"out.weight": 0.7}
    f = assert_fires("TD106", _tl([{}, part, part]))
    assert f.where.params == ("out.weight",)
    assert f.where.module == "out"
    assert f.title.startswith("1 of 3 trainable params")


def test_params_outside_the_optimizer_are_left_to_td103():
    # zero_grad() never clears params the optimizer does not hold.
    opt = optimizer_facts(["fc.weight", "fc.bias"])
    carried = {"out.weight": 0.7}
    steps = {s: {"grads.carried": carried} for s in (2, 3, 4)}
    assert_silent("TD106", make_timeline(params=PARAMS, optimizers=[opt], steps=steps))
