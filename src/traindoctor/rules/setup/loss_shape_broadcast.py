"""TD508 loss-shape-broadcast."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import loss_sites

# Elementwise losses that broadcast prediction against target instead of refusing.
ELEMENTWISE = (
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "poisson_nll_loss",
    "soft_margin_loss",
)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@rule(
    code="TD508",
    name="loss-shape-broadcast",
    severity=Severity.ERROR,
    summary="Prediction and target shapes broadcast into a larger tensor inside the loss.",
    requires=("loss_inputs.stats",),
    priority=17,
)
def loss_shape_broadcast(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    An elementwise loss (`mse_loss`, `l1_loss`, `smooth_l1_loss`, `huber_loss`, `kl_div`,
    `poisson_nll_loss`) whose prediction and target have different shapes that broadcast into
    a larger tensor: a `(B, 1)` prediction against a `(B,)` target becomes `(B, B)`, every
    prediction compared with every target. Reports both shapes, the broadcast shape and the line.

    ## Why it matters
    The loss is well defined and finite, so training runs; but each output is pulled towards
    the mean of the whole batch's targets, and the model learns to predict a constant. torch
    only prints a UserWarning, once, that is easy to miss in a log.

    ## How it is measured
    The loss-inputs probe reads the shapes of each loss call's input and target (host
    metadata, no device work) on the first steps, on sampled steps, and whenever a call
    site's shapes change, and computes the broadcast shape with `torch.broadcast_shapes`.
    The rule fires when it holds more elements than both the input and the target.

    ## Example
    ```python
    pred = model(x)                 # (B, 1)
    loss = F.mse_loss(pred, y)      # y: (B,) -> broadcast to (B, B)
    ```

    ## Fix
    ```python
    loss = F.mse_loss(pred.squeeze(1), y)    # or y.unsqueeze(1): the same shapes
    ```

    ## Known false positives
    A deliberate all-pairs loss written through broadcasting (rare with these functions; a
    pairwise loss is usually written with explicit `unsqueeze` before subtraction, which is
    not a loss call).
    """
    for site in loss_sites(tl).values():
        if site.fn not in ELEMENTWISE:
            continue
        for e in site.events:
            shape = e.get("broadcast_shape")
            a, b = e.get("input_shape") or [], e.get("target_shape") or []
            if not shape or _numel(shape) <= max(_numel(a), _numel(b)):
                continue
            grow = _numel(shape) / max(_numel(a), _numel(b), 1)
            yield tl.finding(
                title=f"`{site.fn}` at {site.source} broadcasts prediction {tuple(a)} against "
                f"target {tuple(b)} into {tuple(shape)} ({grow:.0f}x the elements)",
                step=e.get("step"),
                evidence={
                    "loss_fn": site.fn,
                    "input_shape": a,
                    "target_shape": b,
                    "broadcast_shape": shape,
                    "element_ratio": grow,
                    "code": e.get("code"),
                },
                where=Where(op=site.fn, source=site.source),
                cause=f"the shapes differ and broadcast: every prediction is compared with "
                f"every target of the batch ({tuple(shape)}), so the minimum is the batch "
                "mean of the targets and the model learns a constant",
                fix="give prediction and target the same shape: `pred.squeeze(-1)` or "
                "`target.unsqueeze(-1)` (or `.view_as(pred)`) before the loss",
                confidence=0.95,
            )
            break
