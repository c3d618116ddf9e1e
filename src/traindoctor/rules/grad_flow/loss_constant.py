"""TD107 loss-constant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import loss_source, trainable_names


class Runs:
    """The longest run of bit-identical consecutive values of a series fed in order (the first
    of the longest, as a scan of the whole series finds it), in constant memory: a run is
    [value, length, first step, last step, distinct steps, a value > 0 before it]."""

    def __init__(self) -> None:
        self.n = 0
        self.positive = False  # a value > 0 so far
        self.cur: list | None = None
        self.best: list | None = None

    def add(self, step: int, v: float) -> None:
        c = self.cur
        if c is not None and v == c[0]:  # NaN starts a new run, as != says
            c[1] += 1
            c[4] += step != c[3]
            c[3] = step
        else:
            c = self.cur = [v, 1, step, step, 1, self.positive]
        if self.best is None or c[1] > self.best[1]:
            self.best = list(c)
        self.positive = self.positive or v > 0
        self.n += 1

    def copy(self) -> Runs:
        out = Runs()
        out.n, out.positive = self.n, self.positive
        out.cur = None if self.cur is None else list(self.cur)
        out.best = None if self.best is None else list(self.best)
        return out


class _Source:
    """One series of loss values read pass by pass into Runs (the newest step, which may still
    grow, on a copy)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reader = Reader(name)
        self.runs = Runs()

    def read(self, tl: TimelineView) -> Runs:
        settled, pending = self.reader.read(tl)
        for step, values in settled:
            for v in values or ():
                self.runs.add(step, float(v))
        if not pending:
            return self.runs
        runs = self.runs.copy()
        for step, values in pending:
            for v in values or ():
                runs.add(step, float(v))
        return runs


class ConstantScan:
    """TD107's state between passes (rules/_incremental.py): the longest constant run of the
    training loss and of the validation loss, each read only from the records written since the
    last pass; a change of the series read (the first logged loss, a validation loss found under
    another name) or a rewritten step starts that series over."""

    def __init__(self) -> None:
        self.train: _Source | None = None
        self.val: _Source | None = None

    @property
    def readers(self) -> tuple[Reader, ...]:
        return tuple(x.reader for x in (self.train, self.val) if x is not None)

    def runs(self, tl: TimelineView, which: str, name: str | None) -> Runs:
        src = self.train if which == "train" else self.val
        if name is None:
            src = None
        elif src is None or src.name != name:
            src = _Source(name)
        if which == "train":
            self.train = src
        else:
            self.val = src
        return Runs() if src is None else src.read(tl)


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
        "data.fp",
    ),
    events=("backward_call", "log_call"),
    facts=("params",),
    priority=40,
    state=lambda: ConstantScan(),
)
def loss_constant(
    tl: TimelineView, state: ConstantScan, *, min_repeats: int = 5, min_validations: int = 3
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
    A loss that reached exactly 0 after decreasing (a converged hinge loss) is not reported,
    nor one repeated on a batch fed unchanged step after step (TD504's fingerprints) with a
    gradient that is not 0: the optimizer stopped moving the weights (a converged full-batch
    LBFGS), which says nothing of the loss ignoring its batch.
    """
    if not fresh(state, tl):
        state.__init__()  # an earlier step was rewritten: read everything again
    # Logged losses when the user logs any, else the backward roots (train_loss_values).
    logged = "loss.train" in tl.signal_names("loss.train")
    yield from _train(
        tl, state.runs(tl, "train", "loss.train" if logged else "loss.backward"), min_repeats
    )
    yield from _validation(tl, state.runs(tl, "val", _validation_name(tl)), min_validations)


def _train(tl: TimelineView, runs: Runs, min_repeats: int) -> Iterator[Finding]:
    if runs.n < min_repeats or runs.best is None:
        return
    value, length, first, last, _, positive_before = runs.best
    if length < min_repeats:
        return
    if value == 0.0 and positive_before:
        return  # converged to exactly zero after decreasing
    grads = [n for s, n in _between(tl, "grads.norm", first, last) if n]
    zero_grad = bool(grads) and all(v == 0.0 for n in grads for v in n.values())
    if not zero_grad and _same_batch(tl, first, last):
        # One batch fed again and again (full-batch LBFGS, a GP's marginal likelihood) with a
        # gradient that is not 0: the loss repeats because the optimizer stopped moving the
        # weights (converged), not because it ignores the batch; a step that does not move
        # them is TD104's to judge.
        return
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
        f"(steps {first}–{last})",
        step=first,
        evidence={
            "value": value,
            "repeats": length,
            "batches_seen": runs.n,
            "grad_norm_zero": zero_grad,
        },
        where=Where(source=src),
        cause=cause,
        fix=fix,
    )


def _same_batch(tl: TimelineView, first: int, last: int) -> bool:
    """The batch fingerprints (TD504's) of steps first..last: at least two, all identical.
    Fingerprints are sampled after the first steps, so a window between two of them may hold
    none: then the nearest fingerprint before it and the nearest after it, or, where none
    follows (the run ends), every fingerprint of the run, must be one batch."""
    fps = [fp for _, fp in _between(tl, "data.fp", first, last) if fp]
    if len(fps) < 2:
        run = [(s, fp) for s, fp in tl.series("data.fp") if fp]
        before = [fp for s, fp in run if s < first][-1:]
        after = [fp for s, fp in run if s > last][:1]
        fps = before + fps + after if after else [fp for s, fp in run if s <= last]
    return len(fps) >= 2 and all(fp == fps[0] for fp in fps)


def _between(tl: TimelineView, name: str, first: int, last: int) -> list[tuple[int, Any]]:
    """The records of `name` at steps first..last (read from `first` on, not from the start)."""
    return [(s, v) for s, v in tl.series_since(name, first - 1) if s <= last]


def _validation_name(tl: TimelineView) -> str | None:
    """The series of validation losses: `loss.val` once any is logged, else the first metric
    whose name says validation loss."""
    if "loss.val" in tl.signal_names("loss.val"):
        return "loss.val"
    for name in tl.signal_names("metric."):
        key = name[len("metric.") :].lower()
        if "loss" in key and any(tag in key for tag in ("val", "eval", "test")):
            return name
    return None


def _validation(tl: TimelineView, runs: Runs, min_validations: int) -> Iterator[Finding]:
    if runs.n < min_validations or runs.best is None:
        return
    value, length, first, last, distinct, _ = runs.best
    if length < min_validations or distinct < min_validations:
        return
    updates = [u for s, u in _between(tl, "params.update", first, last - 1)]
    moved = any(v > 0 for u in updates for v in u.values())
    between = [s for s, v in _between(tl, "optim.step", first, last - 1) if v]
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
    elif _never_get_grad(tl, first, last):
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
        f"(steps {first}–{last})",
        step=first,
        evidence={"value": value, "validations": length, "optimizer_steps_between": len(between)},
        where=Where(source=src, op="validation"),
        cause=cause,
        fix=fix,
    )


def _never_get_grad(tl: TimelineView, first: int, last: int) -> bool:
    """Every trainable param had grad None at every observed step() between two validations."""
    trainable = set(trainable_names(tl))
    seen = [set(n) for s, n in _between(tl, "grads.none", first, last - 1)]
    return bool(trainable) and bool(seen) and all(trainable <= n for n in seen)
