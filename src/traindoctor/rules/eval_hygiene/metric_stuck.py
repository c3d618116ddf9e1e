"""TD404 metric-stuck."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import train_loss_values
from . import _ultralytics_metric_stuck as ultralytics

VALIDATION_TOKENS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
# Metrics whose ideal is 0: constant at 0 after moving there is convergence, not a bug.
LOWER_IS_BETTER = ("loss", "err", "wer", "cer", "mae", "mse", "rmse", "dist", "perplexity")


@rule(
    code="TD404",
    name="metric-stuck",
    severity=Severity.WARNING,
    summary="A validation metric stays at exactly 0 (or bit-constant) while the training loss moves.",
    requires=("metric", "eval.run", "loss.train", "loss.backward", "params.update"),
    events=("validation",),
    facts=("ultralytics", "validation_metrics"),
    priority=62,
)
def metric_stuck(
    tl: TimelineView, *, min_validations: int = 3, min_loss_change: float = 0.01
) -> Iterator[Finding]:
    """
    ## What it detects
    A validation metric logged with `doc.log(val_<name>=...)` or computed by
    `traindoctor.evaluate()` that is exactly 0 in the last `min_validations` (or more)
    validations, or bit-identical in every validation since the first, while the training loss
    changed by more than `min_loss_change` (relative) over the same steps.

    ## Why it matters
    A model whose loss moves changes its predictions, and a metric computed from those
    predictions moves too. A metric pinned at 0 is usually not measured at all: a default
    used when the real value was not there yet (`validator.metrics or {"mAP50": 0.0}`), a
    callback that reads the validator before it ran, a key that does not exist, a threshold
    no prediction reaches. Runs are stopped, compared and selected on these numbers.

    ## How it is measured
    The logged values (`metric.<name>`) are taken at the validations: names with a
    val/eval/test token, metrics logged by `evaluate()` or inside `doc.validating()`, or metrics
    logged only at steps where `doc.validating()` ran. The training loss over the same steps comes from
    `doc.log(loss=...)` or the tensors `backward()` ran on. When `evaluate()` computed the
    metric, the finding lists what it counted in those validations: batches and targets seen,
    positive targets (or classes present), predictions all in one class or all below the
    threshold, and whether the evaluated model is the trained one (which trained between the
    validations, per the measured parameter updates). For metrics logged by hand it can only
    say that it did not see the predictions or targets.

    ## Example
    ```python
    validator(model, val_loader)                      # fills validator.results
    metrics = validator.metrics or {"mAP50": 0.0}     # .metrics is set later: always the default
    doc.log(val_mAP50=metrics["mAP50"])
    ```

    ## Fix
    ```python
    results = validator(model, val_loader)           # use what the validator returns, now
    doc.log(val_mAP50=results["mAP50"])
    # or let traindoctor run and check it: td.evaluate(model, val_loader, metrics)
    ```

    When those counts make 0 the true value (no positive target, no prediction over the
    threshold, a single predicted class), the metric is measured right and the finding is info,
    with the counts: the model has not learned yet, or collapsed (TD108 and the loss say which).

    Under Ultralytics (`traindoctor.ultralytics.attach`) the finding says where each stuck
    metric comes from, from what the integration recorded: `metrics/...` were computed by the
    trainer's validator, with its counts (targets, predictions above `conf`, true positives at IoU
    0.5; when they make 0 the true mAP the finding is info: train longer or raise `lr0`);
    `callback_val/...` by a validation a callback ran (`model.val()`, see TD405); any other name
    was put in `trainer.metrics` by an `on_fit_epoch_end` callback, whose line the finding points
    to (the validator's confusion matrix it may read stays 0 unless `plots=True`): read
    `trainer.metrics` or `trainer.validator.metrics.results_dict` there instead.

    ## Known false positives
    A metric that is legitimately 0 for the first validations of a short run (detection mAP
    in the first epochs) and would rise later; a bit-constant value from the first validation
    on a tiny validation set where the metric moves in coarse steps.
    """
    # The training loss (every step: the costly read) only once a metric is stuck (issue 15).
    train: list[tuple[int, float]] | None = None
    if not any(n in tl.signal_names(n) for n in ("loss.train", "loss.backward")):
        return
    runs = _evaluations(tl)
    stuck: list[dict[str, Any]] = []
    for name in _validation_metrics(tl, runs):
        values = [(s, float(v)) for s, vs in tl.series(name) for v in vs if _finite(v)]
        found = _stuck_run(name, values, min_validations)
        if found is None:
            continue
        steps, value = found
        if train is None:
            train = train_loss_values(tl)
            if not train:
                return
        moved = _loss_moved(train, steps[0], steps[-1], min_loss_change)
        if moved is None:
            continue
        stuck.append(
            {"metric": name[len("metric.") :], "value": value, "steps": steps, "loss": moved}
        )
    if not stuck:
        return
    first = stuck[0]
    names = [s["metric"] for s in stuck if s["value"] == first["value"]]
    steps = first["steps"]
    lo, hi = first["loss"]
    checks = _checks(tl, runs, names, steps)
    value = first["value"]
    at = "exactly 0" if value == 0.0 else f"bit-constant at {value:.6g}"
    title = (
        f"{_names(names)} {'is' if len(names) == 1 else 'are'} {at} in {len(steps)} validations "
        f"(steps {steps[0]}–{steps[-1]}) while the training loss went {lo:.4g} → {hi:.4g}"
    )
    cause, fix = _cause(checks)
    # A metric is "stuck" when it is not what the validation measured. When what evaluate()
    # counted makes the 0 the true value (no positive target, no prediction over the
    # threshold, one predicted class), the number is right and the model is what it is: said,
    # at info, with the counts; the warning is for values traindoctor cannot account for.
    explained = value == 0.0 and _zero_is_measured(checks["checked"])
    finding = tl.finding(
        title=title,
        step=steps[min_validations - 1],
        evidence={
            "metrics": {s["metric"]: s["value"] for s in stuck},
            "validations": len(steps),
            "validation_steps": steps[:20],
            "train_loss": [lo, hi],
            "checked": checks["checked"],
            "not_checked": checks["not_checked"],
        },
        where=Where(op="validation"),
        cause=cause,
        fix=fix,
        confidence=0.9 if value == 0.0 else 0.6,
        severity=Severity.INFO if explained else None,
    )
    yield ultralytics.metric_stuck(tl, finding)  # Ultralytics' words where it trained


def _zero_is_measured(checked: dict[str, Any]) -> bool:
    """The validation's own counts make 0 the true value of the metric."""
    if not checked.get("evaluations") or not checked.get("evaluated_model_is_trained"):
        return False
    positives = checked.get("target_positives")
    return bool(
        (positives is not None and not any(positives))
        or checked.get("all_predictions_below_threshold")
        or checked.get("predictions_one_class")
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _tokens(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {t.lower() for t in re.split(r"[^A-Za-z0-9]+", spaced) if t}


def _evaluations(tl: TimelineView) -> list[tuple[int, dict[str, Any]]]:
    return [(s, run) for s, runs in tl.series("eval.run") for run in runs or ()]


def _validation_metrics(tl: TimelineView, runs: list[tuple[int, dict[str, Any]]]) -> list[str]:
    by_evaluate = {f"metric.{k}" for _, r in runs for k in (r.get("values") or {})}
    by_evaluate |= {f"metric.{k}" for k in tl.fact("validation_metrics") or ()}
    validation_steps = {e["step"] for e in tl.events("validation")}
    out = []
    for name in tl.signal_names("metric."):
        key = name[len("metric.") :]
        if "loss" in key.lower():
            continue  # validation losses are TD107's
        logged_at = {s for s, _ in tl.series(name)}
        if (
            name in by_evaluate
            or _tokens(key) & VALIDATION_TOKENS
            or (validation_steps and logged_at <= validation_steps)
        ):
            out.append(name)
    return out


def _stuck_run(
    name: str, values: list[tuple[int, float]], min_validations: int
) -> tuple[list[int], float] | None:
    """Steps of the trailing run of bit-identical values and the value, when it is stuck:
    exactly 0 for at least `min_validations`, or any value never changed since the first."""
    if len(values) < min_validations:
        return None
    last = values[-1][1]
    start = len(values)
    while start > 0 and values[start - 1][1] == last:
        start -= 1
    steps = [s for s, _ in values[start:]]
    if len(set(steps)) < min_validations:
        return None
    lower_better = any(t in name.lower() for t in LOWER_IS_BETTER)
    if last == 0.0 and not lower_better:
        return steps, last
    if start == 0:
        return steps, last  # never changed at all
    return None


def _loss_moved(
    train: list[tuple[int, float]], first: int, last: int, min_change: float
) -> tuple[float, float] | None:
    """(loss at the first, at the last validation) when it changed by more than min_change."""
    span = [v for s, v in train if first <= s <= last and math.isfinite(v)]
    before = [v for s, v in train if s <= first and math.isfinite(v)]
    if before:
        span = [before[-1], *span]
    if len(span) < 2:
        return None
    scale = max(abs(span[0]), abs(span[-1]), 1e-12)
    if (max(span) - min(span)) / scale <= min_change:
        return None
    return span[0], span[-1]


def _checks(
    tl: TimelineView, runs: list[tuple[int, dict[str, Any]]], names: list[str], steps: list[int]
) -> dict[str, Any]:
    """What traindoctor could verify about these validations, and what it could not."""
    seen = [
        r for s, r in runs if steps[0] <= s <= steps[-1] and set(r.get("values") or ()) & set(names)
    ]
    checked: dict[str, Any] = {}
    not_checked: list[str] = []
    if not seen:
        not_checked.append(
            "predictions and targets: the metric was logged by hand, traindoctor saw only the "
            "number (td.evaluate() would count them)"
        )
    else:
        checked["evaluations"] = len(seen)
        checked["batches"] = [r.get("batches") for r in seen]
        checked["targets_nonempty"] = all((r.get("elements") or 0) > 0 for r in seen)
        task = seen[-1].get("task")
        if task in ("binary", "multilabel"):
            pos_t = [_total(r.get("target_pos")) for r in seen]
            pos_p = [_total(r.get("pred_pos")) for r in seen]
            checked["target_positives"] = pos_t
            checked["predicted_positives"] = pos_p
            checked["threshold"] = seen[-1].get("threshold")
            checked["all_predictions_below_threshold"] = all(p == 0 for p in pos_p)
            checked["all_predictions_positive"] = all(
                p == (r.get("elements") or -1) for p, r in zip(pos_p, seen)
            )
        elif task == "multiclass":
            hists = [r.get("pred_hist") or [] for r in seen]
            classes = [sorted(i for i, c in enumerate(h) if c) for h in hists]
            checked["target_classes_present"] = [
                sum(1 for c in (r.get("target_hist") or []) if c) for r in seen
            ]
            checked["predicted_classes"] = classes
            checked["predictions_one_class"] = all(len(c) == 1 for c in classes)
        else:
            not_checked.append("class counts: the metrics name no task (binary/multiclass/...)")
        checked["evaluated_model_is_trained"] = all(r.get("model_is_trained") for r in seen)
    changed = _evaluated_model_changed(tl, seen, steps)
    if changed is None:
        not_checked.append("whether the evaluated model changed between validations (TD405)")
    else:
        checked["evaluated_model_changed"] = changed
    return {"checked": checked, "not_checked": not_checked}


def _evaluated_model_changed(
    tl: TimelineView, seen: list[dict[str, Any]], steps: list[int]
) -> bool | None:
    """Hook for TD405: True/False when measured, None when not known.

    Known when evaluate() ran on the watched model itself and the parameter updates between
    the validations were measured. A copy (an EMA) is TD405's to judge: None here.
    """
    if not seen or not all(r.get("model_is_trained") for r in seen):
        return None
    updates = [u for s, u in tl.series("params.update") if steps[0] <= s < steps[-1]]
    if not updates:
        return None
    return any(v > 0 for u in updates for v in (u or {}).values())


def _total(v: Any) -> int:
    return sum(v) if isinstance(v, list) else int(v or 0)


def _cause(checks: dict[str, Any]) -> tuple[str, str]:
    c = checks["checked"]
    if not c.get("evaluations"):
        return (
            "the training loss moves, so the model's predictions change, yet the logged value "
            "does not: it is most likely not the value the validation computed (a default such "
            "as `metrics or {'mAP': 0.0}` used because the validator's results were not there "
            "yet, an attribute read before it is set, a missing key, an integer division). "
            "traindoctor saw only the logged numbers, not predictions or targets",
            "print the object you log from at the moment you log it and log what the "
            "validation returns; or compute the metrics with "
            "td.evaluate(model, val_loader, metrics), which checks what it saw",
        )
    if not c.get("targets_nonempty"):
        return (
            "the validation saw no targets (an empty loader, or every target ignored): the "
            "metric is computed on nothing",
            "check the validation loader and ignore_index",
        )
    if c.get("target_positives") is not None and not any(c["target_positives"]):
        return (
            "the validation targets hold no positive at all in these validations, so the "
            "metric can only be 0 or undefined (see TD406)",
            "check how the validation targets are built (thresholds, label mapping, split)",
        )
    if c.get("all_predictions_below_threshold"):
        return (
            f"no prediction reached the threshold {c.get('threshold')} in any of these "
            "validations: the model predicts every element negative",
            "check that the threshold fits the outputs (logits vs probabilities) and the class "
            "balance (pos_weight); lower the threshold or report a threshold-free metric",
        )
    if c.get("predictions_one_class"):
        return (
            f"the model predicted one class only ({c['predicted_classes'][-1]}) in every one "
            "of these validations: it collapsed to a constant prediction",
            "check the class balance and the loss (class weights), and the learning rate",
        )
    if c.get("evaluated_model_changed") is False:
        return (
            "the evaluated model did not change between these validations",
            "make the optimizer step reach the evaluated model; see TD104/TD405",
        )
    return (
        "evaluate() saw targets and varied predictions, yet the metric does not move: check "
        "its configuration (task, num_classes, threshold, average) against the outputs",
        "compare the metric with one computed by hand on one validation batch",
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")
