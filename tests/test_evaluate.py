"""traindoctor.evaluate(): safe validation, metrics never silently wrong, facts recorded."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelPrecision,
)
from torchmetrics.segmentation import MeanIoU

import traindoctor as td
from traindoctor.errors import UsageError
from traindoctor.evaluation import undefined_reason
from traindoctor.probes.metrics import EvalTally


class Fixed(nn.Module):
    """Returns the scores it was built with, batch by batch: the metric inputs are exact."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(0.5)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        assert not self.training and not torch.is_grad_enabled()
        return self.drop(scores) * self.w


def _loader(scores, target, batch=4):
    return [(scores[i : i + batch], target[i : i + batch]) for i in range(0, len(target), batch)]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_matches_torchmetrics_when_defined_and_restores_modes():
    g = torch.Generator().manual_seed(0)
    scores, target = torch.rand(16, generator=g), torch.tensor([0, 1] * 8)
    model = Fixed()
    model.train()
    model.drop.eval()  # a submodule the user froze in eval mode stays so
    metrics = {"auroc": BinaryAUROC(), "acc": BinaryAccuracy(), "recall": BinaryRecall()}
    out = td.evaluate(model, _loader(scores, target), metrics)
    for name, m in {
        "auroc": BinaryAUROC(),
        "acc": BinaryAccuracy(),
        "recall": BinaryRecall(),
    }.items():
        m.update(scores, target)
        assert out[name] == pytest.approx(float(m.compute()), abs=0), name
    assert model.training and not model.drop.training
    assert torch.is_grad_enabled()
    # The metrics are reset first: a second run gives the same numbers.
    assert td.evaluate(model, _loader(scores, target), metrics) == out


def test_undefined_metrics_are_nan_with_a_warning_without_a_doctor():
    scores, target = torch.rand(12), torch.zeros(12, dtype=torch.long)
    metrics = MetricCollection(
        {"auroc": BinaryAUROC(), "recall": BinaryRecall(), "acc": BinaryAccuracy()}
    )
    with pytest.warns(UserWarning) as caught:
        out = td.evaluate(Fixed(), _loader(scores, target), metrics)
    assert math.isnan(out["auroc"]) and math.isnan(out["recall"])
    assert out["acc"] == pytest.approx(float((scores <= 0.5).float().mean()))
    text = " ".join(str(w.message) for w in caught)
    assert "val_auroc is undefined here: no positive target" in text


def test_precision_without_positive_prediction_and_iou_of_an_absent_class():
    scores = torch.full((8,), 0.2)  # nothing reaches the 0.5 threshold
    with_pos = torch.tensor([0, 1, 0, 0, 0, 0, 0, 0])
    out = _quiet(
        td.evaluate,
        Fixed(),
        _loader(scores, with_pos),
        {"p": BinaryPrecision(), "r": BinaryRecall(), "iou": BinaryJaccardIndex()},
    )
    assert math.isnan(out["p"]) and out["r"] == 0.0 and out["iou"] == 0.0
    out = _quiet(
        td.evaluate,
        Fixed(),
        _loader(scores, torch.zeros(8, dtype=torch.long)),
        BinaryJaccardIndex(),
    )
    assert list(out) == ["jaccardindex"] and math.isnan(out["jaccardindex"])


def test_threshold_of_the_metric_is_used():
    scores, target = torch.full((8,), 0.2), torch.tensor([1, 0] * 4)
    out = td.evaluate(Fixed(), _loader(scores, target), BinaryPrecision(threshold=0.1))
    assert out["precision"] == 0.5


