"""TD210 loss-spike-or-divergence."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import SortedWindow
from .._loss_scan import Levels, LossScan, SpikeTests
from .._objective import MIN_UPDATE, _training_sites, objective
from .._registry import rule
from .._util import loss_source
from ._layers import fmt, layer_series, params_of

# A spike the run never came back from is a fault when it undid this share of the progress made
# before it, to the end of the run (see _recovery).
UNDONE = 0.2


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
    events=("backward_call", "backward_site", "log_call", "loss_input", "models_added"),
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
      to ~0 that drifts to a few percent of its start is a large ratio of a tiny level), and
      three quarters of the last steps are above the level the run had reached (the start, or
      the highest loss of the steps of that lowest level): a few batches far above the rest at
      the very end, between batches still at the fitted level, are no climb; nor is a
      regression loss that rose with its targets (their mean square grew 1.5x or more in loss
      units while the loss relative to it, on the observed steps, did not rise `diverge_factor`
      times: a series whose values grow over the run);
    - in a run too short for those windows (under `min_steps`: a script that stops itself on
      a non-finite loss before its backward), a loss that rose 1000x its first step's value,
      each of the last three steps above the one before;
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

    A spike is a warning only when the run never came back from it: no median of
    `max(3, n/10)` consecutive steps after it is back at the level of the 10 steps before it
    (up to their highest loss), and even the lowest undid a fifth or more of the progress made
    before the spike (from the starting loss down to their median). A spike the run came back
    from, at once or after many bad steps, is info: one batch far above the rest
    (heavy-tailed per-batch losses, as those of a small-batch BatchNorm net fit to ~0, which
    swing between 0.001 and 3), not a fault of the run; so is a spike too near the end for its
    aftermath to be seen. Every spike is weighed: the first one the run never came back from
    is the warning, else the first one is said at info.

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
    A jump within 10 steps of a backward() line first run later in the run, or of a model
    watched from a later phase on (a student trained after its teacher), is measured against
    another phase's losses: not judged; a climb is judged on the last phase's losses alone. Curriculum or data-mixture changes raise the loss on
    purpose (a curriculum over a fixed
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
        yield from _blown_up(tl, state, values, steps)
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
    threshold, best, reached = _rise(values, levels, w, first, last, diverge_factor)
    if threshold is not None and _quarter(values[-w:]) <= reached:
        # A quarter of the last steps are still back at the level the run had reached: a few
        # batches far above the rest at the very end (the per-batch losses of a small-batch
        # net fit to ~0 swing between 0.001 and 6), not a loss that climbed away for good.
        threshold = None
    if (
        threshold is not None
        and best is None
        and _rose_with_targets(tl, data, steps, w, diverge_factor)
    ):
        # A regression loss that rose with its targets' scale (a random walk's values, series
        # that grow over the run): the same loss in the targets' units did not.
        threshold = None
    phases = _phases(tl)
    later = [p for p in phases if p > steps[0]]
    if threshold is not None and later:
        # A later phase (a student after its teacher) starts at its own loss: the climb is
        # judged on that phase's losses alone, from its first window to its last.
        seg = [v for s, v in zip(steps, values, strict=False) if s >= max(later)]
        w2 = max(3, len(seg) // 10)
        if len(seg) < min_steps or statistics.median(seg[-w2:]) < diverge_factor * min(
            statistics.median(seg[:w2]), seg[0]
        ):
            threshold = None
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
            before=first if best is None else best,
            value=last,
            severity=severity,
            judged=obj.judged,
        )
        return
    if not obj.falls:
        return  # jumps of a loss whose course is unknown: not judged
    # Every spike is weighed, not only the first: a batch far above the rest early on must not
    # hide a later spike the run never came back from.
    first_info = None
    for i, med in levels.spikes():
        v = values[i]
        if v - med < 0.5 * first or any(steps[max(0, i - 10)] < p <= steps[i] for p in phases):
            continue  # the median it is measured against holds another phase's losses
        window = list(values[i - 10 : i])
        came_back = _recovery(values, steps, i, window, w, first)
        if came_back["recovered"] is False:
            yield _finding(
                tl,
                kind="spike",
                step=steps[i],
                before=med,
                value=v,
                severity=Severity.WARNING,
                judged=obj.judged,
                recovery=came_back,
            )
            return
        if first_info is None:
            first_info = (i, med, came_back)
    if first_info is not None:
        i, med, came_back = first_info
        yield _finding(
            tl,
            kind="spike",
            step=steps[i],
            before=med,
            value=values[i],
            severity=Severity.INFO,
            judged=obj.judged,
            recovery=came_back,
        )


def _phases(tl: TimelineView) -> set[int]:
    """Steps where a later phase of the program starts: a backward() line first run after
    the run's start (a student trained after its teacher, a fine-tune after a pre-training),
    or models watched from a later phase on (zero-code: trained by an optimizer built later).
    Their losses are another model's or another objective's, no jump of the ones before."""
    sites = sorted(e["step"] for e in tl.events("backward_site") if isinstance(e.get("step"), int))
    phases = set(sites[1:]) - {sites[0]} if sites else set()
    return phases | {e["step"] for e in tl.events("models_added") if isinstance(e.get("step"), int)}


# A short run's loss that rose this many times its first value, step after step, blew up: no
# batch-to-batch spread reaches that.
BLOWN_UP = 1e3


def _blown_up(
    tl: TimelineView, state: LossScan, values: Sequence[float], steps: Sequence[int]
) -> Iterator[Finding]:
    """A run too short for the windows (the script stopped itself on a non-finite loss, before
    its backward: a NaN check that exits) whose loss rose `BLOWN_UP`x from its first step, each
    of its last three steps above the one before: a divergence, judged as the longer runs' (an
    error for a loss meant to fall; for one of unknown course a warning when its steps move the
    weights by their initial norm or more, or when it rose a million-fold, else info)."""
    if len(values) < 4 or not values[0] > 0 or not math.isfinite(values[-1]):
        return
    tail = values[-3:]
    if values[-1] < BLOWN_UP * values[0] or not all(a < b for a, b in zip(tail, tail[1:])):
        return
    data = state.objective.inputs(tl)
    obj = objective(tl, data)
    if obj.falls is False:
        return  # a loss not meant to fall
    if obj.falls:
        severity = Severity.ERROR
    elif _overshoots(data.moves) or values[-1] >= BLOWN_UP**2 * values[0]:
        # The steps are measured too large, or the loss rose a million-fold within a few
        # steps: no course of a loss, whatever it is, does that (targets that grow do not).
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    below = next(i for i in range(len(values) - 1, -1, -1) if values[i] < 2.0 * values[0])
    yield _finding(
        tl,
        kind="divergence",
        step=steps[min(below + 1, len(values) - 1)],
        before=values[0],
        value=values[-1],
        severity=severity,
        judged=obj.judged,
    )


def _rise(
    values: Sequence[float],
    levels: Levels,
    w: int,
    first: float,
    last: float,
    diverge_factor: float,
) -> tuple[float | None, float | None, float]:
    """When `last` is a divergence: (its threshold, the lowest level it is measured from or
    None when from the start, the level the run had reached: the start, or the highest loss of
    the window of that lowest level, with its spread); else (None, None, 0)."""
    if first > 0 and last >= diverge_factor * first:
        return diverge_factor * first, None, first
    found = _lowest_level(
        values, w, last, 2.5 * diverge_factor, 0.5 * first, levels.bound((w + 1) // 2)
    )
    if found is not None:
        # A rise from the lowest level counts when it is also large next to the starting loss
        # (as for a spike): a loss fit to ~0 that drifts back to a few percent of its start
        # (0.001 -> 0.04 from 1.8, resnet18 on batches of 16) is a large ratio of a tiny level.
        best, at = found
        return 2.5 * diverge_factor * best, best, max(values[at : at + w])
    return None, None, 0.0


# How a regression loss scales with its targets' mean square: squared errors with it, absolute
# errors with its square root.
_TARGET_POWER = {"mse_loss": 1.0, "l1_loss": 0.5, "smooth_l1_loss": 0.5, "huber_loss": 0.5}
# The targets' own scale must have grown this much (in loss units) to explain a rise.
_SCALE_GREW = 1.5


def _rose_with_targets(
    tl: TimelineView, data: Any, steps: Sequence[int], w: int, factor: float
) -> str | None:
    """Why a rise of the loss is its targets' and not the training's: every training loss is a
    regression loss whose targets' mean square grew `_SCALE_GREW`x or more (in loss units) from
    the first `w` judged steps to the last `w`, while the loss divided by it, step by step on
    the observed steps, rose less than `factor`x (a model that tracks a random walk's values,
    or a series that grows over the run, as well at the end as at the start). Else None."""
    said = []
    for e in _training_sites(tl, data).values():
        power = _TARGET_POWER.get(e.get("fn"))
        if power is None:
            return None
        obs = [
            (st, d["loss"], d["t_ms"] ** power)
            for st, d in data.stats.get(e.get("site"), [])
            if "t_ms" in d and "loss" in d and d["t_ms"] > 0 and math.isfinite(d["loss"])
        ]
        if len(obs) < 2:
            return None
        third = max(1, len(obs) // 3)
        head = [o for o in obs if o[0] <= steps[w - 1]] or obs[:third]
        tail = [o for o in obs if o[0] >= steps[-w]] or obs[-third:]
        scale = statistics.median(o[2] for o in tail) / statistics.median(o[2] for o in head)
        before = statistics.median(o[1] / o[2] for o in head)
        after = statistics.median(o[1] / o[2] for o in tail)
        if scale < _SCALE_GREW or not before > 0 or after >= factor * before:
            return None
        said.append(
            f"{e.get('fn')}'s targets grew {scale:.3g}x in loss units while the loss relative "
            f"to them went {before:.3g} -> {after:.3g}"
        )
    return "; ".join(said) if said else None


def _quarter(values: Sequence[float]) -> float:
    """The lower quartile of `values` (the value a quarter of them are below)."""
    xs = sorted(values)
    return xs[len(xs) // 4]


def _lowest_level(
    values: Sequence[float],
    w: int,
    last: float,
    ratio: float,
    rise: float,
    bound: float | None,
) -> tuple[float, int] | None:
    """The lowest median of `w` consecutive losses and the index its window starts at, when
    the loss of the last steps is `ratio` times it and `rise` above it (and it is > 0), else
    None.

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
    best, at = window.median(), 0
    for i in range(w, len(values)):
        window.remove(values[i - w])
        window.add(values[i])
        if (m := window.median()) < best:
            best, at = m, i - w + 1
    if best > 0 and last >= ratio * best and last - best >= rise:
        return best, at
    return None


