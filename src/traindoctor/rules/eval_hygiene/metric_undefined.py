"""TD406 metric-undefined."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .metric_stuck import _tokens

WHAT_IT_NEEDS = {
    "no positive target": "at least one positive target",
    "no negative target": "at least one negative target",
    "no positive prediction": "at least one positive prediction",
    "the class is absent from both targets and predictions": "the class in the targets or the "
    "predictions",
    "no target to compare with": "targets",
    "no batch": "at least one batch",
    "only one class in the targets": "two classes in the targets",
}
# Reasons that are about the data (targets), not about what the model predicted.
DATA_REASONS = {
    "no positive target",
    "no negative target",
    "the class is absent from both targets and predictions",
    "no target to compare with",
    "no batch",
    "only one class in the targets",
}


@rule(
    code="TD406",
    name="metric-undefined",
    severity=Severity.WARNING,
    summary="A metric was computed where it has no value (AUROC with one class in the targets).",
    requires=("eval.undefined", "eval.run", "metric"),
    facts=("metric_calls",),
    priority=58,
)
def metric_undefined(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A metric computed on data where it is undefined: AUROC or average precision with a
    single class in the targets, precision with no positive prediction, recall with no
    positive target, specificity with no negative target, F1/IoU/Dice of a class absent from
    both predictions and targets, any metric of an empty validation. Also, for metrics logged
    by hand, an AUROC/AP-named metric logged as exactly 0.0.

    ## Why it matters
    Libraries return a number anyway: torchmetrics returns 0 for AUROC with no positive
    target (with a warning), scikit-learn raises and the caller often substitutes 0. The
    report then shows "AUROC: 0.0000", which reads as a perfectly inverted model, and
    recall 0, which reads as a model that finds nothing, when the validation simply had
    nothing to find.

    ## How it is measured
    `traindoctor.evaluate()` counts on the device, per validation, the positive targets and
    positive predictions (at the metric's threshold) per class, and checks each metric
    against what it needs. Such a value is returned and logged as NaN, and recorded with the
    metric, the class, the reason and the counts. For metrics logged by hand with
    `doc.log(...)` only the number is known: an AUROC/AP at exactly 0.0 (AUROC 0 means every
    negative ranked above every positive, which real models practically never do; AP is
    positive whenever a positive exists) is reported as probably undefined. It cannot see
    undefined precision/recall/IoU logged by hand, whose 0 is also a legal value.

    ## Example
    ```python
    masks = (raw_masks > 127).long()        # masks are stored as 0/1: every pixel becomes 0
    auroc.update(model(images).sigmoid(), masks)
    print(f"AUROC: {auroc.compute():.4f}")  # AUROC: 0.0000
    ```

    ## Fix
    ```python
    masks = (raw_masks > 0).long()
    results = td.evaluate(model, val_loader, {"auroc": BinaryAUROC()})   # NaN and a reason if undefined
    ```

    ## Known false positives
    A validation set that legitimately holds no positives (a negative-only test split): the
    metric is still undefined there, so drop it for that split. A hand-logged AUROC of exactly
    0 from a model whose labels are inverted is a real (different) bug.
    """
    runs = [r for _, rs in tl.series("eval.run") for r in rs or ()]
    entries = [(s, e) for s, es in tl.series("eval.undefined") for e in es or ()]
    if entries:
        yield _measured(tl, entries, runs)
    evaluated = {k for r in runs for k in (r.get("values") or {})}
    yield from _logged_zero(tl, evaluated)


