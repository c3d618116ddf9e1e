"""TD103 params-not-in-optimizer on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

BACKBONE = ["backbone.0.weight", "backbone.0.bias"]
HEAD = ["head.weight", "head.bias"]
SHAPES = {
    "backbone.0.weight": {"shape": [8, 4]},
    "backbone.0.bias": {"shape": [8]},
    "head.weight": {"shape": [3, 8]},
    "head.bias": {"shape": [3]},
}


def _tl(held, *, frozen=(), unnamed=(), steps=None, optimizers=...):
    opts = [optimizer_facts(held, unnamed=unnamed)] if optimizers is ... else optimizers
    return make_timeline(params=SHAPES, frozen=frozen, optimizers=opts, steps=steps or {})


def test_fires_when_optimizer_built_from_backbone_only():
    norms = {n: 0.5 for n in BACKBONE + HEAD}
    f = assert_fires("TD103", _tl(BACKBONE, steps={1: {"grads.norm": norms}}))
    assert f.step == 1
    assert f.where.module == "head"
    assert f.where.params == ("head.bias", "head.weight")
    assert f.where.source == "train.py:10"
    assert f.evidence["params_not_in_optimizer"] == 2
    assert f.evidence["values"] == 3 * 8 + 3
    assert f.evidence["receive_gradients"] == 2
    assert f.evidence["optimizer_groups"] == "SGD opt0/group0: 2 tensors"
    assert "27 values" in f.title and "head.*" in f.title
    assert "built from part of the model" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD103", _tl(BACKBONE + HEAD))


def test_frozen_params_outside_the_optimizer_are_silent():
    assert_silent("TD103", _tl(BACKBONE, frozen=HEAD))


def test_params_split_over_groups_are_silent():
    opts = [optimizer_facts(BACKBONE, HEAD, lr=[0.1, 0.01])]
    assert_silent("TD103", _tl(None, optimizers=opts))


def test_no_optimizer_facts_is_silent():
    assert_silent("TD103", _tl(None, optimizers=None))


def test_replaced_module_points_to_td111():
    unnamed = [
        {"shape": [3, 8], "requires_grad": True, "had_grad": False},
        {"shape": [3], "requires_grad": True, "had_grad": False},
    ]
    tl = _tl(BACKBONE, unnamed=unnamed, steps={2: {"params.replaced": HEAD}})
    f = assert_fires("TD103", tl)
    assert "replaced after the optimizer was built" in f.cause
    assert f.evidence["receive_gradients"] == 0
    assert "receive gradients" not in f.title


# -- copies kept out of the optimizer on purpose (DQN targets): neither TD103 nor TD102 -------
Q = ["q.fc.weight", "q.fc.bias"]

TARGET = ["target.fc.weight", "target.fc.bias"]


def _dqn(steps=3, *, copies=None, norms=None, grads_target=False, calls=None):
    """q trained; target in no optimizer, without gradient unless `grads_target`."""
    out = {}
    for s in range(1, steps + 1):
        grads = {n: 0.5 for n in Q}
        if grads_target:
            grads.update({n: 0.1 for n in TARGET})
        out[s] = {
            "grads.norm": grads,
            "grads.none": [] if grads_target else list(TARGET),
            "backward.count": 1,
            "forward.calls": calls
            or {
                "q.fc": {"calls": 1, "grad_enabled": True, "output_requires_grad": True},
                "target.fc": {"calls": 1, "grad_enabled": True, "output_requires_grad": True},
            },
        }
        if norms is not None:
            out[s]["copies.norm"] = {n: norms[s - 1] for n in TARGET}
    facts = {"copies": {"params": copies or {}, "modules": {}}}
    return make_timeline(
        params=Q + TARGET, optimizers=[optimizer_facts(Q)], steps=out, facts=facts, ended=True
    )


def test_target_copied_from_the_trained_weights_is_neither_td103_nor_td102():
    tl = _dqn(copies=dict(zip(TARGET, Q)))
    assert_silent("TD103", tl)
    assert_silent("TD102", tl)


def test_target_changed_without_optimizer_is_neither_td103_nor_td102():
    tl = _dqn(norms=[1.0, 1.0, 1.25])  # a hard sync between steps 2 and 3
    assert_silent("TD103", tl)
    assert_silent("TD102", tl)


def test_reference_run_only_under_no_grad_is_not_reported():
    calls = {
        "q.fc": {"calls": 1, "grad_enabled": True, "output_requires_grad": True},
        "target.fc": {"calls": 1, "grad_enabled": False, "output_requires_grad": False},
    }
    tl = _dqn(calls=calls)
    assert_silent("TD103", tl)
    assert_silent("TD102", tl)


def test_a_module_left_out_that_is_no_copy_is_still_td103_and_td102():
    tl = _dqn(norms=[1.0, 1.0, 1.0])
    assert assert_fires("TD103", tl).where.module == "target.fc"
    assert assert_fires("TD102", tl).where.module == "target"


def test_a_copy_that_receives_gradients_is_still_td103():
    tl = _dqn(copies=dict(zip(TARGET, Q)), grads_target=True)
    f = assert_fires("TD103", tl)
    assert f.evidence["receive_gradients"] == 2


def test_members_of_a_vmap_ensemble_are_neither_td103_nor_td102():
    """torch.func ensemble: the optimizer trains stack_module_state's stacked copies (not the
    model's params; they get gradients) and the watched members never run a forward."""
    stacked = [
        {"shape": [4, *SHAPES[n]["shape"]], "requires_grad": True, "had_grad": True}
        for n in BACKBONE + HEAD
    ]
    steps = {s: {"forward.calls": {}, "grads.observed": 1} for s in (1, 2, 3)}
    tl = _tl([], unnamed=stacked, steps=steps)
    assert_silent("TD103", tl)
    assert_silent("TD102", tl)
    # The same members called in the forward (or stacked copies that never got a gradient:
    # a stale optimizer) are still reported.
    called = {n.rsplit(".", 1)[0]: {"calls": 1, "grad_enabled": True} for n in BACKBONE + HEAD}
    steps = {s: {"forward.calls": called, "grads.observed": 1} for s in (1, 2, 3)}
    assert_fires("TD103", _tl([], unnamed=stacked, steps=steps))
    stale = [{**u, "had_grad": False} for u in stacked]
    steps = {s: {"forward.calls": {}, "grads.observed": 1} for s in (1, 2, 3)}
    assert_fires("TD103", _tl([], unnamed=stale, steps=steps))


def test_params_a_hand_written_update_trained_are_not_missing():
    # PyTorch's "What is torch.nn really?": raw tensors trained by `w -= w.grad * lr` under
    # no_grad first, then the next models with optim.SGD, in one script: the raw tensors were
    # trained, by hand (handsteps.py), not left out of an optimizer.
    norms = {n: 0.5 for n in BACKBONE + HEAD}
    hand = {
        1: {"grads.norm": norms, "optim.hand_step": 1, "grads.stepped": BACKBONE},
        2: {"grads.norm": norms},
    }
    assert_silent("TD103", _tl(HEAD, steps=hand))
    # The same timeline without the hand-written update: the backbone's grads are never applied.
    hand[1] = {"grads.norm": norms}
    assert assert_fires("TD103", _tl(HEAD, steps=hand)).where.module == "backbone.0"
