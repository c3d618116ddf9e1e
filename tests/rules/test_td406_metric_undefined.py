"""TD406 metric-undefined on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]


def _entry(metric="val_auroc", reason="no positive target", raw=0.0, pos_t=0, pos_p=900):
    return {
        "metric": metric,
        "kind": metric.removeprefix("val_"),
        "class": None,
        "reason": reason,
        "raw": raw,
        "task": "binary",
        "counts": {"elements": 8192, "target_pos": pos_t, "pred_pos": pos_p},
        "validation": 1,
    }


def _timeline(per_validation, metrics=("val_auroc", "val_recall")):
    """per_validation[k]: the eval.undefined entries of validation k (at step 10*(k+1))."""
    steps = {}
    for k, entries in enumerate(per_validation):
        s = 10 * (k + 1)
        run = {"task": "binary", "values": dict.fromkeys(metrics, None)}
        steps[s] = {"eval.run": [run], "loss.train": [1.0]}
        if entries:
            steps[s]["eval.undefined"] = list(entries)
        for m in metrics:
            steps[s][f"metric.{m}"] = [float("nan") if entries else 0.7]
    return make_timeline(params=PARAMS, steps=steps)


def test_fires_for_auroc_and_recall_without_positive_targets():
    entries = [_entry(), _entry("val_recall")]
    f = assert_fires("TD406", _timeline([entries] * 3))
    assert f.severity is Severity.WARNING
    assert f.title.startswith("`val_auroc`, `val_recall` are undefined in 3 of 3 validation(s)")
    assert "no positive target (0 positive target(s) and 900 positive prediction(s)" in f.title
    assert f.step == 10
    ev = f.evidence["metrics"]["val_auroc"]
    assert ev["library_returned"] == [0.0, 0.0, 0.0]
    assert ev["counts"] == {"elements": 8192, "target_pos": 0, "pred_pos": 900}
    assert "returned 0" in f.cause and "NaN" in f.cause


def test_all_defined_is_silent():
    assert_silent("TD406", _timeline([[], [], []]))


def test_no_positive_prediction_once_is_only_noted():
    entry = _entry("val_precision", "no positive prediction", pos_t=1000, pos_p=0)
    f = assert_fires("TD406", _timeline([[entry], [], []], metrics=("val_precision",)))
    assert f.severity is Severity.INFO
    assert "1 of 3" in f.title
    assert "predicted every element negative" in f.cause


def test_no_positive_prediction_in_every_validation_is_a_warning():
    entry = _entry("val_precision", "no positive prediction", pos_t=1000, pos_p=0)
    f = assert_fires("TD406", _timeline([[entry]] * 3, metrics=("val_precision",)))
    assert f.severity is Severity.WARNING


def test_data_side_metric_leads_the_title():
    prec = _entry("val_precision", "no positive prediction", pos_t=1000, pos_p=0)
    iou = _entry("val_iou", "the class is absent from both targets and predictions", pos_p=0)
    tl = _timeline([[prec], [prec, iou], []], metrics=("val_precision", "val_iou"))
    f = assert_fires("TD406", tl)
    assert f.title.startswith("`val_iou` is undefined in 1 of 3")
    assert "also `val_precision` in some" in f.title
    assert f.severity is Severity.WARNING


def _logged(name, values):
    steps = {
        10 * (k + 1): {f"metric.{name}": [v], "loss.train": [1.0]} for k, v in enumerate(values)
    }
    return make_timeline(params=PARAMS, steps=steps)


def test_hand_logged_auroc_at_exactly_zero_is_probably_undefined():
    f = assert_fires("TD406", _logged("val_auroc", [0.0, 0.0]))
    assert f.severity is Severity.WARNING
    assert f.evidence["measured"] is False
    assert "2 of 2" in f.title
    assert f.confidence < 1.0


def test_hand_logged_names_recognized():
    for name in ("AUROC", "valAUC", "val_roc_auc", "val_AP", "val_average_precision"):
        assert_fires("TD406", _logged(name, [0.0]))


def test_hand_logged_map_and_real_aurocs_are_silent():
    assert_silent("TD406", _logged("val_mAP", [0.0, 0.0]))
    assert_silent("TD406", _logged("val_auroc", [0.61, 0.72]))
    assert_silent("TD406", _logged("val_precision", [0.0, 0.0]))  # 0 is legal: unknown
