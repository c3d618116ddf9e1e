"""`traindoctor.evaluate()`: a whole validation run safely, with metrics that are never
silently wrong.

    results = td.evaluate(model, val_loader, {"auroc": BinaryAUROC(), "iou": BinaryJaccardIndex()})

It runs the model in eval mode under `torch.no_grad()` (inside `doc.validating(model)` when a
doctor is attached), feeds torchmetrics metrics batch by batch, and counts on the device what
it saw: targets and predictions per class. A metric computed where it has no value (AUROC with
one class in the targets, recall without a positive target, precision without a positive
prediction, IoU/Dice of a class absent from both) is returned and logged as NaN, never as the 0
torchmetrics returns, and the reason goes into the report (TD406).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ._guard import Guard
from .errors import UsageError
from .probes.metrics import BINARY, MULTICLASS, MULTILABEL, EvalTally

StepFn = Callable[[torch.nn.Module, Any], tuple[Any, Any]]

# What each metric needs to have a value, by its class name without the task prefix.
RANKING = {"auroc", "averageprecision", "roc", "precisionrecallcurve"}
NEEDS_PRED_POS = {"precision"}
NEEDS_TARGET_POS = {"recall", "sensitivityatspecificity"}
NEEDS_TARGET_NEG = {"specificity"}
NEEDS_ANY_POS = {"f1score", "fbetascore", "jaccardindex", "meaniou", "dice", "dicescore"}
SEGMENTATION = {"meaniou", "dicescore", "generalizeddicescore"}  # multiclass by construction


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Any],
    metrics: Any,
    step_fn: StepFn | None = None,
    *,
    doctor: Any = None,
    prefix: str = "val_",
) -> dict[str, float]:
    """Run one validation of `model` over `loader` and return {metric name: value}.

    `metrics` is a torchmetrics `MetricCollection`, a dict name -> `Metric`, or one `Metric`.
    `step_fn(model, batch) -> (preds, target)` defaults to `model(x), y` for `(x, y)` batches.
    The metrics are reset, updated per batch and computed; each value is logged through the
    attached doctor as `doc.log(<prefix><name>=value)`. A value with no definition on this
    data (see TD406) is NaN. Without a doctor, the same runs in eval mode + `no_grad` with every
    module's mode restored, and undefined metrics are reported with a warning.
    """
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"evaluate() takes the torch.nn.Module to validate, got {type(model).__name__}; "
            "pass e.g. td.evaluate(model, val_loader, metrics)"
        )
    collection = _as_collection(metrics)
    step = step_fn or _default_step
    doc = doctor if doctor is not None else _current_doctor(model)
    guard = doc.guard if doc is not None else Guard()
    collection.reset()
    tally: EvalTally | None = None
    batches = 0
    with _validating(doc, model):
        for batch in loader:
            preds, target = step(model, batch)
            collection.update(preds, target)
            batches += 1
            if batches == 1:
                tally = guard.call("evaluate tally", _new_tally, collection, preds, target)
            if tally is not None:
                guard.call("evaluate tally", tally.add, preds, target)
        counts: dict[str, Any] | None
        if batches == 0:
            raw: dict[str, Any] = {}  # compute() before any update() only warns and returns 0
            counts = {"batches": 0, "samples": 0, "task": None, "elements": 0}
        else:
            raw = collection.compute()
            # None when the tally failed (recorded as an internal error): nothing is judged
            counts = guard.call("evaluate tally", tally.read) if tally is not None else None
        judged = guard.call("evaluate judge", _judge, collection, raw, counts)
        if judged is None:  # traindoctor failed: give the raw values, never hide them
            values = dict(_flatten(raw))
            undefined: list[dict[str, Any]] = []
        else:
            values, undefined = judged
        if doc is not None:
            _log(doc, values, prefix)
            guard.call("probe metrics", _record, doc, model, prefix, values, raw, counts, undefined)
    if doc is None:
        for entry in undefined:
            warnings.warn(f"traindoctor.evaluate: {_sentence(entry, prefix)}", stacklevel=2)
    return values


def _default_step(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, list | tuple) and len(batch) == 2:
        x, y = batch
        return model(x), y
    raise UsageError(
        f"evaluate() got a batch of type {type(batch).__name__} "
        f"{'of length ' + str(len(batch)) if isinstance(batch, list | tuple) else ''}"
        "; the default step needs (inputs, targets) pairs. Pass "
        "step_fn=lambda model, batch: (model(batch['image']), batch['mask'])"
    )


def _as_collection(metrics: Any) -> Any:
    from torchmetrics import Metric, MetricCollection

    if isinstance(metrics, MetricCollection):
        return metrics
    if isinstance(metrics, Metric):
        return MetricCollection({_short_name(metrics): metrics})
    if (
        isinstance(metrics, dict)
        and metrics
        and all(isinstance(m, Metric) for m in metrics.values())
    ):
        return MetricCollection(dict(metrics))
    raise UsageError(
        f"evaluate() takes torchmetrics metrics, got {type(metrics).__name__}; pass a "
        "MetricCollection, a dict such as {'auroc': BinaryAUROC()}, or one Metric"
    )


def _short_name(metric: Any) -> str:
    return _base_name(metric) or type(metric).__name__.lower()


def _base_name(metric: Any) -> str:
    name = type(metric).__name__
    for task in ("Binary", "Multiclass", "Multilabel"):
        if name.startswith(task):
            return name[len(task) :].lower()
    return name.lower()


def _task(metric: Any) -> str | None:
    name = type(metric).__name__
    if name.startswith("Binary"):
        return BINARY
    if name.startswith("Multilabel"):
        return MULTILABEL
    if name.startswith("Multiclass") or _base_name(metric) in SEGMENTATION:
        return MULTICLASS
    return None


def _new_tally(collection: Any, preds: Any, target: Any) -> EvalTally:
    """Counts for the task of the first metric that names one (the others of that task are
    judged; metrics of another or no task are returned as computed)."""
    metrics = [m for _, m in collection.items(keep_base=False, copy_state=False)]
    known = [m for m in metrics if _task(m) is not None]
    if not known:
        return EvalTally(None)
    first = known[0]
    task = _task(first)
    classes = getattr(first, "num_labels", None) if task == MULTILABEL else None
    if task == MULTICLASS:
        classes = getattr(first, "num_classes", None)
        if classes is None and isinstance(preds, torch.Tensor) and preds.dim() >= 2:
            classes = int(preds.shape[1])
    threshold = getattr(first, "threshold", 0.5)
    ignore = getattr(first, "ignore_index", None)
    one_hot = getattr(first, "input_format", None) == "one-hot"
    return EvalTally(
        task,
        classes=classes,
        threshold=float(threshold) if isinstance(threshold, int | float) else 0.5,
        ignore_index=ignore if isinstance(ignore, int) else None,
        one_hot=one_hot,
    )


def _class_counts(counts: dict[str, Any]) -> list[tuple[int | None, int, int, int]] | None:
    """(class, elements, positive targets, positive predictions) per class of the task."""
    task = counts.get("task")
    if task == BINARY and "target_pos" in counts:
        return [(None, counts["elements"], counts["target_pos"], counts["pred_pos"])]
    if task == MULTILABEL and "target_pos" in counts:
        return list(
            zip(
                range(len(counts["target_pos"])),
                counts["label_elements"],
                counts["target_pos"],
                counts["pred_pos"],
            )
        )
    if task == MULTICLASS and "target_hist" in counts:
        n = counts["elements"]
        return [
            (c, n, t, p) for c, (t, p) in enumerate(zip(counts["target_hist"], counts["pred_hist"]))
        ]
    return None


def undefined_reason(kind: str, n: int, pos_t: int, pos_p: int) -> str | None:
    """Why a metric of this kind has no value on these counts, or None when it has one."""
    if n == 0:
        return "no target to compare with"
    if pos_t == 0 and (kind in RANKING or kind in NEEDS_TARGET_POS):
        return "no positive target"
    if pos_t == n and (kind in RANKING or kind in NEEDS_TARGET_NEG):
        return "no negative target"
    if kind in NEEDS_PRED_POS and pos_p == 0:
        return "no positive prediction"
    if kind in NEEDS_ANY_POS and pos_t == 0 and pos_p == 0:
        return "the class is absent from both targets and predictions"
    return None


def _judge(
    collection: Any, raw: dict[str, Any], counts: dict[str, Any] | None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    values: dict[str, float] = {}
    undefined: list[dict[str, Any]] = []
    by_name = dict(collection.items(keep_base=False, copy_state=False))
    if counts is not None and counts.get("batches") == 0:
        for name in by_name:
            values[name] = math.nan
            undefined.append(_entry(name, _base_name(by_name[name]), None, "no batch", counts))
        return values, undefined
    per_class = _class_counts(counts) if counts else None
    for name, value in _flatten_raw(raw):
        metric = by_name.get(name)
        kind = _base_name(metric) if metric is not None else ""
        judged = (
            per_class is not None
            and metric is not None
            and _task(metric) == counts.get("task")
            and kind
            in RANKING | NEEDS_PRED_POS | NEEDS_TARGET_POS | NEEDS_TARGET_NEG | NEEDS_ANY_POS
        )
        if value.numel() == 1:
            v = float(value.reshape(()))
            reasons = (
                [undefined_reason(kind, n, t, p) for _, n, t, p in per_class] if judged else []
            )
            if reasons and all(reasons):
                cls = per_class[0][0] if len(per_class) == 1 else None
                undefined.append(_entry(name, kind, cls, reasons[0], counts, v, per_class))
                v = math.nan
            values[name] = v
            continue
        flat = value.reshape(-1).tolist()
        # Per-class output: one entry per class (or per class but the background).
        offset = 1 if judged and len(flat) == len(per_class) - 1 else 0
        per_entry = judged and len(flat) + offset == len(per_class)
        for i, v in enumerate(flat):
            key = f"{name}_{i + offset}" if offset else f"{name}_{i}"
            reason = None
            if per_entry:
                _, n, t, p = per_class[i + offset]
                reason = undefined_reason(kind, n, t, p)
            if reason:
                undefined.append(
                    _entry(key, kind, i + offset, reason, counts, float(v), [per_class[i + offset]])
                )
                v = math.nan
            values[key] = float(v)
    return values, undefined


def _entry(
    name: str,
    kind: str,
    cls: int | None,
    reason: str,
    counts: dict[str, Any] | None,
    raw: float | None = None,
    per_class: list[tuple[int | None, int, int, int]] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "metric": name,
        "kind": kind,
        "class": cls,
        "reason": reason,
        "raw": raw if raw is None or math.isfinite(raw) else None,
        "task": (counts or {}).get("task"),
    }
    if per_class and len(per_class) == 1:
        _, n, t, p = per_class[0]
        entry["counts"] = {"elements": n, "target_pos": t, "pred_pos": p}
    elif counts:
        entry["counts"] = {k: counts[k] for k in ("batches", "samples", "elements") if k in counts}
    return entry


def _flatten_raw(raw: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensor results of compute(); curves (tuples) and other objects are not scalars."""
    for name, value in raw.items():
        if isinstance(value, torch.Tensor) and value.numel() >= 1:
            yield name, value.detach().float().cpu()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name, torch.tensor(float(value))


