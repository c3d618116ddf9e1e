"""TD111 stale-optimizer-params on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = {
    "body.weight": {"shape": [8, 4]},
    "body.bias": {"shape": [8]},
    "head.weight": {"shape": [3, 8]},
    "head.bias": {"shape": [3]},
}
OLD_HEAD = [
    {"shape": [3, 8], "requires_grad": True, "had_grad": False},
    {"shape": [3], "requires_grad": True, "had_grad": False},
]


def _tl(unnamed=OLD_HEAD, replaced=("head.weight", "head.bias"), observed=True, ended=False):
    opt = optimizer_facts(["body.weight", "body.bias"], unnamed=unnamed, created_at="train.py:7")
    steps = {}
    for s in (1, 2, 3):
        steps[s] = {}
        if observed:
            steps[s]["grads.observed"] = 1
        if replaced:
            steps[s]["params.replaced"] = list(replaced)
    return make_timeline(params=PARAMS, optimizers=[opt], steps=steps, ended=ended)


def test_fires_when_the_head_was_replaced_after_the_optimizer():
    f = assert_fires("TD111", _tl())
    assert f.step == 1
    assert f.where.module == "head"
    assert f.where.params == ("head.bias", "head.weight")
    assert f.where.source == "train.py:7"
    assert f.evidence == {
        "stale_tensors": 2,
        "shapes": [[3, 8], [3]],
        "replaced_params": ["head.bias", "head.weight"],
        "new_params_not_in_optimizer": 2,
    }
    assert "2 tensors (27 values)" in f.title
    assert "replaced after the optimizer was built" in f.cause


def test_healthy_twin_is_silent():
    opt = optimizer_facts(list(PARAMS))
    steps = {s: {"grads.observed": 1} for s in (1, 2, 3)}
    assert_silent("TD111", make_timeline(params=PARAMS, optimizers=[opt], steps=steps))


def test_learnable_tensor_outside_the_model_with_grad_is_silent():
    weight = [{"shape": [2], "requires_grad": True, "had_grad": True}]
    assert_silent("TD111", _tl(unnamed=weight, replaced=()))


def test_frozen_foreign_tensor_is_silent():
    frozen = [{"shape": [3], "requires_grad": False, "had_grad": False}]
    assert_silent("TD111", _tl(unnamed=frozen, replaced=()))


def test_waits_for_an_observation_while_running():
    assert_silent("TD111", _tl(observed=False))
    f = assert_fires("TD111", _tl(observed=False, ended=True))
    assert f.step == 1


def test_optimizer_built_for_another_model_object():
    other = [{"shape": [5, 5], "requires_grad": True, "had_grad": False}]
    f = assert_fires("TD111", _tl(unnamed=other, replaced=()))
    assert f.where.params == ()
    assert f.where.module is None
    assert "another model object" in f.cause


def test_head_recreated_with_another_number_of_classes():
    # model.head = nn.Linear(8, 5) after the optimizer was built for a 3-class head.
    params = {**PARAMS, "head.weight": {"shape": [5, 8]}, "head.bias": {"shape": [5]}}
    opt = optimizer_facts(["body.weight", "body.bias"], unnamed=OLD_HEAD)
    steps = {
        s: {"grads.observed": 1, "params.replaced": ["head.weight", "head.bias"]} for s in (1, 2)
    }
    f = assert_fires("TD111", make_timeline(params=params, optimizers=[opt], steps=steps))
    assert f.where.params == ("head.bias", "head.weight")
    assert "new sizes" in f.cause
    g = assert_fires("TD103", make_timeline(params=params, optimizers=[opt], steps=steps))
    assert "replaced after the optimizer was built" in g.cause


def test_silent_when_held_only_after_the_last_observed_step():
    """Zero-code mode, a teacher trained first, then a student with its own optimizer: the
    student's tensors were added to the layout at step 101, after the last step whose
    gradients were looked at (80): that they never get a gradient was not measured."""
    opt = optimizer_facts(list(PARAMS), unnamed=OLD_HEAD)
    steps = {s: {"grads.observed": 1} for s in (1, 2, 3, 80)}
    events = [
        {"kind": "optimizer_layout", "step": 1, "held": sorted(PARAMS), "stale": 0},
        {"kind": "optimizer_layout", "step": 101, "held": sorted(PARAMS), "stale": 2},
    ]
    tl = make_timeline(params=PARAMS, optimizers=[opt], steps=steps, events=events)
    assert_silent("TD111", tl)
    steps[120] = {"grads.observed": 1}  # looked at while held: reported
    tl = make_timeline(params=PARAMS, optimizers=[opt], steps=steps, events=events)
    assert assert_fires("TD111", tl).step == 101


def test_silent_for_tensors_never_looked_at_after_their_optimizer_stepped():
    # Reptile's inner loop: an optimizer built per task over a deepcopy, stepped 5 times
    # between two sampled steps; its tensors were never looked at while they trained.
    unseen = [dict(u, looked=False) for u in OLD_HEAD]
    assert_silent("TD111", _tl(unnamed=unseen, replaced=()))
    seen = [dict(u, looked=True) for u in OLD_HEAD]
    assert_fires("TD111", _tl(unnamed=seen, replaced=()))
