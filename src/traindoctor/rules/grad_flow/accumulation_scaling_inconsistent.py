"""TD109 accumulation-scaling-inconsistent."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import fmt_factor


@rule(
    code="TD109",
    name="accumulation-scaling-inconsistent",
    severity=Severity.ERROR,
    summary="Micro-batch losses are multiplied by different constants before backward().",
    requires=("loss.factor", "backward.count"),
    priority=25,
)
def accumulation_scaling_inconsistent(
    tl: TimelineView, *, max_distinct: int = 3
) -> Iterator[Finding]:
    """
    ## What it detects
    The constant a loss is scaled by just before `backward()` (e.g. `loss / accum_steps`)
    differs between micro-batches, within one optimizer step or across steps.

    ## Why it matters
    Under gradient accumulation each micro-batch must contribute with the same weight. When the
    division runs only sometimes (inside a debug block, only for the first batch), some
    micro-batches count N times more than others: the effective learning rate jumps by that
    factor and the logged loss no longer means what it seems.

    ## How it is measured
    At each backward pass traindoctor walks the top of the loss's autograd graph and multiplies
    out the constant Python numbers of its final `mul`/`div` nodes (the factor), without
    running anything. A data-dependent divisor (`loss / mask.sum()`) is a tensor, not a
    constant, and is ignored; more than `max_distinct` distinct factors also means a
    data-dependent scale and is not reported.

    ## Example
    ```python
    loss = criterion(model(x), y)
    if epoch == 0 and i == 0:
        print("debug", loss.item())
        loss = loss / accum                # scaling inside the debug block: first batch only
    loss.backward()
    ```

    ## Fix
    ```python
    loss = criterion(model(x), y) / accum  # every micro-batch, unconditionally
    loss.backward()
    ```

    ## Known false positives
    Dividing the last, shorter accumulation cycle of an epoch by its own length gives a second
    factor; it is reported because it changes that step's weight.
    """
    # A non-finite constant is a numerics problem (TD2xx), not a scaling inconsistency.
    factors = [
        (s, i, f)
        for s, fs in tl.series("loss.factor")
        for i, f in enumerate(fs)
        if math.isfinite(f)
    ]
    if not factors:
        return
    counts = Counter(round(f, 12) for _, _, f in factors)
    if len(counts) < 2 or len(counts) > max_distinct:
        return
    common, _ = counts.most_common(1)[0]
    odd = [(s, i, f) for s, i, f in factors if round(f, 12) != common]
    odd_steps = sorted({s for s, _, _ in odd})
    ratio = max(counts) / min(counts) if min(counts) > 0 else float("inf")
    shares = {fmt_factor(f): n for f, n in counts.most_common()}
    only_first = odd_steps == [1] and all(i == 0 for _, i, _ in odd)
    if only_first:
        cause = (
            f"the loss is scaled by {fmt_factor(odd[0][2])} only on the first backward pass and by "
            f"{fmt_factor(common)} on all others: the scaling line runs once (it sits in a debug or "
            "first-batch block), so micro-batches are weighted "
            f"{ratio:g}x differently"
        )
    else:
        cause = (
            f"backward passes use {len(counts)} different loss scales ({', '.join(shares)}): the "
            f"scaling runs on some micro-batches only, so their weights differ by {ratio:g}x"
        )
    odd_src = next(
        (
            e["source"]
            for e in tl.events("backward_call")
            if round(e.get("factor", 1.0), 12) != common
        ),
        None,
    )
    src = odd_src or next((e["source"] for e in tl.events("backward_call")), None)
    yield tl.finding(
        title=f"loss scale differs between micro-batches: {', '.join(f'{k} on {v}' for k, v in shares.items())} "
        "backward passes",
        step=odd_steps[0] if odd_steps else factors[0][0],
        evidence={
            "factors": shares,
            "odd_steps": odd_steps[:10],
            "weight_ratio": ratio,
        },
        where=Where(source=src, op=_op(odd[0][2] if odd else common)),
        cause=cause,
        fix="scale every micro-batch loss the same way, unconditionally, right before backward(): "
        "loss = loss / accum_steps",
    )


def _op(f: float) -> str | None:
    if f == 1.0:
        return None  # the odd backward passes are the unscaled ones: no op to point at
    return "DivBackward0" if abs(f) < 1 else "MulBackward0"
