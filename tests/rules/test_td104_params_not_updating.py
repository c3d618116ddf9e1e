"""TD104 params-not-updating on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = ["fc.weight", "fc.bias"]


def _steps(updates, grads=0.5, lr=0.1):
    """One step per entry of `updates` (||Δθ|| of every param)."""
    lrs = lr if isinstance(lr, list) else [lr] * len(updates)
    out = {}
    for i, (u, rate) in enumerate(zip(updates, lrs), 1):
        out[i] = {
            "params.update": {n: u for n in PARAMS},
            "params.norm": {n: 3.0 for n in PARAMS},
            "grads.norm": {n: grads for n in PARAMS},
            "optim.lr": {"opt0/group0": rate},
            "optim.step": 1,
        }
    return out


def _tl(steps, initial_lr=None, ended=False):
    opt = optimizer_facts(PARAMS, lr=0.0, initial_lr=initial_lr)
    events = [{"kind": "optimizer_step", "step": 1, "source": "train.py:40"}]
    return make_timeline(params=PARAMS, optimizers=[opt], steps=steps, events=events, ended=ended)


def test_fires_when_scheduler_sets_lr_to_zero():
    f = assert_fires("TD104", _tl(_steps([0.0] * 3, lr=0.0), initial_lr=0.1))
    assert f.step == 1
    assert f.where.module == "fc"
    assert f.where.params == ("fc.bias", "fc.weight")
    assert f.where.source == "train.py:40"
    assert f.evidence["unchanged_params"] == 2
    assert f.evidence["observed_steps"] == [1, 2, 3]
    assert f.evidence["lr"] == {"opt0/group0": 0.0}
    assert f.evidence["grad_norm_all_zero"] is False
    assert "LR scheduler" in f.cause and "lr=0.1" in f.cause
    assert "2 params did not change in 3 optimizer steps" in f.title


def test_healthy_twin_is_silent():
    assert_silent("TD104", _tl(_steps([1e-3] * 3)))


def test_lr_zero_warmup_only_at_step_one_is_silent():
    assert_silent("TD104", _tl(_steps([0.0, 1e-4, 2e-4], lr=[0.0, 0.05, 0.1]), initial_lr=0.1))


def test_waits_for_min_steps_while_running():
    assert_silent("TD104", _tl(_steps([0.0] * 2, lr=0.0)))
    assert_fires("TD104", _tl(_steps([0.0] * 2, lr=0.0), ended=True))


def test_lr_zero_from_the_constructor():
    f = assert_fires("TD104", _tl(_steps([0.0] * 3, lr=0.0), initial_lr=None))
    assert "positive learning rate" in f.fix


def test_zero_gradient_cause():
    f = assert_fires("TD104", _tl(_steps([0.0] * 3, grads=0.0)))
    assert f.evidence["grad_norm_all_zero"] is True
    assert "gradients are exactly 0" in f.cause


def test_update_below_float_precision_cause():
    f = assert_fires("TD104", _tl(_steps([0.0] * 3, lr=1e-12)))
    assert "below the float resolution" in f.cause
    assert "lr=1e-12" in f.cause


def test_tiny_gradient_cause_is_not_the_lr():
    """A gradient of ~1e-20 (an attention that reads only zero padding vectors) moves no
    weight at any lr: the cause says the gradient, not the float resolution of the update."""
    f = assert_fires("TD104", _tl(_steps([0.0] * 3, grads=7e-21, lr=1e-3)))
    assert "tiny" in f.cause and "7.0e-21" in f.cause
    assert "raise the learning rate" not in f.fix


def test_params_without_grad_are_left_to_td102():
    steps = _steps([0.0] * 3)
    for s in steps.values():
        s["grads.norm"] = {}
    assert_silent("TD104", _tl(steps))


def test_only_the_frozen_subset_is_reported():
    steps = _steps([1e-3] * 3)
    for s in steps.values():
        s["params.update"]["fc.bias"] = 0.0
    f = assert_fires("TD104", _tl(steps))
    assert f.where.params == ("fc.bias",)


def test_zero_gradient_ranks_after_its_upstream_causes():
    # Zero gradient: the root cause is upstream (TD107, TD3xx), so TD104 ranks after them;
    # lr 0 is TD104's own root cause and keeps the rule's priority.
    zero_grad = assert_fires("TD104", _tl(_steps([0.0] * 3, grads=0.0)))
    zero_lr = assert_fires("TD104", _tl(_steps([0.0] * 3, lr=0.0), initial_lr=0.1))
    assert zero_grad.priority > 40 > zero_lr.priority


# -- zero gradients by construction (a bias before BatchNorm, an unused head) -----------------
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


def test_a_group_built_with_lr_zero_beside_groups_that_train_is_info():
    """`AdamW([{"params": backbone, "lr": 0.0}, {"params": head}])`: a freeze written as a
    param group. The same group while nothing else trains, or set to 0 by a schedule, is
    still the error."""
    names = ["backbone.weight", "head.weight"]
    steps = {
        s: {
            "params.update": {"backbone.weight": 0.0, "head.weight": 1e-3},
            "grads.norm": dict.fromkeys(names, 0.5),
            "optim.lr": {"opt0/group0": 0.0, "opt0/group1": 3e-3},
            "optim.step": 1,
        }
        for s in (1, 2, 3)
    }

    def tl(initial_lr=None):
        opt = optimizer_facts(["backbone.weight"], ["head.weight"], lr=[0.0, 3e-3])
        opt["groups"][0]["initial_lr"] = initial_lr
        return make_timeline(params=names, optimizers=[opt], steps=steps)

    f = assert_fires("TD104", tl())
    assert f.severity == Severity.INFO and "frozen by its learning rate" in f.cause
    assert assert_fires("TD104", tl(initial_lr=0.1)).severity == Severity.ERROR
    alone = {s: {**v, "params.update": dict.fromkeys(names, 0.0)} for s, v in steps.items()}
    opt = optimizer_facts(["backbone.weight"], ["head.weight"], lr=[0.0, 3e-3])
    f = assert_fires("TD104", make_timeline(params=names, optimizers=[opt], steps=alone))
    assert f.severity == Severity.ERROR


def _two_optimizers(updates: dict[str, float], only_d: tuple[str, ...] = ()):
    """InfoGAN: opt0 (D) holds the params, opt1 (info, over chain(G, D)) holds them too but
    `only_d`; the update kept per step is the last step's, whose loss never reaches `head`."""
    names = list(updates)
    d = optimizer_facts(names)
    info = optimizer_facts([n for n in names if n not in only_d])
    info["groups"][0]["id"] = "opt1/group0"
    steps = {
        i: {
            "params.update": dict(updates),
            "params.norm": {n: 3.0 for n in names},
            "grads.norm": {n: 0.5 for n in names},
            "optim.lr": {"opt0/group0": 0.1, "opt1/group0": 0.1},
            "optim.step": 1,
        }
        for i in range(1, 4)
    }
    events = [{"kind": "optimizer_step", "step": 1, "source": "infogan.py:282"}]
    return make_timeline(params=names, optimizers=[d, info], steps=steps, events=events)


def test_params_held_by_two_optimizers_unchanged_at_the_last_step_are_info():
    f = assert_fires("TD104", _two_optimizers({"head.weight": 0.0, "body.weight": 0.2}))
    assert f.severity is Severity.INFO
    assert "more than one optimizer" in f.cause


def test_a_param_held_once_stays_an_error_beside_shared_ones():
    updates = {"head.weight": 0.0, "fc.weight": 0.0, "body.weight": 0.2}
    f = assert_fires("TD104", _two_optimizers(updates, only_d=("fc.weight",)))
    assert f.severity is Severity.ERROR
    assert f.where.params == ("fc.weight",)
