"""TD404 in Ultralytics' words: which validation computed a stuck metric and what its validator
counted (targets, predictions over `conf`, true positives at IoU 0.5), or which callback line
wrote it into `trainer.metrics`. Hand-built timelines with the integration's facts."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, make_timeline

from ._ultralytics import facts, validation

PARAMS = ["model.0.conv.weight", "model.0.conv.bias"]


def _tl(names, recorded=None, n=4, every=4):
    """The training loss falls; each of `names` is logged as 0.0 at every validation."""
    losses = [3.0 - 2.0 * i / (n * every) for i in range(n * every)]
    steps = {
        i: {"loss.train": [v], "params.update": dict.fromkeys(PARAMS, 0.1)}
        for i, v in enumerate(losses, 1)
    }
    events = []
    for k in range(n):
        s = every * (k + 1)
        for name in names:
            steps[s][f"metric.{name}"] = [0.0]
        events.append({"kind": "validation", "step": s, "index": k + 1})
    return make_timeline(params=PARAMS, steps=steps, events=events, facts=recorded)


def _vals(kind="train", **counts):
    return [validation(kind, epoch=e, **counts) for e in (1, 2, 3, 4)]


def test_own_metric_at_0_with_no_prediction_over_conf_is_info():
    recorded = facts(validations=_vals(predictions=0, true_positives_iou50=0))
    f = assert_fires("TD404", _tl(["metrics/mAP50(B)"], recorded))
    assert f.severity == Severity.INFO
    assert f.cause.startswith(
        "`metrics/mAP50(B)` were computed by Ultralytics' validator from its predictions: it "
        "made no prediction above conf=0.001 in any of these 4 validations (12 targets)"
    )
    assert f.fix == (
        "Train longer or with more data before judging mAP, or raise `lr0`; if it stays 0, "
        "check the labels against the images."
    )
    assert f.evidence["ultralytics_train_validations"][0] == {
        "epoch": 1,
        "images": 8,
        "targets": 12,
        "predictions": 0,
        "true_positives_iou50": 0,
    }


def test_own_metric_at_0_the_counts_do_not_explain_keeps_its_severity():
    plain = assert_fires("TD404", _tl(["metrics/mAP50(B)"]))
    f = assert_fires("TD404", _tl(["metrics/mAP50(B)"], facts(validations=_vals())))
    assert f.severity == plain.severity == Severity.WARNING
    assert (
        f.cause
        == "`metrics/mAP50(B)` were computed by Ultralytics' validator from its predictions."
    )


def test_a_callbacks_validation_names_the_model_it_validates():
    recorded = facts(validations=_vals("callback", predictions=0))
    f = assert_fires("TD404", _tl(["callback_val/metrics/mAP50(B)"], recorded))
    assert "computed by the validation your callback ran" in f.cause
    assert "no prediction above conf=0.001" in f.cause
    assert f.fix.startswith("Check which model the callback validates (TD405)")
    assert f.severity == Severity.WARNING  # not the validator's own: the 0 is not explained
    assert "ultralytics_callback_validations" in f.evidence


def test_a_metric_a_callback_writes_points_at_its_line():
    recorded = facts(
        validations=_vals(),
        user_callbacks={"on_fit_epoch_end": ["log_val_metrics (train.py:9)"]},
        metric_lines={"val/precision_cm": "train.py:13"},
    )
    plain = assert_fires("TD404", _tl(["val/precision_cm"]))
    f = assert_fires("TD404", _tl(["val/precision_cm"], recorded))
    assert f.where.source == "train.py:13" and f.where.op == "validation"
    assert f.cause.startswith(plain.cause.rstrip("."))
    assert (
        "`val/precision_cm` is not computed by the validator: an `on_fit_epoch_end` callback "
        "puts it in `trainer.metrics` (train.py:13); the validator's confusion matrix summed to "
        "0 after each of these 4 validations (`plots=False`): Ultralytics fills it only when "
        "`plots=True`, and during training only in the final epoch."
    ) in f.cause
    assert f.evidence["ultralytics_confusion_matrix_sum"] == [0.0] * 4
    assert "trainer.validator.metrics.results_dict" in f.fix


def test_without_the_line_the_callback_is_named():
    recorded = facts(
        validations=_vals(confusion_matrix_sum=5.0),
        user_callbacks={"on_fit_epoch_end": ["log_val_metrics (train.py:9)"]},
    )
    f = assert_fires("TD404", _tl(["val/precision_cm"], recorded))
    assert f.where.source == "train.py:9"
    assert "(yours: log_val_metrics (train.py:9))." in f.cause
    assert "confusion matrix" not in f.cause


def test_plain_wording_without_ultralytics_facts():
    f = assert_fires("TD404", _tl(["metrics/mAP50(B)"]))
    assert "Ultralytics" not in f.cause and "ultralytics_train_validations" not in f.evidence