def test_multiclass_per_class_values_nan_only_where_undefined():
    # 3 classes; class 2 is never a target nor predicted.
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 3.0, 0]] * 2)
    target = torch.tensor([0, 1, 1, 1] * 2)
    metrics = {
        "recall": MulticlassRecall(num_classes=3, average=None),
        "precision": MulticlassPrecision(num_classes=3, average=None),
        "iou": MulticlassJaccardIndex(num_classes=3, average=None),
        "miou": MulticlassJaccardIndex(num_classes=3),
    }
    out = _quiet(td.evaluate, Fixed(), _loader(logits, target), metrics)
    assert out["recall_0"] == 1.0 and out["recall_1"] == pytest.approx(2 / 3)
    assert math.isnan(out["recall_2"]) and math.isnan(out["precision_2"])
    assert math.isnan(out["iou_2"])  # torchmetrics returns 0.0 here
    assert out["miou"] == pytest.approx((0.5 + 2 / 3) / 2)  # averaged over defined classes


def test_segmentation_mean_iou_per_class_minus_one_becomes_nan():
    pred = torch.zeros(4, 8, 8, dtype=torch.long)
    pred[:, :4] = 1
    target = pred.clone()

    class Index(nn.Module):
        def forward(self, x):
            return x

    out = _quiet(
        td.evaluate,
        Index(),
        [(pred, target)],
        MeanIoU(num_classes=3, per_class=True, input_format="index"),
    )
    assert out["meaniou_0"] == 1.0 and out["meaniou_1"] == 1.0
    assert math.isnan(out["meaniou_2"])


def test_tally_counts_match_brute_force():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 6, generator=g) * 3  # outside [0, 1]: sigmoid first
    target = (torch.rand(3, 5, 6, generator=g) > 0.7).long()
    target[0, 0, 0] = 255
    t = EvalTally("binary", threshold=0.4, ignore_index=255)
    t.add(logits, target)
    t.add(logits.sigmoid(), target)  # probabilities: thresholded as they are
    counts = t.read()
    keep = target != 255
    pos_p = int(((logits.sigmoid() > 0.4) & keep).sum())
    assert counts["elements"] == 2 * int(keep.sum())
    assert counts["target_pos"] == 2 * int((target == 1).sum())
    assert counts["pred_pos"] == 2 * pos_p
    assert (counts["batches"], counts["samples"]) == (2, 6)

    m = EvalTally("multilabel", threshold=0.5)
    m.add(logits, target.clamp(max=1))
    counts = m.read()
    assert counts["target_pos"] == target.clamp(max=1).sum((0, 2)).tolist()
    assert counts["pred_pos"] == (logits.sigmoid() > 0.5).sum((0, 2)).tolist()

    c = EvalTally("multiclass", classes=5)
    labels = torch.randint(0, 5, (3, 6), generator=g)
    c.add(logits, labels)
    counts = c.read()
    assert counts["target_hist"] == torch.bincount(labels.flatten(), minlength=5).tolist()
    assert counts["pred_hist"] == torch.bincount(logits.argmax(1).flatten(), minlength=5).tolist()


def test_undefined_reason_table():
    assert undefined_reason("auroc", 10, 0, 3) == "no positive target"
    assert undefined_reason("auroc", 10, 10, 3) == "no negative target"
    assert undefined_reason("auroc", 10, 4, 0) is None
    assert undefined_reason("precision", 10, 4, 0) == "no positive prediction"
    assert undefined_reason("recall", 10, 0, 4) == "no positive target"
    assert undefined_reason("specificity", 10, 10, 4) == "no negative target"
    assert undefined_reason("jaccardindex", 10, 0, 0).startswith("the class is absent")
    assert undefined_reason("f1score", 10, 0, 1) is None
    assert undefined_reason("accuracy", 0, 0, 0) == "no target to compare with"


def test_multilabel_per_label():
    logits = torch.tensor([[5.0, -5.0], [5.0, -5.0]])
    target = torch.tensor([[1, 0], [0, 0]])
    out = _quiet(
        td.evaluate, Fixed(), [(logits, target)], MultilabelPrecision(num_labels=2, average=None)
    )
    assert out["precision_0"] == 0.5 and math.isnan(out["precision_1"])


def test_empty_loader_gives_nan():
    with pytest.warns(UserWarning, match="no batch"):
        out = td.evaluate(Fixed(), [], {"auroc": BinaryAUROC()})
    assert math.isnan(out["auroc"])


