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


def test_params_trained_by_hand_beside_a_later_optimizer_are_judged():
    # PyTorch's nn_tutorial trains raw tensors by hand (w -= w.grad * lr), then later models
    # with optim.SGD in the same script: the raw tensors are in no optimizer, yet trained; with
    # their grad.zero_() removed they carry every gradient (they blew up to NaN by step 46).
    opt = optimizer_facts(["fc.weight", "fc.bias"])
    carried = {"out.weight": 0.7}
    steps = {s: {"grads.carried": carried} for s in (2, 3, 4)}
    for s in (1, 2, 3, 4):
        steps.setdefault(s, {}).update({"optim.hand_step": 1, "grads.stepped": ["out.weight"]})
    events = [
        {"kind": "hand_step", "step": 1, "source": None},
        {"kind": "backward_call", "step": 1, "source": "nn_tutorial.py:234"},
        {"kind": "optimizer_step", "step": 9, "source": "nn_tutorial.py:459"},
    ]
    tl = make_timeline(params=PARAMS, optimizers=[opt], steps=steps, events=events)
    f = assert_fires("TD106", tl)
    assert f.where.params == ("out.weight",) and f.where.source == "nn_tutorial.py:234"
    assert "hand-written weight updates" in f.cause


# -- a second optimizer, judged on its own cycles (probes/cycles.py) ------------------------------
CRITIC, ACTOR = ["q.weight", "q.bias"], ["pi.weight", "pi.bias"]
TWO = [optimizer_facts(CRITIC), optimizer_facts(ACTOR)]
FIRST = [
    {"kind": "optimizer_first_step", "step": 1, "optimizer": 0, "source": "td3.py:40"},
    {"kind": "optimizer_first_step", "step": 3, "optimizer": 1, "source": "td3.py:45"},
]


def _two(steps):
    return make_timeline(params=CRITIC + ACTOR, optimizers=TWO, steps=steps, events=FIRST)


def test_a_second_optimizer_carrying_over_its_cycles_is_found_at_its_step_line():
    # the sampled steps hold only the critic's steps (zeroed); the actor's cycles carry
    zeroed = dict.fromkeys(CRITIC, 0.0)
    steps = {s: {"grads.carried": zeroed, "grads.stepped": CRITIC} for s in (2, 3, 10, 20)}
    steps[3] = {"grads.carried": {**zeroed, "pi.weight": 0.0, "pi.bias": 0.0}}
    steps[3]["grads.stepped"] = CRITIC + ACTOR  # the actor's first step: its grads were None
    for s in (5, 13, 23):
        steps[s] = {"grads.cycle_carried": {"pi.weight": 0.2 * s, "pi.bias": 0.1}}
    f = assert_fires("TD106", _two(steps))
    assert f.where.params == ("pi.bias", "pi.weight")
    assert f.where.source == "td3.py:45"
    assert f.evidence["observed_steps"] == [5, 13, 23]


def test_a_second_optimizer_zeroed_over_its_cycles_is_silent():
    steps = {s: {"grads.cycle_carried": {"pi.weight": 0.0, "pi.bias": 0.0}} for s in (5, 13, 23)}
    assert_silent("TD106", _two(steps))


def test_a_second_optimizers_params_are_not_judged_on_the_sampled_steps():
    # A head stepped every 2nd step accumulates over two steps of the body: a sampled step
    # finds its grads from the step before, which belong to the same cycle of the head. Its
    # cycles found them zeroed.
    carried = {"q.weight": 0.0, "q.bias": 0.0, "pi.weight": 0.3, "pi.bias": 0.3}
    sampled = {s: {"grads.carried": carried, "grads.stepped": CRITIC + ACTOR} for s in (2, 10, 20)}
    cycles = {s: {"grads.cycle_carried": {"pi.weight": 0.0, "pi.bias": 0.0}} for s in (5, 13, 23)}
    assert_silent("TD106", _two({**sampled, **cycles}))
    # a timeline written before the cycles were measured judges them there, as it did
    assert_fires("TD106", make_timeline(params=CRITIC + ACTOR, optimizers=TWO, steps=sampled))


def test_a_param_dead_at_a_step_is_not_taken_for_zeroed_there():
    # zero_grad() once an epoch; `fc` dies (ReLU, no gradient) after a divergence: it carries
    # nothing and gets nothing at steps 4-5, which says nothing about zeroing. All 3 params
    # carried where they were alive: all are named, not just the one still alive.
    alive = {"fc.weight": 0.0, "fc.bias": 0.0, "out.weight": 2.0}
    carried = [{}, _all(1.0), _all(2.0), {"out.weight": 3.0}, {"out.weight": 4.0}]
    norms = [_all(1.0), _all(2.0), _all(3.0), alive, alive]
    f = assert_fires("TD106", _tl(carried, norms))
    assert f.evidence["params_carrying_grad"] == 3
    # the same zeros with a gradient at step() were zeroed (the 0 is measured): not carried
    f = assert_fires("TD106", _tl(carried, [_all(1.0)] * 5))
    assert f.where.params == ("out.weight",)
