"""TD206 exploding-gradient."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._objective import objective
from .._registry import rule
from .._util import per_step_mean, train_loss_values
from ._layers import fmt, layer_order, layer_series, median_mad, params_of


@rule(
    code="TD206",
    name="exploding-gradient",
    severity=Severity.ERROR,
    summary="A layer's gradient norm jumps far above its own history.",
    requires=(
        "grads.norm",
        "optim.lr",
        "params.norm",
        "loss.train",
        "loss.backward",
        # what the objective is (rules/_objective.py)
        "loss_inputs.observed",
        "loss_inputs.stats",
        "loss_inputs.labels",
    ),
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

        When the training loss kept falling through the jump (median of the 8 steps after it below
        that of the 8 steps up to it), the finding is info: a gradient that grows while the model
        learns (a from-scratch network leaving its init with a 1000-way head, pytorch/examples'
        ImageNet script at lr 0.01: loss 6.9 -> 0.7 while the gradients rose 100x) has not hurt
        training; an explosion that does shows in the loss.

        It is info too when the loss is not measured to be meant to fall (rules/_objective.py:
    several models trained against each other, targets that move with the run as RL returns do,
    a loss the standard losses do not account for): there a growing gradient follows the growing
    targets (cleanrl's DQN and PPO) and the loss cannot say whether it harms.

        ## Why it matters
        An exploding gradient moves the weights by far more than the learning rate intends: the
        loss spikes or diverges, and under mixed precision the gradients overflow to Inf a few
        steps later. Fixes applied to the symptom (a tighter clip, a clamped loss) hide it; the
        first layer and step where the norm left its history point at the cause.

        ## How it is measured
        The gradient probe takes every param's gradient norm just before `optimizer.step()` on
        sampled steps (one fused `torch._foreach_norm`, read back in batches, after any GradScaler
        unscale). A layer's norm is the root of the sum of its params' squared norms. Each layer is
        compared with its own history (median and median absolute deviation), never with a fixed
        threshold, so layers of any scale are judged alike.
        A gradient near zero next to the rest of the model is no level to explode from: attention
        weights get almost no gradient while the scores are uniform, a layer behind a
        zero-initialised gate gets almost none until the gate opens, and their gradient then grows
        by orders of magnitude in a few steps while training converges. So each earlier norm counts
        at least at a `factor`-th of the level the other layers carry for weights of its size: the
        median over the other layers of ||g|| / ||θ|| at the same step, times the layer's own ||θ||
        (weight norms from the params probe, on the same sampled steps). A jump from near zero
        must then take the layer above what the other layers carry; a layer at the model's level,
        and every layer rising together (a learning rate too large), keep their own history.

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
        (the norm must also be `factor` times the one sampled just before), and a gradient rising
        from far below the other layers is judged against their level (above). A layer whose
        gradient is always far below the others' (an embedding's sparse rows) is therefore
        reported only once it jumps above their level. Without weight
        norms (a model too large for the params probe to copy), a layer is judged against its own
        history alone and a rise from ~0 can still be reported. A single rare batch
        (very long sequence, outlier) can produce one isolated jump: that is reported as a warning
        when the norm comes back down.
    """
    grads = tl.series("grads.norm")
    layers = layer_series(grads)
    levels = _peer_levels(layers, layer_series(tl.series("params.norm")))
    hits = []
    for layer, series in layers.items():
        history: list[float] = []
        steps: list[int] = []
        for step, value in series:
            if len(history) >= min_history:
                ref = _reference(history, [levels.get((layer, s)) for s in steps], factor)
                med, mad = median_mad(ref)
                prev = ref[-1]
                if (
                    med > 0
                    and value >= factor * max(med, prev)
                    and value >= med + robust_z * 1.4826 * mad
                ):
                    lifted = ref != history
                    hits.append((step, -value / med, layer, med, value, series, lifted))
                    break
            if value > 0:
                history.append(value)
                steps.append(step)
    if not hits:
        return
    hits.sort(key=lambda h: (h[0], h[1]))
    step, _, layer, med, value, series, lifted = hits[0]
    # Judged against the other layers' level where the layer's own start was still rising.
    below = (
        f"its history, each norm counted at no less than 1/{factor:g} of the level the other "
        "layers carry for its weights (its own gradient started near zero next to them)"
        if lifted
        else "its own history"
    )
    same_step = [h[2] for h in hits if h[0] == step]
    params = tl.fact("params") or {}
    last_step, last = series[-1]
    persistent = last >= factor * med
    lrs = dict(tl.series("optim.lr")).get(step) or {}
    lr_text = ", ".join(f"{g} lr={v:g}" for g, v in sorted(lrs.items()) if v is not None)
    also = [x for x in layer_order(params, same_step) if x != layer]
    severity = Severity.ERROR if persistent else Severity.WARNING
    improving = _loss_improved_after(tl, step)
    obj = objective(tl)
    if improving is not None or obj.falls is not True:
        # An explosion that harms shows in the loss; one that kept falling through the jump is
        # a gradient growing while the model learns (a network leaving its init, a head
        # starting to fit). A loss not known to be meant to fall (RL: value targets grow with
        # the returns, and the gradients with them; GANs) cannot show it: said, not asserted.
        severity = Severity.INFO
    yield tl.finding(
        title=f"gradient of `{layer}` exploded at step {step}: norm {fmt(value)}, "
        f"{_times(value / med)} its median {fmt(med)} before"
        + (" (floored at the other layers' level)" if lifted else "")
        + (f" ({len(also)} other layer(s) jumped at the same step)" if also else ""),
        step=step,
        evidence={
            "layer": layer,
            "grad_norm": value,
            "median_before": med,
            "ratio": value / med,
            "reference": "other layers" if lifted else "own history",
            "history": [[s, v] for s, v in series if s <= step][-8:],
            "last": [last_step, last],
            "layers_jumping_at_step": layer_order(params, same_step),
            "lr": lrs,
            "loss_before_after": improving,
            "objective": obj.kind,
            "judged": obj.judged,
        },
        where=Where(module=layer, params=params_of(params, layer)),
        cause=f"the gradient of `{layer}` rose {_times(value / med)} above {below} at step {step}"
        + (
            f" and stayed there (still {fmt(last)} at step {last_step})"
            if persistent and last_step > step
            else ""
        )
        + (f"; the optimizer runs with {lr_text}" if lr_text else "")
        + (
            f"; the training loss kept falling through it ({fmt(improving[0])} before, "
            f"{fmt(improving[1])} after), so it has not hurt training (yet)"
            if improving is not None
            else ": updates this large throw the weights out of the region they were trained "
            "in (a learning rate too large for this layer, or a loss term that grows without "
            "bound)"
        ),
        fix="lower the learning rate (or add a warmup) until the norm stays within its history; "
        "if one loss term drives it, fix that term; clip with clip_grad_norm_ at a norm measured "
        "on a healthy run only as a guard, not as the fix",
        severity=severity,
        confidence=0.9 if persistent else 0.6,
    )


