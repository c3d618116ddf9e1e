"""TD108 loss-not-decreasing on hand-built timelines."""

from __future__ import annotations

import pytest

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts

PARAMS = ["fc.weight", "fc.bias"]


def _flat(n):
    """A loss that wiggles around 2.0 without going down."""
    return [2.0 + 0.01 * ((i * 7) % 5) for i in range(n)]


# A supervised cross-entropy on labels from a fixed set: the loss the rule judges as meant to fall.
CE = SUPERVISED_CE


def _tl(values, ratio=1e-8, lr=1e-7, per_step=1, loss_event=CE, extra=None, events=()):
    steps = {}
    for i, v in enumerate(values, 1):
        steps[i] = {
            "loss.train": [v] * per_step,
            "optim.lr": {"opt0/group0": lr},
        }
        if i % 10 == 0 or i <= 3:
            steps[i]["params.norm"] = dict.fromkeys(PARAMS, 4.0)
            steps[i]["params.update"] = dict.fromkeys(PARAMS, 4.0 * ratio)
            if loss_event is not None:
                steps[i]["loss_inputs.observed"] = [0]
        for name, value in (extra or {}).get(i, {}).items():
            steps[i][name] = value
    events = [
        {"kind": "log_call", "step": 1, "validating": False, "source": "train.py:88"},
        *events,
    ]
    if loss_event is not None:
        events.append(loss_event)
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_fires_for_a_learning_rate_far_too_small():
    f = assert_fires("TD108", _tl(_flat(60)))
    assert f.severity is Severity.WARNING
    assert f.step == 1
    # the learning rate is the cause: the line that built the optimizer
    assert f.where.source == "train.py:10"
    assert f.evidence["steps"] == 60
    assert f.evidence["first_median"] == pytest.approx(2.02)
    assert f.evidence["last_median"] == pytest.approx(2.02)
    assert f.evidence["relative_change"] == pytest.approx(0.0)
    assert f.evidence["median_update_ratio"] == pytest.approx(1e-8)
    assert f.confidence == 0.7
    assert "updates are tiny" in f.cause and "lr=1e-07" in f.cause
    assert f.evidence["objective"] == "supervised"
    assert "judged: supervised cross_entropy" in f.cause


def test_healthy_twin_is_silent():
    assert_silent("TD108", _tl([2.0 * 0.97**i for i in range(60)], ratio=1e-3, lr=0.05))


def test_before_min_steps_is_silent():
    assert_silent("TD108", _tl(_flat(49)))
    assert_fires("TD108", _tl(_flat(50)))
    assert_fires("TD108", _tl(_flat(20)), min_steps=20)


def test_bit_constant_loss_is_left_to_td107():
    assert_silent("TD108", _tl([2.0] * 80))


def test_drop_just_above_the_threshold_is_silent():
    # first fifth at 2.0, last fifth 6% lower
    values = [2.0 + 0.001 * (i % 3) for i in range(30)] + [
        1.88 + 0.001 * (i % 3) for i in range(30)
    ]
    assert_silent("TD108", _tl(values))
    assert_fires("TD108", _tl(values), min_rel_drop=0.10)


def test_micro_batches_are_averaged_per_step():
    f = assert_fires("TD108", _tl(_flat(60), per_step=4))
    assert f.evidence["steps"] == 60


@pytest.mark.parametrize(
    ("ratio", "words"),
    [
        (0.5, "updates are huge"),
        (2.0, "far too high"),
        (1e-3, "normal rate"),
        (0.0, "do not change at all"),
    ],
)
def test_cause_follows_the_measured_update_size(ratio, words):
    f = assert_fires("TD108", _tl(_flat(60), ratio=ratio, lr=0.1))
    assert words in f.cause


