"""TD404 metric-stuck on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]


def _timeline(metric, losses=None, name="val_mAP", every=10, runs=None, updates=0.1):
    """One training loss per step; `metric[k]` logged at step every*(k+1); `runs[k]` is the
    evaluate() summary of that validation, if any."""
    n = every * len(metric)
    losses = losses or [2.0 - 1.5 * i / n for i in range(n)]
    steps = {
        i: {"loss.train": [v], "params.update": dict.fromkeys(PARAMS, updates)}
        for i, v in enumerate(losses, 1)
    }
    events = []
    for k, value in enumerate(metric):
        s = every * (k + 1)
        steps[s][f"metric.{name}"] = [value]
        events.append({"kind": "validation", "step": s, "index": k + 1})
        if runs is not None:
            steps[s]["eval.run"] = [runs[k]]
    return make_timeline(params=PARAMS, steps=steps, events=events)


def _run(name="val_iou", **counts):
    summary = {
        "validation": 1,
        "prefix": "val_",
        "task": "binary",
        "batches": 2,
        "samples": 32,
        "elements": 8192,
        "target_pos": 1000,
        "pred_pos": 900,
        "threshold": 0.5,
        "model_is_trained": True,
        "values": {name: 0.0},
        "raw": {name: 0.0},
    }
    summary.update(counts)
    return summary


def test_fires_for_a_metric_logged_as_zero_while_the_loss_falls():
    f = assert_fires("TD404", _timeline([0.0] * 6))
    assert "`val_mAP` is exactly 0 in 6 validations (steps 10–60)" in f.title
    assert f.step == 30  # the third zero
    assert f.evidence["metrics"] == {"val_mAP": 0.0}
    assert f.evidence["checked"] == {}
    assert any("logged by hand" in s for s in f.evidence["not_checked"])
    assert "metrics or {" in f.cause


def test_names_every_stuck_metric():
    tl = _timeline([0.0] * 4)
    for s in (10, 20, 30, 40):
        tl.record(s, "metric.val_recall", [0.0])
    f = assert_fires("TD404", tl)
    assert "`val_mAP`, `val_recall` are exactly 0" in f.title


def test_healthy_metric_that_moves_is_silent():
    assert_silent("TD404", _timeline([0.1, 0.3, 0.45, 0.5, 0.52, 0.55]))


def test_metric_that_recovered_is_silent():
    assert_silent("TD404", _timeline([0.0, 0.0, 0.0, 0.0, 0.2, 0.4]))


def test_two_zeros_are_not_enough():
    assert_silent("TD404", _timeline([0.3, 0.0, 0.0]))
    assert_fires("TD404", _timeline([0.3, 0.0, 0.0]), min_validations=2)


def test_silent_when_the_training_loss_does_not_move():
    assert_silent("TD404", _timeline([0.0] * 5, losses=[1.0] * 50))


def test_error_metric_that_converged_to_zero_is_silent():
    assert_silent("TD404", _timeline([0.4, 0.1, 0.0, 0.0, 0.0], name="val_error_rate"))


def test_nonzero_constant_fires_only_when_it_never_changed():
    f = assert_fires("TD404", _timeline([0.25] * 4, name="val_acc"))
    assert "bit-constant at 0.25" in f.title
    assert_silent("TD404", _timeline([0.2, 0.25, 0.25, 0.25], name="val_acc"))


def test_training_metrics_are_not_judged():
    # Logged every step, without a validation token: not a validation metric.
    tl = make_timeline(
        params=PARAMS,
        steps={i: {"loss.train": [2.0 - i / 10], "metric.lr": [0.0]} for i in range(1, 11)},
    )
    assert_silent("TD404", tl)


def test_metric_logged_only_at_validations_counts_without_a_val_token():
    f = assert_fires("TD404", _timeline([0.0] * 3, name="mAP50"))
    assert "`mAP50`" in f.title


def test_nan_values_are_left_to_td406():
    assert_silent("TD404", _timeline([float("nan")] * 5))


def test_evaluate_counts_say_no_prediction_reached_the_threshold():
    runs = [_run(pred_pos=0) for _ in range(4)]
    f = assert_fires("TD404", _timeline([0.0] * 4, name="val_iou", runs=runs))
    checked = f.evidence["checked"]
    assert checked["all_predictions_below_threshold"] is True
    assert checked["targets_nonempty"] is True
    assert checked["target_positives"] == [1000] * 4
    assert checked["evaluated_model_changed"] is True
    assert "threshold 0.5" in f.cause
    assert f.evidence["not_checked"] == []


def test_evaluate_counts_say_targets_had_no_positive():
    runs = [_run(target_pos=0) for _ in range(3)]
    f = assert_fires("TD404", _timeline([0.0] * 3, name="val_iou", runs=runs))
    assert "no positive" in f.cause and "TD406" in f.cause


def test_multiclass_collapse_to_one_class():
    runs = [
        _run(
            name="val_f1",
            task="multiclass",
            target_hist=[10, 10, 12],
            pred_hist=[32, 0, 0],
            target_pos=None,
            pred_pos=None,
        )
        for _ in range(3)
    ]
    f = assert_fires("TD404", _timeline([0.0] * 3, name="val_f1", runs=runs))
    assert f.evidence["checked"]["predictions_one_class"] is True
    assert "one class only ([0])" in f.cause


def test_a_copy_being_evaluated_is_left_to_td405():
    runs = [_run(model_is_trained=False) for _ in range(3)]
    f = assert_fires("TD404", _timeline([0.0] * 3, name="val_iou", runs=runs))
    assert f.evidence["checked"]["evaluated_model_is_trained"] is False
    assert any("TD405" in s for s in f.evidence["not_checked"])


def test_metric_logged_inside_validating_counts_whatever_its_name_and_steps():
    # Logged inside doc.validating() every step (a validation each step): judged by that fact.
    steps = {
        i: {"loss.train": [2.0 - i / 10], "metric.acc": [0.0], "params.update": {"w": 0.1}}
        for i in range(1, 11)
    }
    tl = make_timeline(params=PARAMS, steps=steps)
    assert_silent("TD404", tl)
    tl.facts["validation_metrics"] = ["acc"]
    assert "`acc`" in assert_fires("TD404", tl).title
