"""TD515 grad-accumulation-unnormalized."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

# Optimizers whose update does not change when every gradient is multiplied by a constant
# (up to eps): for them an unnormalized sum matters only through clipping.
SCALE_INVARIANT = {
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adafactor",
    "SparseAdam",
    "Lion",
}


@rule(
    code="TD515",
    name="grad-accumulation-unnormalized",
    severity=Severity.WARNING,
    summary="Accumulated micro-batch losses are not divided by the number of micro-batches.",
    requires=(
        "loss.factor",
        "loss.site",
        "backward.count",
        "schedule.tensor_divided",
        "schedule.clip_norm",
        "schedule.clip_max",
    ),
    priority=40,
)
def grad_accumulation_unnormalized(
    tl: TimelineView, *, min_steps: int = 3, min_clip_share: float = 0.5
) -> Iterator[Finding]:
    """
    ## What it detects
    Gradient accumulation (several backward passes from one line per optimizer step) where no
    micro-batch loss is divided by anything: every pass has constant factor 1 and no tensor
    divisor, so the gradient at `step()` is the *sum* of N mean gradients, N times the mean a
    single large batch would give. Reported for optimizers whose update scales with the
    gradient (SGD: the effective lr is N times the one set), and for any optimizer when
    gradient clipping is active on at least `min_clip_share` of the steps.

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
    tensor (`loss_sum / n_tokens`) is recorded as a data normalizer. `clip_grad_norm_`'s
    measured total norm and `max_norm` are recorded at each call: the evidence compares the
    measured norm with the norm of the mean (÷N).

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

    ## Known false positives
    A sum over micro-batches chosen on purpose with an lr tuned for it (SGD), and a sum-
    reduced loss normalized afterwards by scaling the gradients by hand (`p.grad /= n`), are
    reported. Adam-family optimizers without active clipping are not: their update does not
    depend on the gradient's scale.
    """
    sites = dict(tl.series("loss.site"))
    divided = {s for s, n in tl.series("schedule.tensor_divided") if n}
    accum: list[tuple[int, int]] = []  # (step, passes)
    site_of: int | None = None
    for step, factors in tl.series("loss.factor"):
        step_sites = sites.get(step) or [0] * len(factors)
        if len(factors) < 2 or len(set(step_sites)) != 1:
            continue
        if site_of is not None and step_sites[0] != site_of:
            continue
        if any(f != 1.0 for f in factors) or step in divided:
            return  # scaled by a constant (normalized, or TD109's case) or by a data count
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
    if clip is not None:
        evidence["clip"] = clip
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
        "steps) backpropagates the loss with factor 1: the gradients add up to "
        f"{n}x the mean gradient; " + "; ".join(harm),
        fix=f"divide each micro-batch loss by the number of micro-batches before backward(): "
        f"loss = loss / {n}",
    )


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
