"""TD404 on Ultralytics metrics: what the validator measured (its own `metrics/...`), which
validation computed them (one a callback ran, `callback_val/...`), or that a callback wrote
them into `trainer.metrics` (not measured at all), from the counts the validator collected."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...findings import Finding, Severity
from ...timeline import TimelineView
from .._ultralytics import CALLBACK_VAL, names, ultralytics_facts, validations

_COUNTS = ("epoch", "images", "targets", "predictions", "true_positives_iou50")


def metric_stuck(tl: TimelineView, f: Finding) -> Finding:
    facts = ultralytics_facts(tl)
    if facts is None:
        return f
    stuck = list((f.evidence or {}).get("metrics") or {})
    own = [m for m in stuck if m.startswith("metrics/")]
    by_callback = [m for m in stuck if m.startswith(CALLBACK_VAL)]
    added = [m for m in stuck if m not in own and m not in by_callback]
    parts, evidence = [], {}
    for kind, metrics in (("train", own), ("callback", by_callback)):
        vals = validations(facts, kind)
        if metrics and vals:
            parts.append(_measured(kind, metrics, vals))
            evidence[f"ultralytics_{kind}_validations"] = [
                {k: v.get(k) for k in _COUNTS} for v in vals
            ]
    where, fix = f.where, f.fix
    cause = f.cause if added else ""
    vals = validations(facts, "train")
    if added:
        text, where = _written_by_callback(facts, added, vals, where)
        cms = [v.get("confusion_matrix_sum") for v in vals]
        if vals and all(c == 0 for c in cms):
            evidence["ultralytics_confusion_matrix_sum"] = cms
        parts.insert(0, text)
        fix = (
            "Read the validator's results where Ultralytics puts them: `trainer.metrics` "
            "(`metrics/mAP50(B)`, `metrics/precision(B)`, ...) or "
            "`trainer.validator.metrics.results_dict`, at `on_fit_epoch_end`."
        )
    elif by_callback:
        fix = (
            "Check which model the callback validates (TD405): during training validate the "
            "trained one, or read `trainer.metrics`, which Ultralytics fills after each epoch."
        )
    elif own:
        fix = (
            "Train longer or with more data before judging mAP, or raise `lr0`; if it stays 0, "
            "check the labels against the images."
        )
    if not parts:
        return f
    body = " ".join(parts)
    if cause and body not in cause:
        cause = f"{cause.rstrip('.')}. {body}"
    cause = cause or body
    severity = f.severity
    zeros = all(v == 0 for v in ((f.evidence or {}).get("metrics") or {}).values())
    if own and not added and not by_callback and zeros and _counts_explain_zero(vals):
        # The validator's own counts make 0 the true mAP (no prediction over conf, or none at
        # IoU 0.5): the metric is measured right; a model trained from scratch is not there yet.
        severity = Severity.INFO
    return replace(
        f, severity=severity, cause=cause, fix=fix, where=where, evidence={**f.evidence, **evidence}
    )


def _measured(kind: str, metrics: list[str], vals: list[dict[str, Any]]) -> str:
    """Why metrics a validation computed are what they are, from the validator's counts."""
    who = "Ultralytics' validator" if kind == "train" else "the validation your callback ran"
    preds = [v.get("predictions") for v in vals]
    tps = [v.get("true_positives_iou50") for v in vals]
    targets = [v.get("targets") for v in vals]
    text = f"{names(metrics)} were computed by {who} from its predictions"
    if all(t == 0 for t in targets):
        text += ": the validation images hold no labelled object at all"
    elif all(p == 0 for p in preds):
        text += (
            f": it made no prediction above conf={vals[-1].get('conf')} in any of these "
            f"{len(vals)} validations ({targets[-1]} targets): every class score is below "
            "the threshold (a model trained from scratch starts near 4e-4, the Detect "
            "head's prior, and needs more epochs or a higher lr0)"
        )
    elif all(t == 0 for t in tps if t is not None):
        text += (
            f": it predicted boxes ({preds}) but none overlaps a target at IoU 0.5: the "
            "boxes are not learned yet, or the labels do not match the images (YOLO "
            "labels are `class x_center y_center width height`, normalized to 0-1)"
        )
    return text + "."


def _written_by_callback(
    facts: dict[str, Any], added: list[str], vals: list[dict[str, Any]], where: Any
) -> tuple[str, Any]:
    """Metrics no validator computed: the `on_fit_epoch_end` callback line that writes them."""
    cbs = (facts.get("user_callbacks") or {}).get("on_fit_epoch_end") or []
    written = (facts.get("metric_lines") or {}).get(added[0])
    it = "it" if len(added) == 1 else "them"
    text = (
        f"{names(added)} {'is' if len(added) == 1 else 'are'} not computed by the "
        f"validator: an `on_fit_epoch_end` callback puts {it} in `trainer.metrics`"
    )
    if written:
        text += f" ({written})"
        where = replace(where, source=written)
    elif cbs:
        text += f" (yours: {', '.join(cbs)})"
        where = replace(where, source=cbs[0].rsplit("(", 1)[-1].rstrip(")"))
    cms = [v.get("confusion_matrix_sum") for v in vals]
    if vals and all(c == 0 for c in cms):
        text += (
            f"; the validator's confusion matrix summed to 0 after each of these "
            f"{len(vals)} validations (`plots={vals[-1].get('plots')}`): Ultralytics fills "
            "it only when `plots=True`, and during training only in the final epoch"
        )
    return text + ".", where


def _counts_explain_zero(vals: list[dict[str, Any]]) -> bool:
    if not vals:
        return False
    return all(
        v.get("targets") == 0 or v.get("predictions") == 0 or v.get("true_positives_iou50") == 0
        for v in vals
    )
