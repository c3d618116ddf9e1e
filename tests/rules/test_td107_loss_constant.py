"""TD107 loss-constant on hand-built timelines."""

from __future__ import annotations

import pytest

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]
LOG = {"kind": "log_call", "step": 1, "validating": False, "source": "train.py:50"}
LOG_VAL = {"kind": "log_call", "step": 10, "validating": True, "source": "train.py:61"}


def _train(values, signal="loss.train", grads=0.0, events=(LOG,)):
    steps = {
        i: {signal: [v], "grads.norm": dict.fromkeys(PARAMS, grads), "optim.step": 1}
        for i, v in enumerate(values, 1)
    }
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_fires_for_a_clamped_loss_with_zero_gradient():
    f = assert_fires("TD107", _train([15.0] * 6))
    assert f.step == 1
    assert f.where.source == "train.py:50"
    assert f.evidence == {
        "value": 15.0,
        "repeats": 6,
        "batches_seen": 6,
        "grad_norm_zero": True,
    }
    assert "exactly 15 on 6 consecutive batches (steps 1–6)" in f.title
    assert "clamp" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD107", _train([2.3, 2.1, 1.9, 1.8, 1.6, 1.5], grads=0.4))


def test_loss_that_converged_to_exactly_zero_is_silent():
    assert_silent("TD107", _train([1.0, 0.5, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))


def test_loss_that_is_zero_from_the_start_fires():
    f = assert_fires("TD107", _train([0.0] * 6))
    assert f.evidence["value"] == 0.0


def test_run_in_the_middle_is_found():
    values = [3.0, 2.5] + [2.0] * 5 + [1.9]
    f = assert_fires("TD107", _train(values, grads=0.3))
    assert f.step == 3
    assert f.evidence["repeats"] == 5
    assert f.evidence["grad_norm_zero"] is False
    assert "does not depend on the batch" in f.cause


def test_fewer_than_min_repeats_is_silent():
    assert_silent("TD107", _train([15.0] * 4 + [14.0]))
    assert_fires("TD107", _train([15.0] * 4 + [14.0]), min_repeats=4)


def test_backward_roots_are_used_when_nothing_is_logged():
    events = [{"kind": "backward_call", "step": 1, "source": "train.py:70", "factor": 1.0}]
    f = assert_fires("TD107", _train([15.0] * 5, signal="loss.backward", events=events))
    assert f.where.source == "train.py:70"


def _val(values, moved=True, stepped=True):
    steps = {}
    for s in range(1, 10 * len(values) + 1):
        steps[s] = {"loss.train": [2.0 - s * 0.01]}
        if stepped:
            steps[s]["optim.step"] = 1
            steps[s]["params.update"] = {"fc.weight": 1e-3 if moved else 0.0}
    for i, v in enumerate(values, 1):
        steps[10 * i]["loss.val"] = [v]
    return make_timeline(params=PARAMS, steps=steps, events=[LOG, LOG_VAL])


def test_fires_for_validation_of_a_stale_copy():
    f = assert_fires("TD107", _val([0.693] * 3))
    assert f.step == 10
    assert f.where.op == "validation"
    assert f.where.source == "train.py:61"
    assert f.evidence == {"value": 0.693, "validations": 3, "optimizer_steps_between": 20}
    assert "stale copy" in f.cause


def test_validation_healthy_twin_is_silent():
    assert_silent("TD107", _val([0.9, 0.8, 0.7]))


@pytest.mark.parametrize(
    ("moved", "stepped", "words"),
    [(False, True, "TD104"), (False, False, "TD105")],
)
def test_validation_causes(moved, stepped, words):
    f = assert_fires("TD107", _val([0.5] * 3, moved=moved, stepped=stepped))
    assert words in f.cause


def test_validation_from_a_metric_named_val_loss():
    tl = _val([0.9, 0.8, 0.7])
    for s in (10, 20, 30):
        tl.record(s, "metric.val_loss", [0.42])
    tl2 = make_timeline(params=PARAMS, steps={s: {"metric.val_loss": [0.42]} for s in (5, 6, 7)})
    f = assert_fires("TD107", tl2)
    assert f.evidence["validations"] == 3
    # loss.val takes precedence over metrics when both are logged
    assert_silent("TD107", tl)


def test_validations_within_one_step_are_not_enough():
    tl = make_timeline(params=PARAMS, steps={5: {"loss.val": [0.5, 0.5, 0.5]}})
    assert_silent("TD107", tl)


def _same_batch(values, grads):
    tl = _train(values, grads=grads)
    fp = {"in0.sum": 3.5, "in0.sumsq": 9.0, "in0.wsum": 1.25, "in0.min": -1.0, "in0.max": 2.0}
    for step in range(1, len(values) + 1):
        tl.record(step, "data.fp", dict(fp))
    return tl


def test_one_batch_fed_again_with_a_gradient_is_convergence_not_a_constant_loss():
    """Full-batch LBFGS (a GP's marginal likelihood) stops moving the weights once converged:
    the same batch and the same weights give the same loss; nothing says it ignores the batch."""
    values = [3.0, 2.0, 1.5] + [1.25] * 8
    assert_silent("TD107", _same_batch(values, grads=1e-6))
    # Saturated (a gradient of exactly 0 on that batch): still the clamped loss.
    assert assert_fires("TD107", _same_batch(values, grads=0.0)).evidence["grad_norm_zero"]