def _measured(
    tl: TimelineView, entries: list[tuple[int, dict[str, Any]]], runs: list[dict[str, Any]]
) -> Finding:
    by_metric: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for step, e in entries:
        by_metric.setdefault(e["metric"], []).append((step, e))
    evidence: dict[str, Any] = {}
    for name, items in by_metric.items():
        last = items[-1][1]
        computed = (
            sum(1 for r in runs if name in (r.get("values") or {}))
            or (tl.fact("metric_calls") or {}).get(name)
            or len(items)
        )
        evidence[name] = {
            "reason": last.get("reason"),
            "class": last.get("class"),
            "validations_undefined": len(items),
            "validations": computed,
            "counts": last.get("counts"),
            "library_returned": [e.get("raw") for _, e in items][:10],
        }

    def serious(name: str) -> bool:
        # The data cannot support the metric, or it never had a value: worth a warning. A
        # model that predicted no positive in some early validation is only noted.
        ev = evidence[name]
        return ev["reason"] in DATA_REASONS or ev["validations_undefined"] >= ev["validations"]

    names = sorted(
        by_metric,
        key=lambda n: (
            not serious(n),
            -evidence[n]["validations_undefined"],
            list(by_metric).index(n),
        ),
    )
    head = evidence[names[0]]
    same = [
        n
        for n in names
        if (evidence[n]["reason"], evidence[n]["validations_undefined"], evidence[n]["class"])
        == (head["reason"], head["validations_undefined"], head["class"])
    ]
    others = [n for n in names if n not in same]
    reason = head["reason"]
    cls = f" for class {head['class']}" if head["class"] is not None else ""
    counts = head.get("counts") or {}
    seen = ""
    if "target_pos" in counts:
        seen = (
            f" ({counts['target_pos']} positive target(s) and {counts['pred_pos']} positive "
            f"prediction(s) among {counts['elements']} elements)"
        )
    title = (
        f"{_shown(same)} {'is' if len(same) == 1 else 'are'} undefined in "
        f"{head['validations_undefined']} of {head['validations']} validation(s){cls}: "
        f"{reason}{seen}"
    )
    if others:
        title += f"; also {_shown(others)} in some"
    returned = [v for v in head["library_returned"] if v is not None]
    said = f"; the metric itself returned {returned[-1]:g}" if returned else ""
    needs = WHAT_IT_NEEDS.get(reason or "", "data it can be computed on")
    first = by_metric[names[0]][-1][1]
    source = first.get("source")
    if source is not None:
        # Called by the script itself (scikit-learn, torchmetrics' functions): no NaN of ours.
        value = (first.get("counts") or {}).get("target_value")
        said = (
            "; it raised"
            if first.get("raised")
            else f"; it returned {returned[-1]:g}"
            if returned
            else ""
        )
        seen = f"every target was {value:g}" if value is not None else "one class only"
        return tl.finding(
            title=title.replace(" validation(s)", " call(s)"),
            step=by_metric[names[0]][0][0],
            evidence={"metrics": evidence},
            where=Where(op=names[0].split(" ", 1)[0], source=source),
            cause=(
                f"`{names[0]}` needs {needs} and {seen}{said}: the value (often replaced by 0 "
                "when the call raises) describes the data, not the model"
            ),
            fix=(
                "check how the targets are built (mask thresholds, label mapping); compute "
                "ranking metrics over the whole validation set, not per batch or per image, "
                "and skip them where the targets hold one class"
            ),
            severity=None if serious(names[0]) else Severity.INFO,
        )
    return tl.finding(
        title=title,
        step=by_metric[names[0]][0][0],
        evidence={"metrics": evidence},
        where=Where(op="validation"),
        cause=(
            f"`{names[0]}` needs {needs}{cls} and the validation had none{said}; "
            "traindoctor.evaluate() returned and logged NaN instead. "
            + (
                "A number there describes the data split, not the model"
                if reason in DATA_REASONS
                else "The model predicted every element negative in that validation"
            )
        ),
        fix=(
            "check how the validation targets are built (mask thresholds, label mapping, "
            "a split with both classes, e.g. stratified); compute such metrics over the whole "
            "validation set, not per image or per batch; drop them for splits that "
            "legitimately hold one class"
        )
        if head["reason"] in DATA_REASONS
        else (
            "the model predicted no positive there: check the threshold against the outputs "
            "(logits vs probabilities) and the class balance, or report a threshold-free metric"
        ),
        severity=None if serious(names[0]) else Severity.INFO,
        confidence=1.0,
    )


def _shown(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names[:4]) + (
        f" and {len(names) - 4} more" if len(names) > 4 else ""
    )


def _is_ranking_name(name: str) -> bool:
    tokens = _tokens(name)
    low = name.lower()
    if "map" in low or "m" in tokens or "mean" in tokens:
        return False  # mAP (detection): 0 is a legal value when nothing matches
    if "auroc" in low or "auc" in tokens or "rocauc" in low:
        return True
    return "ap" in tokens or "averageprecision" in low or {"average", "precision"} <= tokens


def _logged_zero(tl: TimelineView, evaluated: set[str]) -> Iterator[Finding]:
    zeros: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for signal_name in tl.signal_names("metric."):
        name = signal_name[len("metric.") :]
        if name in evaluated or not _is_ranking_name(name):
            continue
        for step, values in tl.series(signal_name):
            for v in values or ():
                counts[name] = counts.get(name, 0) + 1
                if v == 0.0:
                    zeros.setdefault(name, []).append(step)
    if not zeros:
        return
    names = list(zeros)
    first = names[0]
    shown = ", ".join(f"`{n}`" for n in names[:4])
    yield tl.finding(
        title=(
            f"{shown} logged as exactly 0.0 in {len(zeros[first])} of {counts[first]} "
            f"value(s): probably computed with a single class in the targets"
        ),
        step=zeros[first][0],
        evidence={
            "metrics": {
                n: {"zero_at_steps": s[:20], "values": counts[n]} for n, s in zeros.items()
            },
            "measured": False,
        },
        where=Where(op="doc.log"),
        cause=(
            "an AUROC of 0 means every negative scored above every positive, which a trained "
            "model practically never does, and an AP of 0 is impossible when a positive exists; "
            "libraries return 0 (torchmetrics, with a warning) or callers substitute 0 when "
            "the targets hold one class. traindoctor saw only the logged number, not the "
            "targets, so this is not measured"
        ),
        fix=(
            "check that the targets hold both classes where the metric is computed "
            "(`target.unique()`), compute it over the whole validation set, or use "
            "td.evaluate(model, val_loader, metrics), which returns NaN with the reason"
        ),
        confidence=0.6,
    )
