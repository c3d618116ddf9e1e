"""TD210 loss-spike-or-divergence."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import SortedWindow
from .._loss_scan import Levels, LossScan, SpikeTests
from .._objective import MIN_UPDATE, objective
from .._registry import rule
from .._util import loss_source
from ._layers import fmt, layer_series, params_of


@rule(
    code="TD210",
    name="loss-spike-or-divergence",
    severity=Severity.ERROR,
    summary="The training loss spikes far above its recent level, or climbs away for good.",
    requires=(
        "loss.train",
        "loss.backward",
        "grads.norm",
        "optim.lr",
        # what the objective is (rules/_objective.py) and how far each step moves the weights
        "loss_inputs.observed",
        "loss_inputs.stats",
        "loss_inputs.labels",
        "params.update",
        "params.norm",
        "schedule.clip_norm",
        "schedule.clip_max",
    ),
    events=("backward_call", "backward_site", "log_call", "loss_input"),
    facts=("optimizers", "params"),
    priority=45,
    state=LossScan,
)
def loss_spike_or_divergence(
    tl: TimelineView,
    state: LossScan,
    *,
    min_steps: int = 10,
    diverge_factor: float = 2.0,
    spike_factor: float = 3.0,
    robust_z: float = 10.0,
    stand_out: float = 1.5,
) -> Iterator[Finding]:
    """
    ## What it detects
    - divergence: the loss of the last steps is `diverge_factor` times the loss of the first
      steps or of the very first step, before any update (or 2.5 x that factor above the
      lowest level it reached, and up from it by at least half the starting loss: a loss fit
      to ~0 that drifts to a few percent of its start is a large ratio of a tiny level);
    - a spike: one step's loss is `spike_factor` times the median of the 10 steps before it,
      `robust_z` robust deviations above it, `stand_out` times their upper quartile (per-batch
      losses that are often high are the run's own spread), and up by at least half the
      starting loss.

    It names the step, and the layer whose gradient norm rose most (against its own history) at
    the first sampled step from there: the layer that led the jump.

    Judged only for a loss measured to be meant to fall (see TD108 and `rules/_objective.py`):
    silent for models trained against each other (several optimizers, several backward()
    lines) and for targets that trend over the run (RL returns, TD targets); for a loss it
    cannot read (written by hand, or with hand-written terms, or contrastive) a divergence is
    info, a warning only when each step moves the weights by 1x their initial norm or more,
    and spikes are not judged. The evidence says what was judged.

    A spike after which the loss is back at its level (the window before the spike: up to its
    upper quartile or 1.5x its median, or three quarters of the way down from the spike) over
    the next `max(3, n/10)` steps, and is no higher over the run's last fifth, is info: one batch far above the rest
    (heavy-tailed per-batch losses, as those of a small-batch BatchNorm net fit to ~0, which
    swing between 0.001 and 3), not instability; so is a spike in the run's last two steps,
    whose aftermath cannot be seen.

    ## Why it matters
    A diverging run wastes every step after the onset; a spike undoes part of the training and
    is often the first sign of a NaN to come. The step and the layer say where to look (the
    learning rate of that layer's group, a loss term, a bad batch).

    ## How it is measured
    The loss of every backward pass (or the logged training loss), read back in batches, averaged
    per step; median and median absolute deviation over a trailing window. The gradient norms
    come from the gradient probe's sampled steps (fused `torch._foreach_norm`).

    ## Example
    ```python
    opt = torch.optim.Adam(model.parameters(), lr=0.5)  # the loss climbs after a few steps
    ```

    ## Fix
    ```python
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=500)  # warmup
    ```

    ## Known false positives
    Curriculum or data-mixture changes raise the loss on purpose (a curriculum over a fixed
    label set is not seen as moving targets); a run that restarts from a
    checkpoint with a different loss weighting can look like a jump. Non-finite losses are left
    to TD201.
    """
    tests = SpikeTests(spike_factor, robust_z, stand_out)
    state.read(tl, tests)
    with state.current() as levels:
        return list(_judge(tl, state, levels, min_steps=min_steps, diverge_factor=diverge_factor))


def _judge(
    tl: TimelineView, state: LossScan, levels: Levels, *, min_steps: int, diverge_factor: float
) -> Iterator[Finding]:
    values, steps = levels.values, levels.steps
    if len(values) < min_steps:
        return
    data = state.objective.inputs(tl)
    obj = objective(tl, data)
    if obj.falls is False:
        return  # a loss not meant to fall: its rises and jumps are its course, not a fault
    w = max(3, len(values) // 10)
    # The loss before any update counts as the start too: a loss that jumped within the first
    # window (a far too high lr) already has a blown-up first-window median.
    head = levels.head_median(w)
    first = min(head, values[0]) if values[0] > 0 else head
    before = state.before(steps[0])
    if before is not None and first > 0:
        first = min(first, before)
    last = levels.tail_median(w)
    threshold = None
    if first > 0 and last >= diverge_factor * first:
        threshold = diverge_factor * first
    elif (
        best := _lowest_level(
            values, w, last, 2.5 * diverge_factor, 0.5 * first, levels.bound((w + 1) // 2)
        )
    ) is not None:
        # A rise from the lowest level counts when it is also large next to the starting loss
        # (as for a spike): a loss fit to ~0 that drifts back to a few percent of its start
        # (0.001 -> 0.04 from 1.8, resnet18 on batches of 16) is a large ratio of a tiny level.
        threshold = 2.5 * diverge_factor * best
    if threshold is not None:
        # the step after the last one below the threshold (scanned from the end)
        below = next((i for i in range(len(values) - 1, -1, -1) if values[i] < threshold), None)
        onset_i = below + 1 if below is not None else 0
        onset_i = min(onset_i, len(values) - 1)
        if obj.falls:
            severity = Severity.ERROR
        elif _overshoots(data.moves):
            severity = Severity.WARNING  # the steps are measured too large, whatever the loss
        else:
            severity = Severity.INFO
        yield _finding(
            tl,
            kind="divergence",
            step=steps[onset_i],
            before=first if threshold == diverge_factor * first else best,
            value=last,
            severity=severity,
            judged=obj.judged,
        )
        return
    if not obj.falls:
        return  # jumps of a loss whose course is unknown: not judged
    for i, med in levels.spikes():
        v = values[i]
        if v - med >= 0.5 * first:
            window = values[i - 10 : i]
            yield _finding(
                tl,
                kind="spike",
                step=steps[i],
                before=med,
                value=v,
                severity=Severity.INFO if _shrugged_off(values, i, window) else Severity.WARNING,
                judged=obj.judged,
            )
            return


def _lowest_level(
    values: list[float], w: int, last: float, ratio: float, rise: float, bound: float | None
) -> float | None:
    """The lowest median of `w` consecutive losses when the loss of the last steps is
    `ratio` times it and `rise` above it (and it is > 0), else None.

    Every window's median is at least its ceil(w/2)-th smallest value, so at least the
    ceil(w/2)-th smallest loss of the run (`bound`, or a lower bound of it): when that already
    rules the rise out (the usual case), no window is computed; otherwise one sliding sorted
    window, O(n log w), gives the exact minimum the old per-window medians gave."""
    if bound is None:
        bound = sorted(values)[(w + 1) // 2 - 1]
    if last <= 0 or (bound > 0 and (last < ratio * bound or last - bound < rise)):
        return None
    window = SortedWindow()
    for v in values[:w]:
        window.add(v)
    best = window.median()
    for i in range(w, len(values)):
        window.remove(values[i - w])
        window.add(values[i])
        best = min(best, window.median())
    if best > 0 and last >= ratio * best and last - best >= rise:
        return best
    return None


def _shrugged_off(values: list[float], i: int, window: list[float]) -> bool:
    """The run is back at its level after the spike at `values[i]`, and stays there: one batch
    far above the rest (heavy-tailed data: x^4 features in pytorch/examples' regression, the
    per-batch losses of a small-batch BatchNorm net fit to ~0), not instability.

    Back at its level: no higher than the window before the spike with its own spread (its
    upper quartile, or 1.5x its median: per-batch losses of 0.001 to 0.8 around a median of
    0.08 are one level), or back down at least three quarters of the way from the spike to
    that median (the median of a few heavy-tailed losses is itself noisy). Judged on the median
    of the next `max(3, n // 10)` steps (back at once) and of the run's last fifth without the
    spike itself (no higher by the end). At the very end of the run the recovery cannot be
    seen: not asserted either."""
    after = values[i + 1 : i + 1 + max(3, len(values) // 10)]
    if len(after) < 2:
        return True
    med = statistics.median(window)
    level = max(1.5 * med, _quantile(window, 0.75), med + 0.25 * (values[i] - med))
    tail = max(5, len(values) // 5)
    end = [v for j, v in enumerate(values) if j >= len(values) - tail and j != i]
    return statistics.median(after) <= level and statistics.median(end) <= level


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of `values` (0 <= q <= 1)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _overshoots(moves: list[float], min_update: float = MIN_UPDATE) -> bool:
    """Each step moves the weights by at least `min_update` of their initial norm (median of
    updates_to_initial)."""
    return len(moves) >= 2 and statistics.median(moves) >= min_update


def _finding(
    tl: TimelineView,
    *,
    kind: str,
    step: int,
    before: float,
    value: float,
    severity: Severity,
    judged: str,
) -> Finding:
    params = tl.fact("params") or {}
    layer, layer_ev = _leading_layer(tl, step)
    lrs = dict(tl.series("optim.lr")).get(step) or {}
    lr_text = ", ".join(f"{g} lr={v:g}" for g, v in sorted(lrs.items()) if v is not None)
    led = (
        f"; the gradient of `{layer}` rose most ({layer_ev['ratio']:.0f}x its median)"
        if layer
        else ""
    )
    if kind == "divergence" and severity is Severity.INFO:
        title = f"training loss rises from step {step}: {fmt(before)} -> {fmt(value)}"
        cause = f"the loss climbs from {fmt(before)} to {fmt(value)} and does not come back"
    elif kind == "divergence":
        title = f"training loss diverges from step {step}: {fmt(before)} -> {fmt(value)}"
        cause = (
            f"the loss climbs away from {fmt(before)} to {fmt(value)} and does not come back"
            f"{led}"
            + (f"; the optimizer runs with {lr_text}" if lr_text else "")
            + ": the steps overshoot (a learning rate too large for this model and batch)"
        )
    else:
        title = f"loss spike at step {step}: {fmt(value)}, {value / before:.1f}x the median before"
        cause = (
            f"one step's loss jumped to {value / before:.1f}x its recent median{led}: a batch "
            "unlike the others, or an update that overshot"
        )
    return tl.finding(
        title=title + (f", led by `{layer}`" if layer else ""),
        step=step,
        evidence={
            "kind": kind,
            "loss_before": before,
            "loss": value,
            "leading_layer": layer_ev,
            "lr": lrs,
            "judged": judged,
        },
        where=Where(
            module=layer,
            params=params_of(params, layer) if layer else (),
            source=loss_source(tl),
        ),
        cause=f"{cause}; judged: {judged}"
        if severity is not Severity.INFO
        else f"{cause}; not judged a fault: {judged}",
        fix="lower the learning rate or add a warmup; if one layer leads, give its group a "
        "smaller lr; look at the batch of that step; clip with clip_grad_norm_ at a norm measured "
        "on a healthy run as a guard, not as the fix",
        severity=severity,
        confidence=0.8 if kind == "divergence" else 0.6,
    )


def _leading_layer(tl: TimelineView, step: int) -> tuple[str | None, dict]:
    """The layer whose grad norm, at the first sampled step at or after `step` (else the last
    sampled one), is the highest multiple of its median over the sampled steps before `step`."""
    layers = layer_series(tl.series("grads.norm"))
    sampled = sorted({s for series in layers.values() for s, _ in series})
    after = [s for s in sampled if s >= step]
    at = after[0] if after else (sampled[-1] if sampled else None)
    if at is None:
        return None, {}
    best: tuple[float, str, float, float] | None = None
    for layer, series in layers.items():
        hist = [v for s, v in series if s < step and s != at and v > 0]
        now = dict(series).get(at)
        if not hist or now is None:
            continue
        med = statistics.median(hist)
        ratio = now / med if med > 0 else math.inf
        if best is None or ratio > best[0]:
            best = (ratio, layer, now, med)
    if best is None or best[0] <= 1.0:
        return None, {}
    ratio, layer, now, med = best
    return layer, {
        "layer": layer,
        "step": at,
        "grad_norm": now,
        "median_before": med,
        "ratio": ratio,
    }