def test_an_lr_of_0_for_an_epoch_is_named_as_the_cause():
    # huggingface/transformers#20916: a warmup sized in steps, stepped once an epoch by
    # Lightning: lr 0 for the whole first epoch (the sampled steps 1-3, 10, 20), then small.
    extra = {
        i: {"optim.lr": {"opt0/group0": 0.0 if i <= 32 else 1e-4 * (i // 32)}} for i in range(1, 61)
    }
    for i in (40, 50, 60):
        extra[i]["params.update"] = dict.fromkeys(PARAMS, 4.0 * 1e-4)
    f = assert_fires("TD108", _tl(_flat(60), ratio=0.0, extra=extra))
    assert "exactly 0 at 32 of the 60 optimizer steps" in f.cause
    assert "the first at step 1, the last at step 32" in f.cause
    assert "interval='step'" in f.fix


def test_no_update_at_most_sampled_steps_is_not_called_no_change_at_all():
    extra = {i: {"params.update": dict.fromkeys(PARAMS, 4e-3)} for i in (50, 60)}
    f = assert_fires("TD108", _tl(_flat(60), ratio=0.0, extra=extra))
    assert "do not change at most of the sampled steps" in f.cause


def test_no_update_measured():
    tl = make_timeline(
        params=PARAMS, steps={i: {"loss.train": [v]} for i, v in enumerate(_flat(60), 1)}
    )
    f = assert_fires("TD108", tl)
    assert f.evidence["median_update_ratio"] is None
    assert "no parameter update was measured" in f.cause


# -- which losses are judged: measured structure, not names ---------------------------------
def test_hand_written_loss_with_normal_updates_is_info_only():
    f = assert_fires("TD108", _tl(_flat(60), ratio=1e-3, lr=0.01, loss_event=None))
    assert f.severity is Severity.INFO
    assert f.evidence["objective"] == "hand-written"
    assert "not judged a fault" in f.cause


def test_tiny_updates_are_a_fault_whatever_the_objective():
    f = assert_fires("TD108", _tl(_flat(60), ratio=1e-9, lr=1e-7, loss_event=None))
    assert f.severity is Severity.WARNING
    assert "updates are tiny" in f.cause


def test_moving_regression_targets_are_not_judged():
    # TD targets that climb as the Q-values grow: the loss may rise while the agent learns
    mse = dict(CE, fn="mse_loss", classes=None, target_float=True, input_shape=[32])
    extra = {
        s: {
            "loss_inputs.stats": {
                "0.t_mean": 0.1 * s,
                "0.t_min": 0.1 * s - 0.5,
                "0.t_max": 0.1 * s + 0.5,
            }
        }
        for s in (1, 2, 3, 10, 20, 30, 40, 50, 60)
    }
    assert_silent("TD108", _tl(_flat(60), ratio=1e-3, lr=0.01, loss_event=mse, extra=extra))
    # the same targets without the trend: a supervised regression, judged
    still = {
        s: {
            "loss_inputs.stats": {"0.t_mean": 0.0, "0.t_min": -1.0 - 0.01 * (s % 3), "0.t_max": 1.0}
        }
        for s in (1, 2, 3, 10, 20, 30, 40, 50, 60)
    }
    f = assert_fires("TD108", _tl(_flat(60), ratio=1e-3, lr=0.01, loss_event=mse, extra=still))
    assert f.severity is Severity.WARNING and f.evidence["objective"] == "supervised"


def test_a_loss_that_fell_in_its_first_steps_then_held_has_fallen():
    values = [2.0, 1.2, 0.6] + [0.5 + 0.01 * (i % 3) for i in range(57)]
    assert_silent("TD108", _tl(values, ratio=1e-3, lr=0.01))


def test_lr_far_too_high_hidden_by_clipping():
    values = [1.1] + [1.3 + 0.05 * (i % 4) for i in range(59)]  # above ln 3, the uniform guess
    extra = {
        i: {"schedule.clip_norm": [8.0 + (i % 3)], "schedule.clip_max": [1.0]} for i in range(1, 61)
    }
    f = assert_fires("TD108", _tl(values, ratio=2.0, lr=1.0, extra=extra))
    assert f.severity is Severity.WARNING
    hot = f.evidence["lr_too_high"]
    assert hot["clipped_steps"] == 60 and hot["max_norm"] == 1.0
    assert hot["update_to_initial"] == 2.0
    assert "far too high" in f.cause and "clip_grad_norm_(max_norm=1)" in f.cause
    # the same clipping with healthy step sizes: not this cause
    g = assert_fires("TD108", _tl(values, ratio=1e-3, lr=1e-3, extra=extra))
    assert "lr_too_high" not in g.evidence


def test_huge_steps_of_a_loss_that_learned_are_not_this_cause():
    # every step moves the weights by 2x their initial norm, but the loss ends well below its
    # start and below a uniform guess (ln 3): it learned (e.g. word-LM SGD at lr=20, clipped)
    values = [1.1 * 0.97**i for i in range(60)]
    assert_silent("TD108", _tl(values, ratio=2.0, lr=20.0))
    # and without clipping the same plateau above the start is still caught
    flat = [1.1] + [1.3 + 0.05 * (i % 4) for i in range(59)]
    f = assert_fires("TD108", _tl(flat, ratio=2.0, lr=1.0))
    assert "max_norm" not in f.evidence["lr_too_high"]
    assert "lr up to 1" in f.cause


def test_a_loss_falling_steadily_by_less_than_5_percent_is_slow_not_stuck():
    # a word-level LSTM at its unigram plateau: 5.56 -> 5.33 over 86 steps, steadily
    # over a 10,000-word vocabulary (ln 10000 = 9.2: far below a uniform guess)
    values = [5.56 - 0.0027 * i + 0.03 * ((i * 7) % 5 - 2) / 2 for i in range(86)]
    words = {**CE, "classes": 10000, "input_shape": [32, 10000]}
    assert_silent("TD108", _tl(values, ratio=0.07, lr=20.0, loss_event=words))
    # the same slow fall with tiny updates is still the fault it measures
    assert_fires("TD108", _tl(values, ratio=1e-8, lr=1e-7, loss_event=words))


def _decaying_tl(values, shrink, weight_decay):
    """A 3-class CE falling steadily onto ln 3 while the weights shrink by `shrink` a step."""
    extra = {
        i: {"params.norm": dict.fromkeys(PARAMS, 4.0 * shrink**i)}
        for i in range(1, len(values) + 1)
        if i % 10 == 0 or i <= 3
    }
    tl = _tl(values, ratio=1e-2, lr=1e-3, extra=extra)
    tl.facts["optimizers"][0]["groups"][0]["weight_decay"] = weight_decay
    return tl


def test_a_loss_falling_onto_a_uniform_guess_is_stuck_not_slow():
    # Adam(weight_decay=10): the loss creeps down from its init onto ln C and stays there,
    # the weights shrink; the slow-fall exemption does not apply at a uniform guess.
    values = [1.16 - 0.0006 * i + 0.002 * ((i * 7) % 5 - 2) / 2 for i in range(100)]
    values = [max(v, 1.0987 + 0.0003 * ((i * 3) % 4)) for i, v in enumerate(values)]
    f = assert_fires("TD108", _decaying_tl(values, 0.97, 10.0))
    assert f.severity is Severity.WARNING
    assert "no lower than a uniform guess over the classes (1.099)" in f.title
    assert "weights shrank to" in f.cause and "weight_decay=10" in f.cause
    # the same creep onto ln C with the weights kept (no measured fault): a model still on its
    # initial plateau looks the same (a ViT in a short run): said at info
    f = assert_fires("TD108", _decaying_tl(values, 1.0, 0.0))
    assert f.severity is Severity.INFO
    # the same run learning below ln C is a slow fall: silent
    learning = [1.16 - 0.0012 * i + 0.002 * ((i * 7) % 5 - 2) / 2 for i in range(100)]
    assert_silent("TD108", _decaying_tl(learning, 1.0, 1e-2))


# A loss that fell while a stretch of steps ran at lr exactly 0 (a step-sized warmup stepped once
# an epoch), and a flat loss at the entropy of its labels (labels apart from their inputs).
SCHED = {
    "kind": "lr_scheduler",
    "step": 1,
    "key": "sched0",
    "cls": "LambdaLR",
    "optimizer": "opt0",
    "settings": {},
    "source": "train.py:61",
}


def _sched_tl(values, lrs, ratio=1e-3, sched_steps=(), labels=None, initial_lr=None, grads=None):
    steps = {}
    for i, (v, lr) in enumerate(zip(values, lrs), 1):
        steps[i] = {"loss.train": [v], "optim.lr": {"opt0/group0": lr}}
        if i in sched_steps:
            steps[i]["schedule.steps"] = {"sched0": 1}
        if i % 10 == 0 or i <= 3:
            steps[i]["params.norm"] = dict.fromkeys(PARAMS, 4.0)
            steps[i]["params.update"] = dict.fromkeys(PARAMS, 4.0 * ratio * (lr > 0))
            steps[i]["loss_inputs.observed"] = [0]
            if labels:
                steps[i]["loss_inputs.labels"] = labels
            if grads is not None:
                steps[i]["grads.norm"] = dict.fromkeys(PARAMS, grads)
    events = [
        {"kind": "log_call", "step": 1, "validating": False, "source": "train.py:88"},
        SUPERVISED_CE,
        SCHED,
    ]
    opts = [optimizer_facts(PARAMS, lr=lrs[0], initial_lr=initial_lr)] if initial_lr else None
    return make_timeline(params=PARAMS, optimizers=opts, steps=steps, events=events)


def _falling_some(n):
    return [1.4 - 0.15 * i / n for i in range(n)]


def test_a_warmup_stepped_per_epoch_is_reported_although_the_loss_fell():
    lrs = [0.0] * 25 + [2e-4] * 25 + [4e-4] * 25 + [6e-4] * 25
    f = assert_fires("TD108", _sched_tl(_falling_some(100), lrs, sched_steps=(25, 50, 75, 100)))
    assert f.severity is Severity.WARNING
    assert f.title.startswith("the learning rate was exactly 0 at 25 of the 100 optimizer steps")
    assert "scheduler.step() ran at 4 of the 100 optimizer steps" in f.cause
    assert f.where.source == "train.py:61"
    assert f.evidence["zero_lr_steps"]["first"] == 1 and f.evidence["zero_lr_steps"]["last"] == 25


def test_a_step_sized_warmup_that_never_reaches_its_base_lr_is_still_reported():
    lrs = [0.0] * 25 + [2e-4] * 25 + [4e-4] * 25 + [6e-4] * 25  # base lr 1e-3, never reached
    tl = _sched_tl(_falling_some(100), lrs, sched_steps=(25, 50, 75, 100), initial_lr=1e-3)
    assert assert_fires("TD108", tl).severity is Severity.WARNING


def test_an_epoch_sized_warmup_from_zero_that_reaches_its_base_lr_is_silent():
    # LambdaLR(lambda e: min(1, e / 2)) stepped once an epoch as sized: the first epoch at lr 0,
    # then 0.05, then the base 0.1; the loss fell 90% (review: a warning on a run that learned).
    lrs = [0.0] * 25 + [0.05] * 25 + [0.1] * 75
    falling = [0.7 * (1 - 0.9 * i / 125) for i in range(125)]
    tl = _sched_tl(falling, lrs, sched_steps=(25, 50, 75, 100, 125), initial_lr=0.1)
    assert_silent("TD108", tl)


def test_a_warmup_from_zero_stepped_per_batch_is_silent():
    lrs = [1e-3 * min(1.0, i / 10) for i in range(100)]  # exactly 0 at the first step only
    assert_silent("TD108", _sched_tl(_falling_some(100), lrs, sched_steps=range(1, 101)))


def test_a_decay_that_ends_at_zero_is_silent():
    lrs = [1e-3 * (1 - i / 95) if i < 95 else 0.0 for i in range(100)]  # 5 steps at 0
    assert_silent("TD108", _sched_tl(_falling_some(100), lrs, sched_steps=range(1, 101)))


def test_a_flat_loss_at_the_label_entropy_names_labels_apart_from_their_inputs():
    flat = [1.0986 + 0.01 * ((i * 7) % 5) - 0.02 for i in range(80)]
    labels = {"0.0": 20.0, "0.1": 20.0, "0.2": 20.0}  # balanced: entropy ln 3 = 1.0986
    f = assert_fires("TD108", _sched_tl(flat, [1e-3] * 80, labels=labels))
    assert "the entropy of the labels seen (1.099)" in f.cause
    assert "shuffled separately" in f.cause and "X[perm], y[perm]" in f.fix


def test_a_loss_that_fell_only_to_the_class_frequencies_and_held_there():
    # targets transposed against the outputs (y.t()): the loss falls from ln 3 to the labels'
    # entropy (what the bias alone can learn) and stays: a drop of 9%, but nothing of the input
    labels = {"0.0": 60.0, "0.1": 25.0, "0.2": 15.0}  # entropy 0.938
    values = [1.0986 - 0.016 * i for i in range(10)] + [
        0.94 + 0.004 * ((i * 7) % 5 - 2) for i in range(90)
    ]
    f = assert_fires("TD108", _sched_tl(values, [1e-3] * 100, labels=labels))
    assert "fell only to the entropy of the labels (0.9376)" in f.title
    # said, not judged: a model still on its class-frequency plateau looks the same
    assert f.severity is Severity.INFO
    assert "X[perm], y[perm]" in f.fix
    # the same fall going on below the labels' entropy (learning the input): silent
    learning = values[:10] + [0.94 - 0.004 * i for i in range(90)]
    assert_silent("TD108", _sched_tl(learning, [1e-3] * 100, labels=labels))


def test_regression_targets_far_above_the_outputs_are_named():
    # house prices in dollars regressed by an MLP with outputs of order 1: MSE ~4e10 that
    # moves 2% in 320 steps; the targets' scale, measured at the loss, is the cause
    mse = {**CE, "fn": "mse_loss", "classes": None, "input_shape": [64, 1], "target_float": True}
    stats = {"0.t_ms": 4.04e10, "0.t_mean": 1.98e5, "0.in_min": -3.0, "0.in_max": 24.9}
    stats.update({"0.t_min": 1.5e5, "0.t_max": 2.5e5})
    observed = (1, 2, 3, 10, 20, 30, 40, 50, 60)
    extra = {i: {"loss_inputs.stats": stats} for i in observed}
    f = assert_fires("TD108", _tl(_flat(60), ratio=5e-3, lr=1e-3, loss_event=mse, extra=extra))
    assert "have a scale (rms 2.01e+05, mean 1.98e+05)" in f.cause
    assert "standardize the targets" in f.fix
    # targets of the outputs' order: the generic cause
    small = {**stats, "0.t_ms": 4.0, "0.t_mean": 1.0, "0.t_min": -3.0, "0.t_max": 5.0}
    extra = {i: {"loss_inputs.stats": small} for i in observed}
    f = assert_fires("TD108", _tl(_flat(60), ratio=5e-3, lr=1e-3, loss_event=mse, extra=extra))
    assert "have a scale" not in f.cause


def test_a_second_task_is_judged_on_its_own_losses():
    """Task B starts at its own, higher loss: not a loss that rose over the run. Judged alone,
    a task B that falls is silent and a task B that stays flat is reported."""
    falling = [6.0 * 0.99**i for i in range(150)]
    first = [2.0 * 0.97**i for i in range(150)]
    events = [
        {"kind": "backward_site", "step": 1, "site": 0, "source": "train.py:30"},
        {"kind": "backward_site", "step": 151, "site": 1, "source": "train.py:41"},
    ]
    assert_silent("TD108", _tl(first + falling, ratio=1e-3, lr=1e-2, events=events))
    f = assert_fires("TD108", _tl(first + _flat(150), events=events))
    assert f.evidence["steps"] == 150


def _adam_under_eps(grad_norm, cls="Adam", eps=1e-8):
    """Tiny updates (1e-8 of the weights) under an lr of 1e-3, gradient norms `grad_norm` on
    params of 4 values (per element grad_norm / 2) at the sampled steps."""
    sampled = [i for i in range(1, 61) if i % 10 == 0 or i <= 3]
    extra = {i: {"grads.norm": dict.fromkeys(PARAMS, grad_norm)} for i in sampled}
    tl = _tl(_flat(60), ratio=1e-8, lr=1e-3, extra=extra)
    opt = optimizer_facts(PARAMS, lr=1e-3, cls=cls)
    for g in opt["groups"]:
        g["eps"] = eps
    tl.facts["optimizers"] = [opt]
    return tl


def test_tiny_adam_updates_from_gradients_below_its_eps_name_the_gradient_not_the_lr():
    # A 30-layer ReLU MLP with PyTorch's default init under Adam(lr=1e-3): gradients of 6e-14
    # per element, steps of about lr * g / eps; raising the lr was the wrong advice.
    f = assert_fires("TD108", _adam_under_eps(2e-13))
    assert f.severity is Severity.WARNING
    assert "below Adam's eps=1e-08" in f.cause and "1e-13" in f.cause, f.cause
    assert "not what holds them back" in f.cause
    assert "rather than the learning rate" in f.fix
    assert f.where.source == "train.py:88"  # not the optimizer's line
    # Gradients above eps (or an optimizer without one): the lr is the cause, as before.
    for tl in (_adam_under_eps(2e-6), _adam_under_eps(2e-13, cls="SGD", eps=None)):
        f = assert_fires("TD108", tl)
        assert "learning rate is far too small" in f.cause and f.where.source == "train.py:10"


def test_at_the_label_entropy_with_gradients_below_adams_eps_the_gradient_is_named():
    # A 40-layer ReLU MLP with biases, default init, Adam: the biases move, the loss sits at
    # the class frequencies, and the median gradient per element is 3e-10: not the labels.
    flat = [1.0986 + 0.01 * ((i * 7) % 5) - 0.02 for i in range(80)]
    labels = {"0.0": 20.0, "0.1": 20.0, "0.2": 20.0}
    tl = _sched_tl(flat, [1e-3] * 80, labels=labels, grads=6e-10)
    opt = optimizer_facts(PARAMS, lr=1e-3, cls="AdamW")
    opt["groups"][0]["eps"] = 1e-8
    tl.facts["optimizers"] = [opt]
    f = assert_fires("TD108", tl)
    assert "shuffled separately" not in f.cause and "below AdamW's eps=1e-08" in f.cause


def test_a_loss_at_exactly_0_from_the_start_is_said_not_judged():
    # A triplet margin loss met at init on separated classes: 0 at almost every step.
    values = [0.0] * 60
    values[7], values[30] = 0.001, 0.002
    f = assert_fires("TD108", _tl(values, ratio=0.0))
    assert f.severity is Severity.INFO and "exactly 0" in f.title
    assert "already meets" in f.cause and "zeroed by mistake" in f.cause
