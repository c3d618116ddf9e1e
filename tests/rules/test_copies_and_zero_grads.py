"""TD102/TD103/TD104/TD405 on hand-built timelines: copies kept out of the optimizer on purpose,
zero gradients by construction, and stale copies evaluated in zero-code mode."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import (
    assert_fires,
    assert_silent,
    make_timeline,
    optimizer_facts,
    run_rule,
)

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


def _td104(updates, grads, lr=0.1, facts=None):
    names = list(updates)
    steps = {
        s: {
            "params.update": {n: updates[n] for n in names},
            "grads.norm": grads,
            "optim.lr": {"opt0/group0": lr},
        }
        for s in (1, 2, 3)
    }
    return make_timeline(
        params=names, optimizers=[optimizer_facts(names, lr=lr)], steps=steps, facts=facts
    )


def test_td104_bias_before_batchnorm_is_info_with_bias_false():
    updates = {"conv.weight": 1e-3, "conv.bias": 0.0, "bn.weight": 1e-3, "bn.bias": 1e-3}
    grads = {"conv.weight": 2.0, "conv.bias": 1e-7, "bn.weight": 0.1, "bn.bias": 0.1}
    tl = _td104(updates, grads, facts={"bias_before_norm": {"conv.bias": "bn"}})
    f = assert_fires("TD104", tl)
    assert f.severity is Severity.INFO
    assert f.where.params == ("conv.bias",)
    assert f.evidence["normalized_by"] == {"conv.bias": "bn"}
    assert "bias=False" in f.fix and "`bn`" in f.cause
    # Without the measured norm after it, the same numbers are the float-resolution error.
    f = assert_fires("TD104", _td104(updates, grads))
    assert f.severity is Severity.ERROR


def test_td104_bias_before_batchnorm_with_lr_zero_blames_the_lr():
    updates = {"conv.weight": 0.0, "conv.bias": 0.0}
    grads = {"conv.weight": 2.0, "conv.bias": 1e-7}
    tl = _td104(updates, grads, lr=0.0, facts={"bias_before_norm": {"conv.bias": "bn"}})
    f = assert_fires("TD104", tl)
    assert f.severity is Severity.ERROR
    assert set(f.where.params) == {"conv.weight", "conv.bias"}


def test_td104_exact_zero_gradient_on_part_of_the_model_is_info():
    updates = {"body.weight": 1e-3, "cls_head.weight": 0.0}
    grads = {"body.weight": 1.0, "cls_head.weight": 0.0}
    f = assert_fires("TD104", _td104(updates, grads))
    assert f.severity is Severity.INFO
    assert "batches seen" in f.cause


def _copies_tl(fps, trained, *, steps_called=6, first=11, last=61):
    occasions = [s for s, _ in fps]
    record = {
        "class": "Sequential",
        "of": "<model>",
        "params": 4,
        "copied_params": 4,
        "steps_called": steps_called,
        "first_step": first,
        "last_step": last,
        "occasions": occasions,
        "source": "train.py:35",
    }
    steps = {
        s: {"copies.evaluated": {"Sequential": v, "<trained>": t}}
        for (s, v), t in zip(fps, trained)
    }
    return make_timeline(
        params=["fc.weight"],
        steps=steps,
        facts={"copies": {"params": {}, "modules": {"Sequential": record}}},
        ended=True,
    )


def test_td405_stale_copy_evaluated_each_epoch_in_zero_code_mode():
    fps = [(s, 7.17) for s in (11, 21, 31, 41, 51, 61)]
    f = assert_fires("TD405", _copies_tl(fps, [7.1, 7.2, 7.3, 7.4, 7.5, 7.6]))
    assert f.where.source == "train.py:35"
    assert f.step == 31
    assert f.evidence["evaluations"] == 6


def test_td405_updated_copy_or_frozen_training_is_silent():
    changing = [(s, 7.0 + s / 100) for s in (11, 21, 31)]
    assert_silent("TD405", _copies_tl(changing, [7.1, 7.2, 7.3]))
    stale = [(s, 7.17) for s in (11, 21, 31)]
    assert_silent("TD405", _copies_tl(stale, [7.1, 7.1, 7.1]))  # nothing trains either


def test_td405_a_copy_run_every_step_is_a_target_not_an_evaluation():
    # A DQN target synced later than the run ends: called in every step, never changing.
    fps = [(s, 7.17) for s in (2, 40, 80)]
    tl = _copies_tl(fps, [7.1, 7.2, 7.3], steps_called=119, first=2, last=120)
    assert not run_rule("TD405", tl)
