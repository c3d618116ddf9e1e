"""TD403 train-mode-during-validation on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


def test_td403_reports_validation_forwards_in_train_mode():
    e = {
        "kind": "validation_in_train_mode",
        "step": 9,
        "model": "<model>",
        "modules": ["stem.bn", "block.bn"],
        "count": 2,
        "forwards": 3,
        "validating": False,
        "source": "val.py:7",
    }
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=[e]))
    assert f.where.source == "val.py:7" and f.evidence["modules_in_train_mode"] == e["modules"]
    assert_silent("TD403", make_timeline(params=PARAMS, steps={1: {}}))


def test_td403_reports_functional_dropout_left_on_in_validation():
    # rixwew/pytorch-fm#21: F.dropout(attn_scores, p=0.1) without training=self.training.
    e = {
        "kind": "validation_in_train_mode",
        "step": 24,
        "model": "<model>",
        "modules": [],
        "count": 0,
        "forwards": 6,
        "validating": False,
        "source": "train.py:49",
        "functional_dropout": {"source": "model.py:29", "p": 0.2, "default": True},
    }
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=[e]))
    assert f.where.source == "model.py:29"
    assert "F.dropout(p=0.2) at model.py:29" in f.title
    assert "left at its default" in f.cause
    assert "training=self.training" in f.fix


def _run(step, model="teacher", validating=False, trained=False):
    return {
        "trained": trained,
        "kind": "validation_in_train_mode",
        "step": step,
        "model": model,
        "modules": [f"{model}.1"],
        "count": 1,
        "forwards": 2,
        "validating": validating,
        "source": "train.py:26",
    }


def test_td403_silent_on_gradient_free_runs_in_every_step():
    # A mean teacher on two views before the student's forward, every step: part of the step.
    teacher = [_run(s) for s in range(2, 40)]
    assert_silent("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=teacher))
    # The same runs inside doc.validating(): the user says it is a validation.
    declared = [_run(s, validating=True) for s in range(2, 40)]
    assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=declared))
    # Once an epoch (every 25 steps): a validation.
    epochs = [_run(s) for s in range(25, 400, 25)]
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=epochs))
    assert f.evidence["validations_affected"] == len(epochs)
    # The trained model validated after every step (full-batch training): a validation.
    full_batch = [_run(s, model="<model>", trained=True) for s in range(2, 40)]
    assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=full_batch))
    # Another model validated once an epoch beside the per-step teacher is still reported.
    both = teacher + [_run(s, model="<model>", trained=True) for s in (25, 50, 75)]
    both.sort(key=lambda e: e["step"])
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=both))
    assert f.evidence["model"] == "<model>"


def _copy_run(step, name="ModelEma"):
    e = _run(step, model=name)
    e.pop("forwards")
    e["copy_of"] = "<model>"
    e["modules"] = [f"{name}.module.1", f"{name}.module.3"]
    e["count"] = 2
    e["source"] = "train.py:41"
    return e


def test_td403_reports_an_unwatched_copy_evaluated_in_train_mode():
    """An EMA deep-copied from the model, never put in eval, evaluated each epoch."""
    events = [_copy_run(s) for s in (33, 65, 97)]
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=events))
    assert "`ModelEma`, an unwatched copy of the model" in f.title
    assert f.evidence["steps_evaluated_in_train_mode"] == [33, 65, 97]
    assert f.where.source == "train.py:41"
    assert ".eval()" in f.fix


def test_td403_silent_on_a_copy_run_in_every_step():
    """A mean teacher / BYOL target copy: its gradient-free pass is part of each step."""
    events = [_copy_run(s) for s in range(3, 40)]
    assert_silent("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=events))


def test_td403_copy_and_model_are_reported_apart():
    events = [_copy_run(33), _run(33, model="<model>", trained=True)]
    tl = make_timeline(params=PARAMS, steps={1: {}}, events=events)
    f = assert_fires("TD403", tl, count=2)
    assert "an unwatched copy" in f.title