def _flatten(raw: dict[str, Any]) -> Iterator[tuple[str, float]]:
    for name, value in _flatten_raw(raw):
        if value.numel() == 1:
            yield name, float(value.reshape(()))
        else:
            for i, v in enumerate(value.reshape(-1).tolist()):
                yield f"{name}_{i}", float(v)


def _log(doc: Any, values: dict[str, float], prefix: str) -> None:
    logged = {f"{prefix}{k}": v for k, v in values.items()}
    logged.pop("parts", None)  # doc.log(parts=...) means loss parts, not a metric
    if logged:
        doc.log(**logged)


def _record(
    doc: Any,
    model: torch.nn.Module,
    prefix: str,
    values: dict[str, float],
    raw: dict[str, Any],
    counts: dict[str, Any] | None,
    undefined: list[dict[str, Any]],
) -> None:
    probe = doc.probe("metrics")
    if probe is None:
        return
    trained = set(doc.context.param_names) if doc.context is not None else set()
    params = [id(p) for p in model.parameters()]
    summary = {
        "validation": doc.state.validations,
        "prefix": prefix,
        **(counts or {}),
        # the model evaluated is (part of) the watched model, not a copy of it
        "model_is_trained": bool(params) and set(params) <= trained,
        "values": {f"{prefix}{k}": (v if math.isfinite(v) else None) for k, v in values.items()},
        "raw": {f"{prefix}{k}": (v if math.isfinite(v) else None) for k, v in _flatten(raw)},
    }
    entries = [
        {**e, "metric": f"{prefix}{e['metric']}", "validation": doc.state.validations}
        for e in undefined
    ]
    probe.record_evaluation(doc.step, summary, entries, doc.rec)


def _sentence(entry: dict[str, Any], prefix: str) -> str:
    cls = f" (class {entry['class']})" if entry.get("class") is not None else ""
    return (
        f"{prefix}{entry['metric']}{cls} is undefined here: {entry['reason']} "
        f"({entry.get('counts')}); returned NaN"
    )


@contextlib.contextmanager
def _validating(doc: Any, model: torch.nn.Module) -> Iterator[None]:
    """The doctor's validating() when attached; else eval() + no_grad(), modes restored."""
    if doc is not None:
        with doc.validating(model):
            yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was_training in modes:
            m.training = was_training


def _current_doctor(model: torch.nn.Module) -> Any:
    """The open Doctor watching `model` (or else the last one attached), if any."""
    from .doctor import open_doctors

    doctors = open_doctors()
    if not doctors:
        return None
    params = {id(p) for p in model.parameters()}
    for doc in reversed(doctors):
        if doc.context is not None and params & set(doc.context.param_names):
            return doc
    return doctors[-1]