def _recovery(
    values: Sequence[float],
    steps: Sequence[int],
    i: int,
    window: list[float],
    w: int,
    first: float,
) -> dict[str, Any]:
    """Whether the run came back to its level after the spike at `values[i]`.

    The level is the one of the 10 steps before the spike with their whole spread: up to the
    highest of them (heavy-tailed per-batch losses, as those of a small-batch BatchNorm net fit
    to ~0, swing between 0.001 and 3 from one batch to the next, and several high batches in a
    row happen on a healthy run). The run came back when the median of some `w` consecutive
    steps after the spike (a tenth of the run) is at that level, however long it took: a spike
    the run comes back from is no fault of the run, and what happens after that is not this
    spike's doing (a later spike, a drift: judged on their own). One it never came back from
    left the loss higher to the end; it counts when even the lowest of those medians undid a
    fifth or more of the progress made before it (from `first`, the starting loss, down to the
    median before the spike): a loss fit to 0.02 that stays at 0.1 from a start of 1.8 is
    noise of a tiny level. Fewer than `w` steps after the spike: it cannot be told (None)."""
    n = len(values)
    med = statistics.median(window)
    level = max(window)
    out: dict[str, Any] = {"recovered": None, "level_before": level}
    if n - (i + 1) < w:
        return out
    # The lowest rolling median after the spike, scanned until one is at the level.
    rolling = SortedWindow()
    for v in values[i + 1 : i + 1 + w]:
        rolling.add(v)
    best, end = rolling.median(), i + w
    for j in range(i + 1 + w, n):
        if best <= level:
            break
        rolling.remove(values[j - w])
        rolling.add(values[j])
        if (m := rolling.median()) < best:
            best, end = m, j
    undone = (best - med) / (first - med) if first > med else 0.0
    out.update(
        recovered=best <= level or undone < UNDONE,
        lowest_median=best,
        median_steps=[steps[end - w + 1], steps[end]],
        progress_undone=round(max(undone, 0.0), 4),
    )
    return out


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
    recovery: dict[str, Any] | None = None,
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
        ) + _aftermath(recovery or {})
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
            **({"recovery": recovery} if recovery else {}),
        },
        where=Where(
            module=layer,
            params=params_of(params, layer) if layer else (),
            source=loss_source(tl),
        ),
        # a spike's severity is its aftermath's; a divergence at info is one not judged
        cause=f"{cause}; judged: {judged}"
        if severity is not Severity.INFO or kind == "spike"
        else f"{cause}; not judged a fault: {judged}",
        fix="lower the learning rate or add a warmup; if one layer leads, give its group a "
        "smaller lr; look at the batch of that step; clip with clip_grad_norm_ at a norm measured "
        "on a healthy run as a guard, not as the fix",
        severity=severity,
        confidence=0.8 if kind == "divergence" else 0.6,
    )


def _aftermath(recovery: dict[str, Any]) -> str:
    """What the run did after a spike, in words (see _recovery)."""
    level, done = recovery.get("level_before"), recovery.get("recovered")
    if done is None or level is None:
        return "; too few steps follow it to tell whether the run came back"
    low, (a, b) = fmt(recovery["lowest_median"]), recovery["median_steps"]
    if recovery["lowest_median"] <= level:
        return (
            f"; the run came back: the median of steps {a}-{b} is {low}, within the "
            f"{fmt(level)} of the 10 steps before it"
        )
    said = f"the lowest median of {b - a + 1} steps after it is {low} (steps {a}-{b})"
    undone = f"{recovery['progress_undone']:.0%} of the progress made before it undone"
    if done:
        return f"; {said}, above the {fmt(level)} of the steps before it, but only {undone}"
    return f"; the run never came back: {said}, above the {fmt(level)} before it, {undone}"


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
