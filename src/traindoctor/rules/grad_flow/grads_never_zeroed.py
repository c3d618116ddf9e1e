"""TD106 grads-never-zeroed."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._incremental import Reader, fresh
from .._registry import rule
from .._util import (
    common_module,
    describe_groups,
    group_params,
    optimizer_names,
    trainable_names,
)


class CarriedScan:
    """TD106's state between passes (rules/_incremental.py): per param how many observed steps
    judged it (its optimizer stepped) and whether any found its .grad zeroed, from the
    grads.carried records written since the last pass. A step is folded in for good once a
    later carried record exists (the run is past it: its grads.stepped is complete); the newest
    for one pass, then taken out again."""

    def __init__(self) -> None:
        self.carried, self.stepped = Reader("grads.carried"), Reader("grads.stepped")
        self.readers = (self.carried, self.stepped)
        self.open: dict[int, list] = {}  # step -> [carried norms, stepped names]
        self.judged: dict[str, int] = {}
        self.zeroed: set[str] = set()  # judged once with nothing carried
        self.observed = 0  # observed steps (from step 2)

    def carrying(self, tl: TimelineView, min_observations: int) -> set[str]:
        """The params judged on `min_observations` steps or more that carried a gradient on
        each (the newest step included), when `min_observations` steps were observed."""
        if not fresh(self, tl):
            self.__init__()
        for i, reader in enumerate(self.readers):
            settled, pending = reader.read(tl)
            for s, rec in settled + pending:
                if s >= 2:
                    self.open.setdefault(s, [None, None])[i] = rec
        done = self.carried.done
        for s in sorted(self.open):
            if done is None or s > done:
                break
            self._fold(*self.open.pop(s), None)
        undo: list = []
        observed = self.observed
        for s in sorted(self.open):
            observed += self._fold(*self.open[s], undo)
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

    def _fold(self, norms: dict | None, names: list | None, undo: list | None) -> int:
        if norms is None:
            return 0  # grads.stepped alone: no observation
        scope = None if names is None else set(names)
        for n, v in norms.items():
            if scope is not None and n not in scope:
                continue
            self.judged[n] = self.judged.get(n, 0) + 1
            newly = not v > 0 and n not in self.zeroed
            if newly:
                self.zeroed.add(n)
            if undo is not None:
                undo.append((n, newly))
        if undo is None:
            self.observed += 1
        return 1


@rule(
    code="TD106",
    name="grads-never-zeroed",
    severity=Severity.ERROR,
    summary="Gradients from earlier optimizer steps are still in .grad when the next backward adds to them.",
    requires=("grads.carried", "grads.stepped", "grads.norm"),
    events=("backward_call", "hand_step", "optimizer_step"),
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
    On sampled steps, a hook on each parameter runs before the step's first gradient is added
    (`Tensor.register_hook`) and measures the norm of what is already in `.grad`. Zeroed grads
    (None or all zeros) are fine; non-zero ones were carried over. Gradient accumulation within
    one optimizer step is not affected: only the first backward after a step is checked.
    Params that no watched optimizer holds are left out: `optimizer.zero_grad()` never clears
    them by design, and TD103 reports that they are in no optimizer.

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
    obs = [(s, c) for s, c in tl.series("grads.carried") if s >= 2]
    if len(obs) < min_observations:
        return
    # A param is judged at a step only if its optimizer stepped then (a GAN's generator is not
    # zeroed on the discriminator's steps, and need not be).
    # As sets: a membership test per param per step (a list made it quadratic in the params).
    stepped = {s: set(names) for s, names in tl.series("grads.stepped")}
    judged: dict[str, int] = {}
    kept: dict[str, int] = {}
    for step, norms in obs:
        scope = stepped.get(step)
        for n, v in norms.items():
            if scope is not None and n not in scope:
                continue
            judged[n] = judged.get(n, 0) + 1
            kept[n] = kept.get(n, 0) + (v > 0)
    carried = _held(tl, {n for n, k in judged.items() if k >= min_observations and kept[n] == k})
    if not carried:
        return
    names = sorted(carried)
    all_names = list((tl.fact("params") or {}).keys())
    trainable = trainable_names(tl)
    groups = group_params(names, all_names)
    growth = _growth(tl, names)
    steps = [s for s, _ in obs]
    hand = bool(tl.events("hand_step")) and not tl.events("optimizer_step")
    share = "all" if len(names) == len(trainable) else f"{len(names)} of {len(trainable)}"
    yield tl.finding(
        title=f"{share} trainable params still held the previous step's gradient when backward "
        f"started ({describe_groups(groups)})",
        step=steps[0],
        evidence={"params_carrying_grad": len(names), "observed_steps": steps, **growth},
        where=Where(module=common_module(names), params=tuple(names), source=_source(tl)),
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


def _held(tl: TimelineView, carried: set[str]) -> set[str]:
    held = optimizer_names(tl)
    if held:
        # zero_grad() only clears what the optimizer holds; the rest is TD103's finding.
        return carried & held
    return carried


def _source(tl: TimelineView) -> str | None:
    """optimizer.step()'s line; in a loop that updates the weights by hand, the line that
    writes them (a `p.data` write), else the backward() line that adds to the stale grads."""
    for kind in ("optimizer_step", "hand_step", "backward_call"):
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
