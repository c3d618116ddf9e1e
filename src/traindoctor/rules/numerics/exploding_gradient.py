"""TD206 exploding-gradient."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, SortedWindow, fresh
from .._objective import objective
from .._objective_inputs import ObjectiveScan
from .._optimizer_kinds import SCALE_INVARIANT, classes_stepping
from .._registry import rule
from .._util import per_step_mean, train_loss_values
from ._layers import fmt, layer_norms, layer_order, layer_series, params_of


class ExplodeScan:
    """TD206's scan kept between passes (rules/_incremental.py): per layer, its reference
    history, sorted for the median (the MAD is computed only when a norm clears the median
    test: rare), and the step it first jumped at. A pass folds in the sampled steps written
    since the last one; the steps still open are judged and then undone."""

    def __init__(self) -> None:
        self.grads, self.weights = Reader("grads.norm"), Reader("params.norm")
        self.readers = (self.grads, self.weights)
        self.layers: dict[str, _LayerScan] = {}
        self.open: dict[int, list[Any]] = {}  # step -> [grad norms, weight norms] not folded
        self.folded = 0  # steps folded for good
        self.objective = ObjectiveScan()  # read once there is a jump to judge

    def hits(self, tl: TimelineView, min_history: int, factor: float, robust_z: float) -> list:
        """The first jump of each layer, in the order the layers first appear (a fresh scan's)."""
        for i, reader in enumerate(self.readers):
            settled, pending = reader.read(tl)
            for s, rec in settled + pending:
                self.open.setdefault(s, [None, None])[i] = rec
        if self.folded + len(self.open) <= min_history:
            # A jump needs `min_history` earlier norms of its layer, one a step: with no more
            # steps than that, none can be found yet. The steps wait, unfolded, for the pass
            # that can judge them (the structural steps' passes: 5,000 layers folded and undone
            # three times on a model of 10,000 tensors, for nothing).
            return []
        args = (min_history, factor, robust_z)
        for s in sorted(self.open):
            # Folded for good once settled in both signals (a later step exists in each; the
            # weight norms may be absent altogether, for a model too large to copy).
            g_done, p_done = self.grads.done, self.weights.done
            if g_done is None or s > g_done or (p_done is not None and s > p_done):
                break
            self._fold(s, *self.open.pop(s), args, undo=None)
            self.folded += 1
        undo: list[tuple] = []
        for s in sorted(self.open):
            self._fold(s, *self.open[s], args, undo=undo)
        found = [scan.hit for scan in self.layers.values() if scan.hit is not None]
        for layer, saved, added in reversed(undo):
            if saved is None:
                del self.layers[layer]
            else:
                self.layers[layer].restore(saved, added)
        return found

    def _fold(self, step: int, g: Any, p: Any, args: tuple, undo: list | None) -> None:
        grads = layer_norms(g) if g is not None else {}
        levels = _peer_levels(grads, layer_norms(p) if p is not None else {})
        for layer, norm in grads.items():
            scan = self.layers.get(layer)
            saved = None if scan is None else scan.saved()
            if scan is None:
                scan = self.layers[layer] = _LayerScan()
            added = scan.add(layer, step, norm, levels.get(layer), *args)
            if undo is not None:
                undo.append((layer, saved, added))


class _LayerScan:
    """One layer's history: its nonzero norms, each lifted to a `factor`-th of the other
    layers' level at its step (`_reference`), until its first jump."""

    def __init__(self) -> None:
        self.ref = SortedWindow()
        self.n = 0
        self.prev = 0.0  # the last reference value
        self.prev_step = 0
        self.lifted = False  # a reference value differs from the norm itself
        self.hit: tuple | None = None

    def add(
        self,
        layer: str,
        step: int,
        value: float,
        level: float | None,
        min_history: int,
        factor: float,
        robust_z: float,
    ) -> float | None:
        """Judge `value` against the history, then add it; returns the reference value added."""
        if self.hit is not None:
            return None
        if self.n >= min_history:
            med = self.ref.median()
            if med > 0 and value >= factor * max(med, self.prev):
                mad = statistics.median([abs(v - med) for v in self.ref])
                if value >= med + robust_z * 1.4826 * mad:
                    self.hit = (step, -value / med, layer, med, value, self.lifted, self.prev_step)
                    return None
        if value > 0:
            ref = value if level is None else max(value, level / factor)
            self.ref.add(ref)
            self.n += 1
            self.prev, self.prev_step = ref, step
            self.lifted = self.lifted or ref != value
            return ref
        return None

    def saved(self) -> tuple:
        return (self.n, self.prev, self.prev_step, self.lifted, self.hit)

    def restore(self, saved: tuple, added: float | None) -> None:
        """Undo an add() that returned `added` (undone newest first)."""
        if added is not None:
            self.ref.remove(added)
        self.n, self.prev, self.prev_step, self.lifted, self.hit = saved


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
        "loss_inputs.observed",
        "loss_inputs.stats",
        "loss_inputs.labels",
        "params.update",
    ),
    events=("backward_site", "loss_input"),
    facts=("optimizers", "params"),
    priority=40,
    state=lambda: ExplodeScan(),
)
def exploding_gradient(
    tl: TimelineView,
    state: ExplodeScan,
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

        When the jump is the last sample of the norm, whether it stayed up is not measured: the
        finding is an error only when the loss shows harm (its median after the jump not below
        the one before, or, with no loss measured after it, the loss at the jump's step above
        every loss since the previous sample), else a warning. When the run ended right after
        the jump (fewer than 3 losses after it) and the loss kept falling over the steps since
        the previous sample, it is info: a deep net leaving the plateau of its init (8 ReLU
        layers, AdamW 1e-3: the first layer's gradient 0.0012 at steps 1-10, 0.0098 at step 20,
        0.215 at step 40, the last, while the loss fell 2.32 -> 1.67) grows its gradients by
        orders of magnitude over a few dozen steps, and a blow-up inside that span would have
        shown in the loss by the jump's own step.

        Under an optimizer that sizes its steps by the lr rather than by the gradient (Adam,
        AdamW, RMSprop, Adagrad, Lion, ...), a gradient that jumps does not move the weights any
        further: the jump is reported only when the layer's update (||Δθ||, params probe)
        measurably jumped with it (`factor` times its level before, at least the level the other
        layers' updates carry for weights of its size), or when the training loss rose out of
        its range with it (the median of the 8 steps after the jump above every loss of the 8
        up to it), and then at most as a warning. A 16-layer GELU MLP under AdamW (lr 1e-3) on
        random labels: its first layers' gradients, ~3e-7 at init, rose 1e5x by step 30 while
        their updates stayed at Adam's usual size and the loss stayed flat: not reported.

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
    if not fresh(state, tl):
        state.__init__()  # an earlier step was rewritten: read the whole timeline again
    hits = state.hits(tl, min_history, factor, robust_z)
    if not hits:
        return
    hits.sort(key=lambda h: (h[0], h[1]))
    step, _, layer, med, value, lifted, prev_step = hits[0]
    series = layer_series(tl.series("grads.norm"))[layer]  # the whole series: on a jump only
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
    # "Stayed there" needs a later sample: a jump at the last sampled step is one measure.
    persistent = last_step > step and last >= factor * med
    lrs = dict(tl.series("optim.lr")).get(step) or {}
    lr_text = ", ".join(f"{g} lr={v:g}" for g, v in sorted(lrs.items()) if v is not None)
    also = [x for x in layer_order(params, same_step) if x != layer]
    around = _loss_around(tl, step)
    improving = around if around is not None and around[1] < around[0] else None
    # No loss measured after the jump (the run ended right after it): the loss over the steps
    # since the previous sample is the evidence. A gradient that blew up in that span moved the
    # weights by far more than the lr intends, which shows in the loss by the jump's own step;
    # one the loss kept falling through grew while the model learned (a deep net leaving the
    # plateau of its init, where its first layers' gradients start vanishingly small).
    unmeasured_after = around is None and _losses_after(tl, step) < 3
    through = _loss_through(tl, prev_step, step) if unmeasured_after else None
    fell = through is not None and through["trend"] == "fell"
    if last_step > step:
        # a later sample says whether the norm stayed up
        severity = Severity.ERROR if persistent else Severity.WARNING
    else:
        # the jump is the last sample of the norm: the loss says whether it harmed
        rose = (around is not None and not around[1] < around[0]) or (
            through is not None and through["trend"] == "rose"
        )
        severity = Severity.ERROR if rose else Severity.WARNING
    obj = objective(tl, state.objective.inputs(tl))
    classes = classes_stepping(tl.fact("optimizers"), params_of(params, layer))
    # Adam-type steps are sized by the lr, not by the gradient: a gradient that jumps moves the
    # weights no further unless the update measurably jumped too, so only that or a loss that
    # rose with it is evidence of harm (a deep net's first layers leaving ~1e-7 under AdamW on
    # random labels: 1e5x, updates at their usual size, loss flat). Without either: nothing.
    bounded = bool(classes) and classes <= SCALE_INVARIANT
    update = _update_jump(tl, layer, step, series, factor * med) if bounded else None
    rose = None
    if bounded and not (update is not None and update["ratio"] >= factor):
        rose = _loss_rose(tl, step, prev_step)
        if rose is None:
            return
        if severity is Severity.ERROR:
            severity = Severity.WARNING  # the loss, not the update, shows the harm
    if improving is not None or fell or obj.falls is not True:
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
            "loss_measured_after": not unmeasured_after,
            "loss_through_rise": through,
            "objective": obj.kind,
            "judged": obj.judged,
            "optimizer_step_bounded": bounded,
            "update": update,
            "loss_rose": rose,
        },
        where=Where(module=layer, params=params_of(params, layer)),
        cause=f"the gradient of `{layer}` rose {_times(value / med)} above {below} at step {step}"
        + (
            f" and stayed there (still {fmt(last)} at step {last_step})"
            if persistent and last_step > step
            else ""
        )
        + (f"; the optimizer runs with {lr_text}" if lr_text else "")
        + (_bounded_cause(classes, update, rose) if rose is not None else _update_text(update))
        + (
            ""
            if rose is not None
            else f"; the training loss kept falling through it ({fmt(improving[0])} before, "
            f"{fmt(improving[1])} after), so it has not hurt training (yet)"
            if improving is not None
            else f"; the training loss kept falling while it rose ({fmt(through['before'])} "
            f"from step {prev_step}, {fmt(through['at'])} at step {step}) and the run ended "
            "before any later loss was measured, so nothing shows that it hurt training"
            if fell
            else f"; the training loss rose with it ({fmt(through['before'])} from step "
            f"{prev_step}, {fmt(through['at'])} at step {step}): updates this large throw the "
            "weights out of the region they were trained in (a learning rate too large for "
            "this layer, or a loss term that grows without bound)"
            if through is not None
            else "; the run ended before its effect on the loss could be measured"
            if unmeasured_after
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


def _update_text(update: dict | None) -> str:
    if update is None:
        return ""
    return (
        f"; its update rose {_times(update['ratio'])} with it (||Δθ|| {fmt(update['update'])}, "
        f"{fmt(update['level_before'])} before)"
    )


def _bounded_cause(classes: set, update: dict | None, rose: dict) -> str:
    """The cause under an optimizer whose step does not grow with the gradient: only what was
    measured (the update, the loss), no claim of updates that are large."""
    names = "/".join(sorted(str(c) for c in classes))
    measured = (
        f" (its update {fmt(update['update'])}, {update['ratio']:.1f}x its level before)"
        if update is not None
        else ""
    )
    return (
        f"; {names} sizes its steps by the lr, not by the gradient, so the jump did not enlarge "
        f"the updates{measured}, but the training loss rose with it ({fmt(rose['before'])} "
        f"before, {fmt(rose['after'])} after): what drives the gradient up drives the loss up "
        "(a learning rate too large for this loss, or a loss term that grows without bound)"
    )


def _update_jump(
    tl: TimelineView,
    layer: str,
    step: int,
    grads: list[tuple[int, float]],
    high: float,
) -> dict | None:
    """The layer's largest update (||Δθ||) while its gradient stayed at or above `high` from
    `step` on, against its level before: the median of its own earlier updates, at least the
    level the other layers' updates carry for weights of its size (the median over earlier
    steps of their median ||Δθ|| / ||θ||, times its ||θ||; a layer whose gradient sat below
    Adam's eps moved less than its lr allows until it woke up). None where not measured."""
    updates = layer_series(tl.series("params.update"))
    own = dict(updates.get(layer) or ())
    during = []
    for s, g in grads:
        if s < step:
            continue
        if g < high:
            break
        if s in own:
            during.append(own[s])
    before = [v for s, v in own.items() if s < step and v > 0]
    if not during or not before:
        return None
    level = statistics.median(before)
    weights = {
        name: dict(series) for name, series in layer_series(tl.series("params.norm")).items()
    }
    mine = weights.get(layer, {})
    peers = []
    for s, w in mine.items():
        if s >= step or not w:
            continue
        rel = [
            dict(series).get(s, 0.0) / weights[other][s]
            for other, series in updates.items()
            if other != layer and weights.get(other, {}).get(s)
        ]
        rel = [r for r in rel if r > 0]
        if rel:
            peers.append(statistics.median(rel) * w)
    if peers:
        level = max(level, statistics.median(peers))
    top = max(during)
    return {"update": top, "level_before": level, "ratio": top / level}


def _loss_rose(tl: TimelineView, step: int, prev_step: int, span: int = 8) -> dict | None:
    """{"before", "after"} when the training loss rose out of its range with the jump: the
    median of the `span` steps after it above every loss of the `span` steps up to it (at
    least 3 of each), or, with fewer than 3 measured after it, the loss at the jump above
    every loss since the previous sample (_loss_through). Else None: flat noise does not."""
    losses = per_step_mean(train_loss_values(tl))
    before = [v for s, v in losses if s <= step][-span:]
    after = [v if math.isfinite(v) else math.inf for s, v in losses if s > step][:span]
    if len(after) >= 3:
        if len(before) < 3 or not all(math.isfinite(v) for v in before):
            return None
        a = statistics.median(after)
        return {"before": statistics.median(before), "after": a} if a > max(before) else None
    through = _loss_through(tl, prev_step, step)
    if through is not None and through["trend"] == "rose":
        return {"before": through["before"], "after": through["at"]}
    return None


def _loss_around(tl: TimelineView, step: int, span: int = 8) -> list[float] | None:
    """[median training loss of the `span` steps up to `step`, of the `span` steps after it]
    when at least 3 of each are measured and the earlier one is finite; else None."""
    losses = per_step_mean(train_loss_values(tl))
    before = [v for s, v in losses if s <= step][-span:]
    after = [v for s, v in losses if s > step][:span]
    if len(before) < 3 or len(after) < 3:
        return None
    b, a = statistics.median(before), statistics.median(after)
    if not math.isfinite(b):
        return None
    return [b, a if math.isfinite(a) else math.inf]


def _losses_after(tl: TimelineView, step: int) -> int:
    """How many steps after `step` have a training loss."""
    return sum(1 for s, _ in per_step_mean(train_loss_values(tl)) if s > step)


def _loss_through(tl: TimelineView, start: int, step: int, span: int = 8) -> dict | None:
    """How the training loss moved over the steps start..step (the span since the previous
    gradient sample up to the jump): {"trend": "fell" | "rose", "before": median of its first
    `span` steps, "at": the loss at `step`}. "rose": the loss at `step` is above every earlier
    loss of the span (a blow-up inside the span shows by then); "fell": the median of its last
    steps is below that of its first and the loss at `step` is not out of the span's range.
    None when flat, non-finite, or with fewer than 3 steps measured."""
    losses = [(s, v) for s, v in per_step_mean(train_loss_values(tl)) if start <= s <= step]
    if len(losses) < 3 or losses[-1][0] != step:
        return None
    values = [v for _, v in losses]
    if not all(math.isfinite(v) for v in values):
        return None
    half = min(span, len(values) // 2 + 1)
    first, late, at = (
        statistics.median(values[:half]),
        statistics.median(values[-half:]),
        values[-1],
    )
    if at > max(values[:-1]):
        trend = "rose"
    elif late < first:
        trend = "fell"
    else:
        return None
    return {"trend": trend, "before": first, "at": at}


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio < 1e4 else f"{ratio:.1e}x"


def _peer_levels(grads: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """{layer: the gradient norm the other layers carry for weights of this layer's size}, at
    one sampled step (its per-layer norms): the median over the other layers of ||g|| / ||θ||,
    times this layer's ||θ||. Only where the weight norms were measured (sampled steps) and at
    least one other layer has a nonzero gradient."""
    theta = {layer: v for layer, v in weights.items() if v > 0}
    by_layer: dict[str, float] = {}
    for layer, g in grads.items():
        w = theta.get(layer)
        if w and g > 0:
            by_layer[layer] = g / w
    out: dict[str, float] = {}
    if not by_layer:
        return out
    # The median of the others, read by index in the step's sorted ratios with this layer's
    # one left out: O(L log L) a step instead of a list and a sort per layer (O(L^2 log L):
    # seconds per pass on a model of 10,000 tensors). Same values as statistics.median.
    ranked = sorted(by_layer.values())
    where = {layer: bisect.bisect_left(ranked, r) for layer, r in by_layer.items()}
    n = len(ranked)
    for layer in grads:
        w = theta.get(layer)
        skip = where.get(layer)
        m = n if skip is None else n - 1
        if m and w:
            out[layer] = _median_without(ranked, skip, m) * w
    return out


def _median_without(ranked: list[float], skip: int | None, m: int) -> float:
    """statistics.median of `ranked` (sorted) with the item at index `skip` left out (none when
    None); m: how many are left."""

    def at(j: int) -> float:
        return ranked[j if skip is None or j < skip else j + 1]

    half = m // 2
    if m % 2:
        return at(half)
    return (at(half - 1) + at(half)) / 2


def _reference(history: list[float], peers: list[float | None], factor: float) -> list[float]:
    """The history a new norm is judged against: the layer's own norms, each raised to a
    `factor`-th of the level the other layers carry for its weights (`_peer_levels`) where it
    lies below that. A gradient near zero next to the rest of the model (attention weights while
    the scores are uniform, a layer behind a zero-initialised gate) is no level to explode from:
    a jump counts only once it takes the layer above what the other layers carry."""
    return [v if p is None else max(v, p / factor) for v, p in zip(history, peers)]
