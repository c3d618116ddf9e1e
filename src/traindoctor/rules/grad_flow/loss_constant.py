"""TD107 loss-constant."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    loss_source,
    train_loss_values,
    trainable_names,
)


@rule(
    code="TD107",
    name="loss-constant",
    severity=Severity.ERROR,
    summary="The train loss, or a validation loss across validations, is bit-identical.",
    requires=(
        "loss.train",
        "loss.backward",
        "loss.val",
        "grads.norm",
        "grads.none",
        "params.update",
        "optim.step",
        "metric",
    ),
    events=("backward_call", "log_call"),
    facts=("params",),
    priority=40,
)
def loss_constant(
    tl: TimelineView, *, min_repeats: int = 5, min_validations: int = 3
) -> Iterator[Finding]:
    """
    ## What it detects
    A training loss that takes exactly the same value (to the bit) on `min_repeats` consecutive
    batches, or a validation loss that is bit-identical over `min_validations` validations with
    optimizer steps in between.

    ## Why it matters
    Different batches give different losses unless the loss no longer depends on the data or on
    the parameters: a loss clamped at its bound, a model whose output is constant, or a
    validation that evaluates a model that never changes (a stale copy, an EMA that is never
    updated, an optimizer that never steps).

    ## How it is measured
    Loss values are taken from `doc.log(loss=...)` or from the tensor `backward()` runs on,
    batched on the device and read back every few steps. Validation losses come from
    `doc.log(loss=...)` inside `doc.validating()` or metrics whose name contains "loss". The
    cause uses the measured gradient norms and parameter updates of the same steps.

    ## Example
    ```python
    loss = criterion(model(x), y).clamp(max=15.0)   # always above 15: constant, zero gradient
    ```

    ## Fix
    ```python
    loss = criterion(model(x), y)                  # find why it is large instead of clamping it
    ```

    ## Known false positives
    A loss that reached exactly 0 after decreasing (a converged hinge loss) is not reported.
    """
    yield from _train(tl, min_repeats)
    yield from _validation(tl, min_validations)


def _longest_run(values: list[tuple[int, float]]) -> tuple[int, int, float]:
    best = (0, 0, 0.0)  # (start index, length, value)
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i][1] != values[start][1]:
            if i - start > best[1]:
                best = (start, i - start, values[start][1])
            start = i
    return best


def _train(tl: TimelineView, min_repeats: int) -> Iterator[Finding]:
    values = train_loss_values(tl)
    if len(values) < min_repeats:
        return
    start, length, value = _longest_run(values)
    if length < min_repeats:
        return
    if value == 0.0 and any(v > 0 for _, v in values[:start]):
        return  # converged to exactly zero after decreasing
    steps = sorted({s for s, _ in values[start : start + length]})
    grads = [n for s, n in tl.series("grads.norm") if steps[0] <= s <= steps[-1] and n]
    zero_grad = bool(grads) and all(v == 0.0 for n in grads for v in n.values())
    if zero_grad:
        cause = (
            "its gradient is exactly 0 for every parameter on these steps: the loss is saturated "
            "(clamped at a bound, or computed through an op with zero gradient), so nothing trains"
        )
        fix = (
            "remove the clamp/saturation on the loss and fix why it is out of range (scale, "
            "reduction='sum', a wrong target); clamping a loss zeroes its gradient where it clamps"
        )
    else:
        cause = (
            "the loss does not depend on the batch: the model output is constant or the loss is "
            "computed from constants (e.g. target against itself)"
        )
        fix = "check that the loss is computed from the model output for the current batch"
    src = loss_source(tl)
    yield tl.finding(
        title=f"the training loss is exactly {value:.6g} on {length} consecutive batches "
        f"(steps {steps[0]}–{steps[-1]})",
        step=steps[0],
        evidence={
            "value": value,
            "repeats": length,
            "batches_seen": len(values),
            "grad_norm_zero": zero_grad,
        },
        where=Where(source=src),
        cause=cause,
        fix=fix,
    )


def _validation_values(tl: TimelineView) -> list[tuple[int, float]]:
    out = [(s, float(v)) for s, vals in tl.series("loss.val") for v in vals]
    if out:
        return out
    for name in tl.signal_names("metric."):
        key = name[len("metric.") :].lower()
        if "loss" in key and any(tag in key for tag in ("val", "eval", "test")):
            return [(s, float(v)) for s, vals in tl.series(name) for v in vals]
    return []


def _validation(tl: TimelineView, min_validations: int) -> Iterator[Finding]:
    values = _validation_values(tl)
    if len(values) < min_validations:
        return
    start, length, value = _longest_run(values)
    steps = [s for s, _ in values[start : start + length]]
    if length < min_validations or len(set(steps)) < min_validations:
        return
    stepped = {s for s, v in tl.series("optim.step") if v}
    updates = [u for s, u in tl.series("params.update") if steps[0] <= s < steps[-1]]
    moved = any(v > 0 for u in updates for v in u.values())
    between = [s for s in stepped if steps[0] <= s < steps[-1]]
    if not between:
        cause = (
            "no optimizer step ran between these validations (see TD105): the model never changes"
        )
        fix = "make optimizer.step() run every accumulation cycle"
    elif moved:
        cause = (
            "the trained parameters changed between these validations but the validation loss did "
            "not: the evaluated model is not the one being trained (a stale copy, or an EMA copy "
            "that is never updated)"
        )
        fix = "evaluate the trained model, or update the EMA copy after every optimizer step"
    elif _never_get_grad(tl, steps[0], steps[-1]):
        cause = (
            "the optimizer steps but no trained parameter ever has a gradient (see TD101/TD102): "
            "backward() does not reach the model, so it never changes"
        )
        fix = "make the loss reach the parameters (no .detach()/.item() on the way); see TD101"
    else:
        cause = "the optimizer steps but the parameters do not change (see TD104)"
        fix = "fix what stops the update (lr 0, zero gradients); see TD104"
    src = loss_source(tl, validating=True)
    yield tl.finding(
        title=f"the validation loss is exactly {value:.6g} in {length} validations "
        f"(steps {steps[0]}–{steps[-1]})",
        step=steps[0],
        evidence={"value": value, "validations": length, "optimizer_steps_between": len(between)},
        where=Where(source=src, op="validation"),
        cause=cause,
        fix=fix,
    )


def _never_get_grad(tl: TimelineView, first: int, last: int) -> bool:
    """Every trainable param had grad None at every observed step() between two validations."""
    trainable = set(trainable_names(tl))
    seen = [set(n) for s, n in tl.series("grads.none") if first <= s < last]
    return bool(trainable) and bool(seen) and all(trainable <= n for n in seen)
