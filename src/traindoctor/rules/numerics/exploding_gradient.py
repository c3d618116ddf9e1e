"""TD206 exploding-gradient."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._layers import fmt, layer_order, layer_series, median_mad, params_of


@rule(
    code="TD206",
    name="exploding-gradient",
    severity=Severity.ERROR,
    summary="A layer's gradient norm jumps far above its own history.",
    requires=("grads.norm", "optim.lr"),
    priority=40,
)
def exploding_gradient(
    tl: TimelineView,
    *,
    min_history: int = 3,
    factor: float = 10.0,
    robust_z: float = 10.0,
) -> Iterator[Finding]:
    """
    ## What it detects
    A layer whose gradient norm, at some sampled step, is at least `factor` times the median of
    its own earlier norms (and of the norm just before), and `robust_z` robust deviations above
    that median. It names the first such layer and step.

    ## Why it matters
    An exploding gradient moves the weights by far more than the learning rate intends: the
    loss spikes or diverges, and under mixed precision the gradients overflow to Inf a few
    steps later. Fixes applied to the symptom (a tighter clip, a clamped loss) hide it; the
    first layer and step where the norm left its history point at the cause.

    ## How it is measured
    The gradient probe takes every param's gradient norm just before `optimizer.step()` on
    sampled steps (one fused `torch._foreach_norm`, read back in batches, after any GradScaler
    unscale). A layer's norm is the root of the sum of its params' squared norms. Each layer is
    compared with its own history only (median and median absolute deviation), never with a
    fixed threshold, so layers of any scale are judged alike.

    ## Example
    ```python
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # far too large
    ```

    ## Fix
    ```python
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # or a warmup, and clipping at a norm measured on a healthy run:
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=healthy_p99)
    ```

    ## Known false positives
    A layer that starts with an exactly-zero gradient (behind a zero-initialized layer, as in
    LoRA) grows from nothing: zero norms are not history, and a steady growth is not a jump
    (the norm must also be `factor` times the one sampled just before). A single rare batch
    (very long sequence, outlier) can produce one isolated jump: that is reported as a warning
    when the norm comes back down.
    """
    grads = tl.series("grads.norm")
    layers = layer_series(grads)
    hits = []
    for layer, series in layers.items():
        history: list[float] = []
        for step, value in series:
            if len(history) >= min_history:
                med, mad = median_mad(history)
                prev = history[-1]
                if (
                    med > 0
                    and value >= factor * max(med, prev)
                    and value >= med + robust_z * 1.4826 * mad
                ):
                    hits.append((step, -value / med, layer, med, value, series))
                    break
            if value > 0:
                history.append(value)
    if not hits:
        return
    hits.sort(key=lambda h: (h[0], h[1]))
    step, _, layer, med, value, series = hits[0]
    same_step = [h[2] for h in hits if h[0] == step]
    params = tl.fact("params") or {}
    last_step, last = series[-1]
    persistent = last >= factor * med
    lrs = dict(tl.series("optim.lr")).get(step) or {}
    lr_text = ", ".join(f"{g} lr={v:g}" for g, v in sorted(lrs.items()) if v is not None)
    also = [x for x in layer_order(params, same_step) if x != layer]
    yield tl.finding(
        title=f"gradient of `{layer}` exploded at step {step}: norm {fmt(value)}, "
        f"{value / med:.0f}x its median {fmt(med)} before"
        + (f" ({len(also)} other layer(s) jumped at the same step)" if also else ""),
        step=step,
        evidence={
            "layer": layer,
            "grad_norm": value,
            "median_before": med,
            "ratio": value / med,
            "history": [[s, v] for s, v in series if s <= step][-8:],
            "last": [last_step, last],
            "layers_jumping_at_step": layer_order(params, same_step),
            "lr": lrs,
        },
        where=Where(module=layer, params=params_of(params, layer)),
        cause=f"the gradient of `{layer}` rose {value / med:.0f}x above its own history at step "
        f"{step}"
        + (
            f" and stayed there (still {fmt(last)} at step {last_step})"
            if persistent and last_step > step
            else ""
        )
        + (f"; the optimizer runs with {lr_text}" if lr_text else "")
        + ": updates this large throw the weights out of the region they were trained in "
        "(a learning rate too large for this layer, or a loss term that grows without bound)",
        fix="lower the learning rate (or add a warmup) until the norm stays within its history; "
        "if one loss term drives it, fix that term; clip with clip_grad_norm_ at a norm measured "
        "on a healthy run only as a guard, not as the fix",
        severity=Severity.ERROR if persistent else Severity.WARNING,
        confidence=0.9 if persistent else 0.6,
    )
