"""TD110 nothing-trainable on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = {"backbone.weight": {"shape": [8, 4]}, "head.weight": {"shape": [2, 8]}}


def test_fires_when_every_param_is_frozen():
    tl = make_timeline(params=PARAMS, frozen=PARAMS)
    f = assert_fires("TD110", tl)
    assert f.step == 1
    assert f.where.module == "<model>"
    assert f.where.source == "train.py:10"
    assert f.evidence == {"params": 2, "values": 48, "trainable": 0}
    assert f.title == "all 2 params (48 values) of `Net` have requires_grad=False"


def test_healthy_twin_is_silent():
    assert_silent("TD110", make_timeline(params=PARAMS))


def test_partially_frozen_model_is_silent():
    assert_silent("TD110", make_timeline(params=PARAMS, frozen=["backbone.weight"]))


def test_trainable_tensor_held_only_by_the_optimizer_is_silent():
    opt = optimizer_facts(
        list(PARAMS), unnamed=[{"shape": [1], "requires_grad": True, "had_grad": True}]
    )
    assert_silent("TD110", make_timeline(params=PARAMS, frozen=PARAMS, optimizers=[opt]))


def test_model_without_parameters():
    tl = make_timeline(params={}, optimizers=[optimizer_facts([])])
    f = assert_fires("TD110", tl)
    assert "no parameters at all" in f.title


def test_nothing_attached_is_left_to_the_doctor():
    # A timeline without a `params` fact means nothing was watched; the Doctor (and
    # `traindoctor report --rediagnose`) skip the rules then. On its own, TD110 fires.
    f = assert_fires("TD110", make_timeline(ended=True))
    assert "no parameters at all" in f.title
