"""TD106 grads-never-zeroed."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    common_module,
    describe_groups,
    group_params,
    optimizer_names,
    trainable_names,
)


@rule(
    code="TD106",
    name="grads-never-zeroed",
    severity=Severity.ERROR,
    summary="Gradients from earlier optimizer steps are still in .grad when the next backward adds to them.",
    requires=("grads.carried", "grads.stepped", "grads.norm"),
    events=("backward_call", "hand_step", "optimizer_step"),
    facts=("optimizers", "params"),
    priority=32,
)
def grads_never_zeroed(tl: TimelineView, *, min_observations: int = 2) -> Iterator[Finding]:
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
    carried = {n for n, k in judged.items() if k >= min_observations and kept[n] == k}
    held = optimizer_names(tl)
    if held:
        # zero_grad() only clears what the optimizer holds; the rest is TD103's finding.
        carried &= held
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
