"""TD108 loss-not-decreasing: a loss that fell while a stretch of steps ran at lr exactly 0
(a step-sized warmup stepped once an epoch), and a flat loss at the entropy of its labels
(labels that do not belong to their inputs). Hand-built timelines."""

from __future__ import annotations

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]
SCHED = {
    "kind": "lr_scheduler",
    "step": 1,
    "key": "sched0",
    "cls": "LambdaLR",
    "optimizer": "opt0",
    "settings": {},
    "source": "train.py:61",
}


def _tl(values, lrs, ratio=1e-3, sched_steps=(), labels=None):
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
    events = [
        {"kind": "log_call", "step": 1, "validating": False, "source": "train.py:88"},
        SUPERVISED_CE,
        SCHED,
    ]
    return make_timeline(params=PARAMS, steps=steps, events=events)


def _falling(n):
    return [1.4 - 0.15 * i / n for i in range(n)]


def test_a_warmup_stepped_per_epoch_is_reported_although_the_loss_fell():
    lrs = [0.0] * 25 + [2e-4] * 25 + [4e-4] * 25 + [6e-4] * 25
    f = assert_fires("TD108", _tl(_falling(100), lrs, sched_steps=(25, 50, 75, 100)))
    assert f.severity is Severity.WARNING
    assert f.title.startswith("the learning rate was exactly 0 at 25 of the 100 optimizer steps")
    assert "scheduler.step() ran at 4 of the 100 optimizer steps" in f.cause
    assert f.where.source == "train.py:61"
    assert f.evidence["zero_lr_steps"]["first"] == 1 and f.evidence["zero_lr_steps"]["last"] == 25


def test_a_warmup_from_zero_stepped_per_batch_is_silent():
    lrs = [1e-3 * min(1.0, i / 10) for i in range(100)]  # exactly 0 at the first step only
    assert_silent("TD108", _tl(_falling(100), lrs, sched_steps=range(1, 101)))


def test_a_decay_that_ends_at_zero_is_silent():
    lrs = [1e-3 * (1 - i / 95) if i < 95 else 0.0 for i in range(100)]  # 5 steps at 0
    assert_silent("TD108", _tl(_falling(100), lrs, sched_steps=range(1, 101)))


def test_a_flat_loss_at_the_label_entropy_names_labels_apart_from_their_inputs():
    flat = [1.0986 + 0.01 * ((i * 7) % 5) - 0.02 for i in range(80)]
    labels = {"0.0": 20.0, "0.1": 20.0, "0.2": 20.0}  # balanced: entropy ln 3 = 1.0986
    f = assert_fires("TD108", _tl(flat, [1e-3] * 80, labels=labels))
    assert "the entropy of the labels seen (1.099)" in f.cause
    assert "shuffled separately" in f.cause and "X[perm], y[perm]" in f.fix
