"""TD208 loss-component-dominates."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_source
from . import _ultralytics as ultralytics


@rule(
    code="TD208",
    name="loss-component-dominates",
    severity=Severity.WARNING,
    summary="One part of the loss carries most of its value and most of its gradient.",
    requires=("loss.parts", "loss.parts_grad"),
    events=("backward_call", "log_call"),
    facts=("ultralytics",),
    priority=50,
)
def loss_component_dominates(
    tl: TimelineView,
    *,
    min_share: float = 0.7,
    over_next: float = 3.0,
) -> Iterator[Finding]:
    """
    ## What it detects
    With `doc.log(parts={...})`, a part of the loss whose share of the summed part values and
    whose share of the summed part gradient norms (on the parameters the parts share) are both
    at least `min_share` and `over_next` times the next part's.

    ## Why it matters
    The other parts barely train the shared layers: their gradient is a small correction on top
    of the dominant one. In the seed report a DFL term 10-20x larger than the box and class
    terms drove the detection head's gradients; the "fixes" (clamping the loss at 15, clipping
    at 0.5) hid that instead of rebalancing the weights.

    ## How it is measured
    On the structural steps and then on sampled steps, when `doc.log(parts=...)` runs before
    `backward()`, each part's gradient on the shared parameters is computed with
    `torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)` (it does not touch
    `.grad`, so training is unchanged), and its norm with one fused `torch._foreach_norm`.
    Shares are medians over the measured steps: value share = |part| / Σ|parts|, gradient share =
    ||∇part|| / Σ||∇parts||.

    ## Example
    ```python
    loss = box + cls + dfl  # dfl ≈ 8.5, box ≈ 0.8, cls ≈ 0.7
    doc.log(loss=loss, parts={"box": box, "cls": cls, "dfl": dfl})
    ```

    ## Fix
    ```python
    loss = 7.5 * box + 0.5 * cls + 0.15 * dfl  # weights chosen from the measured shares
    ```

    Under Ultralytics the parts are `box_loss`, `cls_loss` and `dfl_loss`, each multiplied by its
    gain (`box=`, `cls=`, `dfl=`) before the sum: the finding names the run's gains and the fix is
    to lower the dominant part's gain in `model.train(...)` (defaults box=7.5, cls=0.5, dfl=1.5).

    ## Known false positives
    A weighting chosen on purpose (one task matters more) is reported too: the shares are
    measured facts, the weights are a design choice. A part with a large constant offset
    (an entropy floor) has a large value share but not a large gradient share, and is not
    reported.
    """
    values = dict(tl.series("loss.parts"))
    grads = tl.series("loss.parts_grad")
    vshares: dict[str, list[float]] = {}
    gshares: dict[str, list[float]] = {}
    gnorms: dict[str, list[float]] = {}
    vals: dict[str, list[float]] = {}
    steps = []
    for step, g in grads:
        v = values.get(step) or {}
        names = [n for n in g if n in v and _finite(g[n]) and _finite(v[n])]
        gsum = sum(g[n] for n in names)
        vsum = sum(abs(v[n]) for n in names)
        if len(names) < 2 or gsum <= 0 or vsum <= 0:
            continue
        steps.append(step)
        for n in names:
            gshares.setdefault(n, []).append(g[n] / gsum)
            vshares.setdefault(n, []).append(abs(v[n]) / vsum)
            gnorms.setdefault(n, []).append(g[n])
            vals.setdefault(n, []).append(v[n])
    if not steps:
        return
    vmed = {n: statistics.median(s) for n, s in vshares.items()}
    gmed = {n: statistics.median(s) for n, s in gshares.items()}
    top = max(gmed, key=lambda n: gmed[n])
    if not (
        _dominates(top, vmed, min_share, over_next) and _dominates(top, gmed, min_share, over_next)
    ):
        return
    others = sorted(n for n in gmed if n != top)
    table = {
        n: {
            "grad_share": round(gmed[n], 4),
            "value_share": round(vmed[n], 4),
            "value": statistics.median(vals[n]),
            "grad_norm": statistics.median(gnorms[n]),
        }
        for n in sorted(gmed, key=lambda n: -gmed[n])
    }
    ratio_v = statistics.median(vals[top]) / max(
        max(abs(statistics.median(vals[n])) for n in others), 1e-30
    )
    found = tl.finding(
        title=f"{top}: {gmed[top]:.0%} of the gradient norm, {vmed[top]:.0%} of the loss value "
        f"(vs {', '.join(f'{n} {gmed[n]:.0%}/{vmed[n]:.0%}' for n in others)})",
        step=steps[0],
        evidence={"parts": table, "measured_steps": steps, "dominant": top},
        where=Where(source=loss_source(tl)),
        cause=f"the `{top}` part is {ratio_v:.1f}x the largest other part and its gradient "
        f"dominates the shared parameters: {', '.join(others)} barely train them",
        fix=f"weight the parts so their gradient shares are comparable (e.g. scale `{top}` by "
        f"~{1 / max(ratio_v, 1e-9):.2g}), or check why `{top}` is so large (a -log of a "
        "probability near 0); clamping or clipping hides it and does not rebalance",
    )
    yield ultralytics.loss_component_dominates(tl, found)  # Ultralytics' words where it trained


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _dominates(name: str, shares: dict[str, float], min_share: float, over_next: float) -> bool:
    rest = [s for n, s in shares.items() if n != name]
    return shares[name] >= min_share and shares[name] >= over_next * max(rest, default=0.0)