def _loss_improved_after(tl: TimelineView, step: int, span: int = 8) -> list[float] | None:
    """[median training loss of the `span` steps up to `step`, of the `span` steps after it]
    when both are finite and the later one is lower; else None."""
    losses = per_step_mean(train_loss_values(tl))
    before = [v for s, v in losses if s <= step][-span:]
    after = [v for s, v in losses if s > step][:span]
    if len(before) < 3 or len(after) < 3:
        return None
    b, a = statistics.median(before), statistics.median(after)
    if not (math.isfinite(a) and math.isfinite(b)) or a >= b:
        return None
    return [b, a]


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio < 1e4 else f"{ratio:.1e}x"


def _peer_levels(
    grads: dict[str, list[tuple[int, float]]], weights: dict[str, list[tuple[int, float]]]
) -> dict[tuple[str, int], float]:
    """{(layer, step): the gradient norm the other layers carry for weights of this layer's size
    at that step}: the median over the other layers of ||g|| / ||θ||, times this layer's ||θ||.
    Only where the weight norms were measured (sampled steps) and at least one other layer has
    a nonzero gradient."""
    theta = {(layer, s): v for layer, series in weights.items() for s, v in series if v > 0}
    rel: dict[int, dict[str, float]] = {}
    for layer, series in grads.items():
        for s, g in series:
            w = theta.get((layer, s))
            if w and g > 0:
                rel.setdefault(s, {})[layer] = g / w
    out: dict[tuple[str, int], float] = {}
    for s, by_layer in rel.items():
        for layer in grads:
            others = [r for other, r in by_layer.items() if other != layer]
            w = theta.get((layer, s))
            if others and w:
                out[(layer, s)] = statistics.median(others) * w
    return out


def _reference(history: list[float], peers: list[float | None], factor: float) -> list[float]:
    """The history a new norm is judged against: the layer's own norms, each raised to a
    `factor`-th of the level the other layers carry for its weights (`_peer_levels`) where it
    lies below that. A gradient near zero next to the rest of the model (attention weights while
    the scores are uniform, a layer behind a zero-initialised gate) is no level to explode from:
    a jump counts only once it takes the layer above what the other layers carry."""
    return [v if p is None else max(v, p / factor) for v, p in zip(history, peers)]