def test_usage_errors():
    with pytest.raises(UsageError, match="step_fn"):
        td.evaluate(Fixed(), [{"x": torch.zeros(2)}], BinaryAUROC())
    with pytest.raises(UsageError, match="torchmetrics"):
        td.evaluate(Fixed(), [], [BinaryAUROC()])
    with pytest.raises(UsageError, match="nn.Module"):
        td.evaluate(lambda x: x, [], BinaryAUROC())


def _training(tmp_path, evaluate_with):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    val = [(x[i : i + 16], torch.zeros(16, dtype=torch.long)) for i in (0, 16)]  # one class
    step_fn = lambda m, b: (m(b[0]).squeeze(1), b[1])  # noqa: E731
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for step in range(12):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        loss.backward()
        opt.step()
        doc.log(loss=loss)
        if step % 4 == 3:
            evaluate_with(model, val, step_fn, doc)
    report = doc.close()
    return model, report, doc


def test_with_a_doctor_logs_records_and_reports(tmp_path):
    results = []

    def run(model, val, step_fn, doc):
        # The attached doctor is found without being passed.
        results.append(_quiet(td.evaluate, model, val, {"auroc": BinaryAUROC()}, step_fn))

    _, report, doc = _training(tmp_path, run)
    assert all(math.isnan(r["auroc"]) for r in results)
    tl = doc.timeline
    assert [len(v) for _, v in tl.series("metric.val_auroc")] == [1, 1, 1]
    runs = [r for _, rs in tl.series("eval.run") for r in rs]
    assert [r["batches"] for r in runs] == [2, 2, 2]
    assert all(r["target_pos"] == 0 and r["elements"] == 32 for r in runs)
    assert all(r["model_is_trained"] and r["values"] == {"val_auroc": None} for r in runs)
    assert len(tl.events("validation")) == 3
    codes = [f.code for f in report.findings]
    assert "TD406" in codes, codes
    assert not report.internal_errors


def test_never_changes_the_training(tmp_path):
    def by_hand(model, val, step_fn, doc):
        with doc.validating(model):
            for b in val:
                step_fn(model, b)

    def with_evaluate(model, val, step_fn, doc):
        _quiet(td.evaluate, model, val, {"auroc": BinaryAUROC()}, step_fn, doctor=doc)

    a, _, _ = _training(tmp_path, by_hand)
    b, _, _ = _training(tmp_path, with_evaluate)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_an_internal_error_is_recorded_and_values_still_returned(tmp_path, monkeypatch):
    def broken(self, preds, target):
        raise RuntimeError("tally broke")

    monkeypatch.setattr(EvalTally, "add", broken)
    seen = []

    def run(model, val, step_fn, doc):
        seen.append(_quiet(td.evaluate, model, val, {"auroc": BinaryAUROC()}, step_fn, doctor=doc))

    _, report, _ = _training(tmp_path, run)
    assert seen and all(r["auroc"] == 0.0 for r in seen)  # torchmetrics' own value, unjudged
    assert any("tally broke" in e["error"] for e in report.internal_errors)


def test_evaluate_is_the_function_whatever_was_imported_first():
    import traindoctor.evaluation  # noqa: F401  (the module has another name than the function)

    assert callable(td.evaluate) and td.evaluate.__module__ == "traindoctor.evaluation"
    out = td.evaluate(
        nn.Identity(), [(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))], BinaryAccuracy()
    )
    assert out == {"accuracy": 1.0}


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's evaluate() example, found by its marker comment, runs as written."""
    import re
    import runpy
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    blocks = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "readme-example: evaluate" in b
    ]
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about the single class itself
        ns = runpy.run_path(str(script))
    assert all(math.isnan(v) for v in ns["results"].values())
    assert list(ns["results"]) == ["auroc", "recall"]
    assert ns["doc"].report.findings[0].code == "TD406"
