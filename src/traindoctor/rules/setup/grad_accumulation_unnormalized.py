"""TD515 grad-accumulation-unnormalized."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._optimizer_kinds import SCALE_INVARIANT
from .._registry import rule

# Optimizers whose step() calls the closure (forward + backward) several times.
CLOSURE_OPTIMIZERS = ("LBFGS",)


class AccumulationCount:
    """TD515's state between passes (rules/_incremental.py): how many steps ran two backward
    passes or more, read from the records written since the last pass. Fewer than `min_steps`
    (a run without gradient accumulation: the usual case) leaves nothing to judge, and a pass
    reads nothing else; from there on the steps are judged from the whole timeline."""

    def __init__(self) -> None:
        self.factors = Reader("loss.factor")
        self.readers = (self.factors,)
        self.steps = 0  # settled steps with two passes or more

    def enough(self, tl: TimelineView, min_steps: int) -> bool:
        if not fresh(self, tl):
            self.__init__()
        settled, pending = self.factors.read(tl)
        self.steps += sum(len(fs or ()) >= 2 for _, fs in settled)
        return self.steps + sum(len(fs or ()) >= 2 for _, fs in pending) >= min_steps


@rule(
    code="TD515",
    name="grad-accumulation-unnormalized",
    severity=Severity.WARNING,
    summary="Accumulated micro-batch losses are not divided by the number of micro-batches.",
    requires=(
        "loss.factor",
        "loss.site",
        "loss.backward",
        "loss_inputs.stats",
        "backward.count",
        "schedule.tensor_divided",
        "schedule.clip_norm",
        "schedule.clip_max",
    ),
    events=("backward_site",),
    facts=("optimizers", "optimizer_activity"),
    priority=40,
    state=lambda: AccumulationCount(),
)
def grad_accumulation_unnormalized(
    tl: TimelineView, state: AccumulationCount, *, min_steps: int = 3, min_clip_share: float = 0.5
) -> Iterator[Finding]:
    """
    ## What it detects
    Gradient accumulation (several backward passes from one line per optimizer step) where no
    micro-batch loss is divided by anything: every pass has constant factor 1 and no tensor
    divisor, so the gradient at `step()` is the *sum* of N mean gradients, N times the mean a
    single large batch would give. Reported for optimizers whose update scales with the
    gradient (SGD: the effective lr is N times the one set), and for any optimizer when
    gradient clipping is active on at least `min_clip_share` of the steps.

    Also when each micro-batch loss is a sum divided by a tensor that counts the targets of
    *that* micro-batch (`loss_sum / (y != -100).sum()`): each pass is then a per-micro-batch
    mean and N of them add up to N times the mean, the same as no division at all. A divisor
    that counts the whole accumulation window's targets is the fix, and is not reported.

    Unlike TD109 (accumulation-scaling-inconsistent), where micro-batches of one step are
    scaled by *different* constants, here all of them are scaled the same way, by nothing;
    a site where TD109's case applies (any pass with another factor) is left to TD109.

    ## Why it matters
    Training works, just not as configured: with SGD the step is N times larger than the lr
    says, so the lr tuned on one GPU no longer fits when N changes. With clipping, the norm
    is N times larger, the clip is active at (almost) every step, and the update size is set
    by `max_norm` rather than by the gradient.

    ## How it is measured
    At each backward pass the loss probe multiplies out the constant factors on top of the
    loss's graph (`loss / accum` gives 1/accum) and notes the calling line; a division by a
    tensor (`loss_sum / n_tokens`) is recorded as a data normalizer. For such a pass, on the
    sampled steps, the loss-inputs probe counts the non-ignored targets of the sum-reduced
    `cross_entropy`/`nll_loss` call (on the device, read back in batches); the divisor is the
    call's sum over the backward value, and a divisor within 5% of the micro-batch's own count
    on every measured step (none close to N times it) means per-micro-batch normalization.
    `clip_grad_norm_`'s
    measured total norm and `max_norm` are recorded at each call: the evidence compares the
    measured norm with the norm of the mean (÷N).

    With several optimizers, each one's backward passes that brought its params fresh
    gradients are counted between its steps: when none ever stepped after two of them (a
    model and optimizer built per task, whose steps the step clock merges), nothing is judged.

    ## Example
    ```python
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y)
        loss.backward()                      # 4 micro-batches add up: 4x the mean gradient
        if (i + 1) % 4 == 0:
            clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    ```

    ## Fix
    ```python
        loss = criterion(model(x), y) / 4    # each micro-batch counts 1/4
        loss.backward()
    ```

    The optimizer probe follows, on the sampled steps, whether each pass added its gradients
    onto the previous pass's in .grad (the same tensor, one in-place add further): steps whose
    passes were zeroed in between (SAM's two forward/backward passes, a bi-level step where
    each optimizer zeroes its own params) or wrote different params (replicas of the model,
    each backpropagating its half batch) sum nothing, and are not judged.

    ## Known false positives
    Not judged with LBFGS, whose step() re-evaluates its closure (several backward passes per
    step, each from zeroed gradients). A sum over micro-batches chosen on purpose with an lr tuned for it (SGD), and a sum-
    reduced loss normalized afterwards by scaling the gradients by hand (`p.grad /= n`), are
    reported. Adam-family optimizers without active clipping are not: their update does not
    depend on the gradient's scale.
    """
    if not state.enough(tl, min_steps):
        return  # fewer accumulation steps than judged: nothing read but the new factors
    activity = [a for a in tl.fact("optimizer_activity") or () if a.get("steps")]
    if len(activity) >= 2 and all(a.get("max_pending", 0) <= 1 for a in activity):
        # Several optimizers, followed pass by pass: none ever stepped after two passes that
        # brought it gradients (a model and optimizer built per task, Reptile's inner loop,
        # whose steps the step clock merges): nothing accumulates.
        return
    summed = [a["max_summed"] for a in activity if a.get("max_summed")]
    if summed and max(summed) <= 1:
        # Measured on the sampled steps: no optimizer ever applied gradients that two passes
        # added up in .grad. The passes were zeroed in between (SAM's second forward/backward
        # after zero_grad(), a bi-level step where each optimizer zeroes its own params) or
        # wrote different params (replicas of the model, each with its own half batch).
        return
    if any(o.get("class") in CLOSURE_OPTIMIZERS for o in tl.fact("optimizers") or ()):
        # step(closure) re-evaluates the loss several times per step, each from zeroed
        # gradients (pytorch/examples time_sequence_prediction: 20 evaluations a step): no
        # accumulation.
        return
    sites = dict(tl.series("loss.site"))
    divided = {s for s, n in tl.series("schedule.tensor_divided") if n}
    factor_series = tl.series("loss.factor")
    ratios = _divisor_ratios(tl, divided, dict(factor_series))
    accum: list[tuple[int, int]] = []  # (step, passes)
    per_micro = 0  # steps whose passes are each divided by their own micro-batch's count
    site_of: int | None = None
    for step, factors in factor_series:
        step_sites = sites.get(step) or [0] * len(factors)
        if len(factors) < 2 or len(set(step_sites)) != 1:
            continue
        if site_of is not None and step_sites[0] != site_of:
            continue
        counted = step in divided or any(f != 1.0 for f in factors)
        if counted and step in ratios:
            if abs(ratios[step] - 1.0) > 0.05:
                return  # divided by more than its own count: the window's (or unknown)
            per_micro += 1
        elif counted and (ratios or step in divided):
            continue  # a count (a 0-d tensor divisor) not measured on this step
        elif counted:
            return  # scaled by a constant (normalized, or TD109's case)
        site_of = step_sites[0]
        accum.append((step, len(factors)))
    if len(accum) < min_steps:
        return
    n = int(statistics.median(c for _, c in accum))
    opts = tl.fact("optimizers") or []
    opt_cls = opts[0].get("class") if opts else None
    clip = _clip_stats(tl, n)
    clipped = clip is not None and clip["active_share"] >= min_clip_share
    if opt_cls in SCALE_INVARIANT and not clipped:
        return
    harm = []
    if clip is not None:
        harm.append(
            f"clip_grad_norm_(max_norm={clip['max_norm']:g}) was active at "
            f"{clip['active_steps']} of {clip['steps']} steps (median measured norm "
            f"{clip['median_norm']:.3g}; the mean over the micro-batches would have "
            f"{clip['median_norm_if_normalized']:.3g})"
        )
    if opt_cls not in SCALE_INVARIANT:
        harm.append(f"{opt_cls or 'the optimizer'} steps {n}x further than its lr says")
    source = next(
        (e.get("source") for e in tl.events("backward_site") if e.get("site") == site_of), None
    )
    evidence: dict[str, Any] = {
        "micro_batches": n,
        "accumulation_steps": len(accum),
        "factor": 1.0,
        "optimizer": opt_cls,
    }
    if per_micro:
        evidence["divided_by_own_count_steps"] = per_micro
    if clip is not None:
        evidence["clip"] = clip
    how = (
        "each divided by its own micro-batch's target count (a per-micro-batch mean)"
        if per_micro
        else "with factor 1"
    )
    yield tl.finding(
        title=f"{n} micro-batch losses are summed, not averaged: the gradient at step() is "
        f"{n}x the mean"
        + (
            f" and clip_grad_norm_ clipped at {clip['active_steps']} of {clip['steps']} steps"
            if clipped and clip is not None
            else ""
        ),
        step=accum[0][0],
        evidence=evidence,
        where=Where(source=source),
        cause=f"each of the {n} backward passes per optimizer step (same line, {len(accum)} "
        f"steps) backpropagates the loss {how}: the gradients add up to "
        f"{n}x the mean gradient; " + "; ".join(harm),
        fix=(
            "divide the summed loss by the target count of the whole accumulation window "
            "(count the targets of all micro-batches first), or divide each micro-batch's "
            f"mean by {n}"
            if per_micro
            else f"divide each micro-batch loss by the number of micro-batches before "
            f"backward(): loss = loss / {n}"
        ),
    )


def _divisor_ratios(
    tl: TimelineView, divided: set[int], factors: dict[int, list[float]]
) -> dict[int, float]:
    """step -> (divisor of the step's last backward pass) / (targets counted by the last
    sum-reduced class loss call), where one loss site counted them. A divisor that is a
    device tensor is not a constant factor: it is the call's sum over the backward value; a
    0-d CPU count is taken for a constant, so it is 1 / the pass's factor."""
    backs = dict(tl.series("loss.backward"))
    out: dict[int, float] = {}
    for step, stats in tl.series("loss_inputs.stats"):
        if not isinstance(stats, dict):
            continue
        counted = [k.partition(".")[0] for k in stats if k.endswith(".n_valid")]
        values, fs = backs.get(step) or [], factors.get(step) or []
        if len(counted) != 1 or not values or not fs:
            continue
        total, n = stats.get(f"{counted[0]}.loss"), stats.get(f"{counted[0]}.n_valid")
        last = values[-1]
        if not all(isinstance(v, int | float) for v in (total, n, last, fs[-1])) or not n:
            continue
        if step in divided and last:
            out[step] = (total / last) / n
        elif fs[-1] not in (0.0, 1.0):
            out[step] = (1.0 / fs[-1]) / n
    return out


def _clip_stats(tl: TimelineView, n: int) -> dict[str, Any] | None:
    maxes = dict(tl.series("schedule.clip_max"))
    norms: list[float] = []
    active = 0
    max_norm = None
    for step, values in tl.series("schedule.clip_norm"):
        limits = maxes.get(step) or []
        for i, v in enumerate(values):
            if not isinstance(v, int | float) or i >= len(limits):
                continue
            max_norm = limits[i]
            norms.append(v)
            active += v > limits[i]
    if not norms or max_norm is None:
        return None
    median = statistics.median(norms)
    return {
        "max_norm": max_norm,
        "steps": len(norms),
        "active_steps": active,
        "active_share": round(active / len(norms), 3),
        "median_norm": round(median, 4),
        "median_norm_if_normalized": round(median / n, 4),
    }
