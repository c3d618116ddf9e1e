"""TD106 grads-never-zeroed."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import (
    common_module,
    describe_groups,
    group_params,
    optimizer_names,
    stepped_by_hand,
    trainable_names,
)


class CarriedScan:
    """TD106's state between passes (rules/_incremental.py): per param how many observed steps
    judged it (its optimizer stepped) and whether any found its .grad zeroed, from the
    grads.carried and grads.cycle_carried records written since the last pass (see
    `_judged`). A step is folded in for good once a later carried record exists (the run is
    past it: its grads.stepped is complete); the newest for one pass, then taken out again."""

    def __init__(self) -> None:
        self.carried, self.stepped = Reader("grads.carried"), Reader("grads.stepped")
        self.cycle, self.after = Reader("grads.cycle_carried"), Reader("grads.norm")
        self.readers = (self.carried, self.stepped, self.cycle, self.after)
        # step -> [carried norms, stepped names, cycle norms, norms at step()]
        self.open: dict[int, list] = {}
        self.judged: dict[str, int] = {}
        self.zeroed: set[str] = set()  # judged once with nothing carried
        self.observed = 0  # observed steps (from step 2)
        self.folded = 1  # steps up to this one are folded in for good

    def carrying(self, tl: TimelineView, min_observations: int) -> set[str]:
        """The params judged on `min_observations` steps or more that carried a gradient on
        each (the newest step included), when `min_observations` steps were observed."""
        if not fresh(self, tl):
            self.__init__()
        for i, reader in enumerate(self.readers):
            settled, pending = reader.read(tl)
            for s, rec in settled + pending:
                if s > self.folded:  # a reader hands its newest record out again
                    self.open.setdefault(s, [None, None, None, None])[i] = rec
        others, known = by_cycles(tl), inventory_keys(tl)
        # The run is past a step once either carried signal has a later record.
        done = max((d for d in (self.carried.done, self.cycle.done) if d is not None), default=None)
        for s in sorted(self.open):
            if done is None or s > done:
                break
            carried, stepped, cycle, after = self.open.pop(s)
            self._fold(_judged(carried, stepped, cycle, others, known, after), None)
            self.folded = s
        undo: list = []
        observed = self.observed
        for s in sorted(self.open):
            carried, stepped, cycle, after = self.open[s]
            observed += self._fold(_judged(carried, stepped, cycle, others, known, after), undo)
        try:
            if observed < min_observations:
                return set()
            return {
                n for n, k in self.judged.items() if k >= min_observations and n not in self.zeroed
            }
        finally:
            for n, zeroed in reversed(undo):
                self.judged[n] -= 1
                if zeroed:
                    self.zeroed.discard(n)

    def _fold(self, judged: dict[str, float] | None, undo: list | None) -> int:
        if judged is None:
            return 0  # grads.stepped alone: no observation
        for n, v in judged.items():
            self.judged[n] = self.judged.get(n, 0) + 1
            newly = not v > 0 and n not in self.zeroed
            if newly:
                self.zeroed.add(n)
            if undo is not None:
                undo.append((n, newly))
        if undo is None:
            self.observed += 1
        return 1


def by_cycles(tl: TimelineView) -> frozenset[str]:
    """The params judged on their optimizer's own cycles (grads.cycle_carried): those of every
    watched optimizer but the first, whose step() closes the step (its cycle is the step). A
    timeline written before the cycles were measured (no optimizer_first_step event) judges
    every param on the sampled steps."""
    optimizers = tl.fact("optimizers") or []
    if len(optimizers) < 2 or not tl.events("optimizer_first_step"):
        return frozenset()
    primary = {n for g in optimizers[0]["groups"] for n in g["params"]}
    return frozenset(
        n for o in optimizers[1:] for g in o["groups"] for n in g["params"] if n not in primary
    )


def inventory_keys(tl: TimelineView) -> dict[str, None]:
    """The params inventory's names (trainable or not: a frozen one is never in the probe's
    record), in its order, as a dict (ordered set lookups): a name of these missing from a
    grads.carried record is 0 there."""
    return dict.fromkeys(tl.fact("params") or {})


def _judged(
    norms: dict | None,
    names: list | None,
    cycle: dict | None,
    others: frozenset[str],
    known: dict[str, None],
    after: dict | None = None,
) -> dict[str, float] | None:
    """One step's observations, param -> the smallest ||grad|| found before a backward (0:
    zeroed), None when the step observed nothing.

    From the gradient probe's sampled steps (grads.carried), the params whose optimizer
    stepped then (`names`, grads.stepped: a GAN's generator is not zeroed on the
    discriminator's steps, and need not be), less `others`, judged on one whole cycle of
    their own optimizer instead (grads.cycle_carried: TD3's actor steps every 2nd step, after
    the critic's step; a head stepped every 2nd step accumulates over two steps of the body):
    a sampled step holds a part of two of their cycles, or none. A param that carried nothing
    and got no gradient by step() either (`after`, grads.norm: a dead unit, a branch not taken)
    is not judged there: nothing was added that a zero_grad() could have cleared."""
    if norms is None and cycle is None:
        return None
    out: dict[str, float] = {}
    if norms is not None:
        scope = None if names is None else set(names)
        # The probe leaves a known param's 0 out of the record (a None .grad).
        for n in chain(known, (k for k in norms if k not in known)):
            if (scope is None or n in scope) and n not in others:
                v = norms.get(n, 0.0)
                if not v > 0 and after is not None and not after.get(n, 0.0) > 0:
                    continue
                out[n] = v
    if cycle is not None:
        out.update(cycle)
    return out


@rule(
    code="TD106",
    name="grads-never-zeroed",
    severity=Severity.ERROR,
    summary="Gradients from earlier optimizer steps are still in .grad when the next backward adds to them.",
    requires=(
        "grads.carried",
        "grads.stepped",
        "grads.cycle_carried",
        "grads.norm",
        "optim.hand_step",
    ),
    events=("backward_call", "hand_step", "optimizer_step", "optimizer_first_step"),
    facts=("optimizers", "params"),
    priority=32,
    state=lambda: CarriedScan(),
)
def grads_never_zeroed(
    tl: TimelineView, state: CarriedScan, *, min_observations: int = 2
) -> Iterator[Finding]:
    """
    ## What it detects
    Parameters whose `.grad` still holds a non-zero gradient from the previous optimizer step
    when the first backward pass of the next step starts: nobody called `zero_grad()`.

    ## Why it matters
    PyTorch adds gradients into `.grad`. Without zeroing, each step applies the sum of all past
    gradients: the effective step size grows without bound, the direction is stale, and the
    run diverges or stalls.

    ## How it is measured
    On sampled steps, before each backward pass adds its gradients, the norm of what is
    already in each parameter's `.grad`; the smallest over the step's passes is kept. Zeroed
    grads (None or all zeros) before any pass are fine; non-zero ones at every pass were
    carried over. Gradient accumulation within one optimizer step is not affected: the first
    backward after a zero_grad() finds the grads zeroed. That is the cycle of the first
    watched optimizer, whose step() closes the step. Every other optimizer is judged on its
    own cycle (probes/cycles.py): after a sampled step, from right after its next step() to
    the one after, over all the backward passes between, whatever the number of steps they
    span (TD3's actor steps every 2nd step, after the critic's; a GAN's generator, every
    n-th); a param is judged only on the steps its optimizer stepped. Params that no watched
    optimizer holds are left out: `optimizer.zero_grad()` never clears them by design, and
    TD103 reports that they are in no optimizer.

    A loop that updates the weights by hand (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad`
    under `torch.no_grad()`, no torch optimizer) is judged the same way: each update of the
    params that got a gradient is a step (see `optim.hand_step`), and the params it wrote are
    the ones judged. The finding then points at the line that writes the weights when it goes
    through `p.data`, else at the `backward()` line.

    ## Example
    ```python
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()                   # no optimizer.zero_grad()
    ```

    ## Fix
    ```python
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    ```

    ## Known false positives
    Deliberate accumulation across optimizer steps is not a pattern PyTorch supports well; none
    known otherwise.
    """
    # The counts kept between passes decide; the whole series is read to word a finding.
    if not _held(tl, state.carrying(tl, min_observations)):
        return
    obs = _observations(tl)
    if len(obs) < min_observations:
        return
    judged: dict[str, int] = {}
    kept: dict[str, int] = {}
    for _, seen in obs:
        for n, v in seen.items():
            judged[n] = judged.get(n, 0) + 1
            kept[n] = kept.get(n, 0) + (v > 0)
    carried = _held(tl, {n for n, k in judged.items() if k >= min_observations and kept[n] == k})
    if not carried:
        return
    names = sorted(carried)
    steps = [s for s, seen in obs if not carried.isdisjoint(seen)]
    all_names = list((tl.fact("params") or {}).keys())
    trainable = trainable_names(tl)
    groups = group_params(names, all_names)
    growth = _growth(tl, names)
    # Trained by hand: no optimizer ever stepped, or none holds these params (raw tensors
    # trained by hand before the script's later models get an optimizer).
    hand = bool(tl.events("hand_step")) and (
        not tl.events("optimizer_step") or not carried & optimizer_names(tl)
    )
    share = "all" if len(names) == len(trainable) else f"{len(names)} of {len(trainable)}"
    yield tl.finding(
        title=f"{share} trainable params still held the previous step's gradient when backward "
        f"started ({describe_groups(groups)})",
        step=steps[0],
        evidence={"params_carrying_grad": len(names), "observed_steps": steps, **growth},
        where=Where(
            module=common_module(names), params=tuple(names), source=_source(tl, names, hand)
        ),
        cause=(
            "the gradients are never zeroed between the hand-written weight updates: each "
            "update applies the sum of every gradient since the start, so updates grow and "
            "point the wrong way"
            if hand
            else "no zero_grad() between optimizer steps: each step applies the sum of every "
            "gradient since the start, so updates grow and point the wrong way"
        ),
        fix=(
            "zero the gradients once per update: model.zero_grad() before the forward pass, or "
            "p.grad = None (or p.grad.zero_()) for each param right after updating it"
            if hand
            else "call optimizer.zero_grad(set_to_none=True) once per optimizer step "
            "(before the forward pass, or right after optimizer.step())"
        ),
    )


def _observations(tl: TimelineView) -> list[tuple[int, dict[str, float]]]:
    """Every observed step from step 2 and what it judged (see _judged), in step order."""
    carried = {s: c for s, c in tl.series("grads.carried") if s >= 2}
    cycle = {s: c for s, c in tl.series("grads.cycle_carried") if s >= 2}
    # As sets: a membership test per param per step (a list made it quadratic in the params).
    stepped = dict(tl.series("grads.stepped"))
    after = dict(tl.series("grads.norm"))
    others, known = by_cycles(tl), inventory_keys(tl)
    out = []
    for s in sorted(carried.keys() | cycle.keys()):
        seen = _judged(carried.get(s), stepped.get(s), cycle.get(s), others, known, after.get(s))
        if seen is not None:
            out.append((s, seen))
    return out


def _held(tl: TimelineView, carried: set[str]) -> set[str]:
    held = optimizer_names(tl)
    if held:
        # zero_grad() only clears what the optimizer holds; the rest is TD103's finding. Params
        # a hand-written update trained are judged too (raw tensors trained by hand before the
        # script builds an optimizer for its next model, as PyTorch's nn_tutorial does).
        return carried & (held | stepped_by_hand(tl))
    return carried


def _source(tl: TimelineView, names: list[str], hand: bool = False) -> str | None:
    """The step() line of the one optimizer that holds every param in `names` (from its first
    step: a second optimizer's line is seen nowhere else); else optimizer.step()'s line; in a
    loop that updates the weights by hand, the line that writes them (a `p.data` write), else
    the backward() line that adds to the stale grads."""
    optimizers = tl.fact("optimizers") or []
    for e in tl.events("optimizer_first_step"):
        i = e.get("optimizer")
        if e.get("source") and isinstance(i, int) and 0 <= i < len(optimizers):
            held = {n for g in optimizers[i]["groups"] for n in g["params"]}
            if held.issuperset(names):
                return e["source"]
    kinds = ("hand_step", "backward_call") if hand else ("optimizer_step", "hand_step")
    for kind in (*kinds, "backward_call"):
        for e in tl.events(kind):
            if e.get("source"):
                return e["source"]
    return None


def _growth(tl: TimelineView, names: list[str]) -> dict[str, object]:
    series = [(s, norms) for s, norms in tl.series("grads.norm") if norms]
    if len(series) < 2:
        return {}
    name = max(names, key=lambda n: series[-1][1].get(n, 0.0))
    first = next((norms[name] for _, norms in series if name in norms), None)
    last = series[-1][1].get(name)
    if first is None or last is None:
        return {}
    return {f"grad_norm[{name}]": [first, last], "grad_norm_steps": [series[0][0], series[-1][0]]}
