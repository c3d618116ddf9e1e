"""TD205 grad-scaler-collapse."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module, module_of, step_source


@rule(
    code="TD205",
    name="grad-scaler-collapse",
    severity=Severity.ERROR,
    summary="The GradScaler skips step after step, or its scale falls toward 0.",
    requires=("amp.scale", "amp.skipped", "amp.nonfinite", "optim.step"),
    events=("hand_step", "optimizer_step", "scaler_step"),
    facts=("params",),
    priority=28,
)
def grad_scaler_collapse(
    tl: TimelineView,
    *,
    window: int = 20,
    max_skip_ratio: float = 0.5,
    min_skips: int = 5,
    collapse_octaves: int = 10,
) -> Iterator[Finding]:
    """
    ## What it detects
    A `torch.amp.GradScaler` that keeps skipping `optimizer.step()` (more than `max_skip_ratio`
    of the last `window` steps) or whose scale falls by `2**collapse_octaves` or more from its
    peak: the gradients hold inf/NaN step after step, whatever the scale. The finding names the
    params (and their layer) whose gradients were non-finite on the skipped steps.

    ## Why it matters
    A skipped step trains nothing. An occasional skip is how the scaler finds its scale; a run
    of them means the model does not train, while the loss printed each step still looks
    normal. Each skip halves the scale, so a persistent inf/NaN drives it toward 0, and once
    the scale is tiny, small gradients underflow to 0 even on steps that are not skipped.

    ## How it is measured
    The scale (read back in batches) and whether `optimizer.step()` ran are recorded every step.
    After `unscale_` on sampled steps and on steps following a skipped one, one fused
    `torch._foreach_norm` over the optimizer's gradients marks the params whose gradient is
    inf/NaN; the mark is kept only for steps the scaler then skipped. The layer named is the
    one closest to the loss (last in the model's parameter order) among those marked on most
    skipped steps: a non-finite gradient spreads from there to every layer before it.

    ## Example
    ```python
    class Net(nn.Module):
        def forward(self, x):
            h = self.stem(x)
            return self.head(torch.where(h > 0, h.sqrt(), 0.0))   # NaN gradient into stem
    scaler = torch.amp.GradScaler("cpu")
    ```

    ## Fix
    Find why the named layer's gradient is inf/NaN (an op with an infinite derivative such as
    `sqrt`/`log`/division at 0, a `torch.where` whose unselected branch is NaN, activations
    that overflow float16) and make that op finite, or keep that layer in float32:
    ```python
    h = self.stem(x)
    return self.head(h.clamp(min=1e-6).sqrt())   # the sqrt of a clamped input: finite gradient
    ```

    ## Known false positives
    The first steps of a float16 run, while the scaler backs off from its initial scale, skip
    several steps in a row; they are within the window and not reported unless the skipping
    goes on.
    """
    scales = [(s, float(v)) for s, v in tl.series("amp.scale") if isinstance(v, int | float)]
    if len(scales) < window:
        return
    skipped = {s for s, v in tl.series("amp.skipped") if v}
    recent = [s for s, _ in scales[-window:]]
    recent_skips = [s for s in recent if s in skipped]
    finite = [(s, v) for s, v in scales if math.isfinite(v)]
    # The peak counts from the first step the scaler let through: backing off from a too-high
    # init_scale before any step succeeded is calibration, not collapse.
    first_ok = next((s for s, _ in scales if s not in skipped), None)
    settled = [(s, v) for s, v in finite if first_ok is not None and s >= first_ok]
    peak_step, peak = max(settled, key=lambda sv: sv[1], default=(None, 0.0))
    last_step, last = finite[-1] if finite else (None, 0.0)
    fall = peak / last if last > 0 else math.inf
    keeps_skipping = len(recent_skips) >= min_skips and len(recent_skips) > max_skip_ratio * len(
        recent
    )
    collapsed = peak > 0 and last_step is not None and fall >= 2.0**collapse_octaves
    if not (keeps_skipping or collapsed):
        return
    counts, localized = _nonfinite_counts(tl, skipped)
    order = list((tl.fact("params") or {}).keys())
    origin, names = _origin(counts, order)
    first = _streak_start(scales, skipped) if keeps_skipping else _first_fall(scales, peak_step)
    octaves = math.log2(fall) if math.isfinite(fall) and fall > 0 else None
    evidence: dict[str, Any] = {
        "skipped_recent": f"{len(recent_skips)} of the last {len(recent)} steps",
        "skipped_total": len(skipped),
        "steps": len(scales),
        "scale_first": scales[0][1],
        "scale_peak": peak,
        "scale_last": last,
        "scale_fall": f"2^{octaves:.0f}" if octaves is not None else "to 0",
        "localized_skipped_steps": localized,
    }
    if counts:
        evidence["nonfinite_grad_on_skipped_steps"] = {
            n: f"{c} of {localized}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1])[:12]
        }
    what = []
    if keeps_skipping:
        what.append(f"skipped {len(recent_skips)} of the last {len(recent)} optimizer steps")
    if collapsed:
        what.append(f"its scale fell from {peak:g} to {last:g}")
    layer = f" non-finite gradients in `{origin}`" if origin else ""
    title = "GradScaler " + " and ".join(what) + (f":{layer}" if layer else "")
    if origin:
        spread = len(counts) - len(names)
        cause = (
            f"the gradients of {', '.join(f'`{n}`' for n in names)} hold inf/NaN on "
            f"{max(counts[n] for n in names)} of {localized} measured skipped steps, at every "
            "scale the scaler tried: the inf/NaN is not a scaling problem, it comes from "
            f"`{origin}` (the layer closest to the loss with non-finite gradients"
            + (f"; {spread} params before it get it through backprop" if spread > 0 else "")
            + ")"
        )
    else:
        cause = (
            "gradients hold inf/NaN at every scale the scaler tries; which params was not "
            "measured on the skipped steps (raise the sampling or run `traindoctor check`)"
        )
    fix = (
        "find the op that makes that layer's gradient inf/NaN (sqrt/log/division at 0, a "
        "torch.where whose unselected branch is NaN, float16 overflow of its activations) and "
        "make it finite; a lower init_scale or growth_interval does not fix a gradient that is "
        "non-finite at every scale"
    )
    yield tl.finding(
        title=title,
        step=first,
        evidence=evidence,
        where=Where(
            module=origin,
            params=tuple(names),
            source=_scaler_step_source(tl) or step_source(tl),
        ),
        cause=cause,
        fix=fix,
    )


def _nonfinite_counts(tl: TimelineView, skipped: set[int]) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    localized = 0
    for step, marks in tl.series("amp.nonfinite"):
        if step not in skipped or not isinstance(marks, dict):
            continue
        localized += 1
        for n, v in marks.items():
            if v:
                counts[n] = counts.get(n, 0) + 1
    return counts, localized


def _origin(counts: dict[str, int], order: list[str]) -> tuple[str | None, list[str]]:
    """The module closest to the loss among the params non-finite most often, and its params."""
    if not counts:
        return None, []
    most = max(counts.values())
    top = [n for n, c in counts.items() if c == most]
    rank = {n: i for i, n in enumerate(order)}
    last = max(top, key=lambda n: rank.get(n, -1))
    module = module_of(last)
    names = sorted(n for n in top if module_of(n) == module)
    return common_module(names) or module, names


def _streak_start(scales: list[tuple[int, float]], skipped: set[int]) -> int | None:
    """First step of the last run of skipped steps (a run may include single stepped steps)."""
    steps = [s for s, _ in scales]
    start = None
    for i, s in enumerate(steps):
        if s in skipped:
            start = s if start is None else start
        elif not (
            i + 1 < len(steps) and steps[i + 1] in skipped and i > 0 and steps[i - 1] in skipped
        ):
            start = None
    return start


def _first_fall(scales: list[tuple[int, float]], peak_step: int | None) -> int | None:
    after = [s for s, _ in scales if peak_step is None or s > peak_step]
    return after[0] if after else peak_step


def _scaler_step_source(tl: TimelineView) -> str | None:
    events = tl.events("scaler_step")
    return events[0].get("source") if events else None
