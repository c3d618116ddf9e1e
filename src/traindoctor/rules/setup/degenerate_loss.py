"""TD507 degenerate-loss."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._loss_inputs import Site, fmt, loss_sites

CLAMP_SHARE = 0.05  # share of BCE elements pinned at the loss's own log clamp
MIN_CLAMP_STEPS = 2


@rule(
    code="TD507",
    name="degenerate-loss",
    severity=Severity.ERROR,
    summary="A loss that cannot produce gradient by construction (one class, a softmax over "
    "one unit, values pinned at the loss's own clamp).",
    requires=("loss_inputs.stats", "grads.norm"),
    events=("loss_input",),
    priority=9,
)
def degenerate_loss(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A loss whose value does not depend on the model by construction, so its gradient is
    exactly zero: cross-entropy over a single class (`CrossEntropyLoss` on a `(B, 1)` output),
    a softmax or log-softmax taken over a dimension of size 1 before the loss (`softmax(dim=1)`
    on a `(B, 1)` tensor is all ones), or `binary_cross_entropy` inputs pinned at exactly 0 or
    1 against the other target, which the loss's own clamp of log at -100 turns into a
    constant 100 per element with no gradient through the sigmoid in front.

    ## Why it matters
    The loss is 0 (or a constant) from the first step; backward runs, the optimizer steps,
    and nothing learns. With a clamped BCE the saturated, wrong elements can never be fixed.

    ## How it is measured
    The loss-inputs probe records, per call site on the first steps and the sampled ones,
    the input shape and the number of classes, the op that produced the input with the size
    of its softmax dimension, and on the device the share of `binary_cross_entropy` elements
    at exactly 0 or 1 with the other target. The loss value of the call and the largest
    per-parameter gradient norm of the step (grads probe) are reported as measured.

    ## Example
    ```python
    head = nn.Linear(16, 1)                        # one output for a binary task
    loss = F.cross_entropy(head(x), y.unsqueeze(1).float() * 0)   # log_softmax over 1 logit
    p = torch.softmax(head(x), dim=1)              # size-1 dim: all ones
    ```

    ## Fix
    ```python
    loss = F.binary_cross_entropy_with_logits(head(x).squeeze(1), y.float())  # one logit
    # or: head = nn.Linear(16, 2); loss = F.cross_entropy(head(x), y)         # two classes
    ```

    ## Known false positives
    A loss term that is meant to be constant (a placeholder with weight 0) is reported too.
    The BCE clamp check counts exact 0/1 probabilities only (float32 sigmoid rounds to 1.0
    above ~17 and to 0.0 only below ~-103).
    """
    grads = _grad_max(tl)
    for site in loss_sites(tl).values():
        f = _one_class(tl, site, grads) or _softmax_one(tl, site, grads) or _clamped(tl, site)
        if f is not None:
            yield f


def _grad_max(tl: TimelineView) -> dict[int, float]:
    out = {}
    for step, norms in tl.series("grads.norm"):
        vals = [v for v in (norms or {}).values() if isinstance(v, int | float)]
        if vals:
            out[step] = max(vals)
    return out


def _grad_text(site: Site, grads: dict[int, float]) -> tuple[str, dict[str, Any]]:
    steps = [s for s in sorted(site.stats) if s in grads]
    if not steps:
        return "", {}
    zero = all(grads[s] == 0 for s in steps)
    return (
        f"; the largest parameter gradient norm measured on those steps is "
        f"{fmt(max(grads[s] for s in steps))}" + (" (exactly zero)" if zero else ""),
        {"max_grad_norm": max(grads[s] for s in steps), "grad_steps": len(steps)},
    )


def _loss_values(site: Site) -> list[float]:
    return sorted(set(site.losses()))[:4]


def _one_class(tl: TimelineView, site: Site, grads: dict[int, float]) -> Finding | None:
    if site.fn != "cross_entropy" or site.classes != 1:
        return None
    step = site.facts.get("step")
    text, ev = _grad_text(site, grads)
    return tl.finding(
        title=f"`cross_entropy` at {site.source} is taken over a single class "
        f"(input {site.facts.get('input_shape')}): its value is 0 and its gradient 0",
        step=step,
        evidence={
            "loss_fn": site.fn,
            "input_shape": site.facts.get("input_shape"),
            "classes": 1,
            "loss_values": _loss_values(site),
            **ev,
        },
        where=Where(op=site.fn, source=site.source),
        cause="log-softmax over one logit is log(1) = 0 whatever the logit, so the loss is "
        f"exactly 0 for every sample and passes no gradient{text}",
        fix="for a binary task use one logit with F.binary_cross_entropy_with_logits "
        "(squeeze the class dim), or give the head 2 outputs for cross_entropy",
        confidence=0.95,
    )


def _softmax_one(tl: TimelineView, site: Site, grads: dict[int, float]) -> Finding | None:
    e = next((e for e in site.events if e.get("softmax_dim_size") == 1), None)
    if e is None:
        return None
    op = (e.get("producer") or ["?"])[0]
    value = "1" if op == "SoftmaxBackward0" else "0"
    text, ev = _grad_text(site, grads)
    return tl.finding(
        title=f"`{site.fn}` at {site.source} gets a {op.replace('Backward0', '').lower()} "
        f"taken over a dimension of size 1: every input value is {value}",
        step=e.get("step"),
        evidence={
            "loss_fn": site.fn,
            "producer": e.get("producer"),
            "input_shape": e.get("input_shape"),
            "softmax_dim_size": 1,
            "loss_values": _loss_values(site),
            **ev,
        },
        where=Where(op=site.fn, source=site.source),
        cause=f"a softmax over one element is exactly 1 (log-softmax exactly 0) whatever the "
        f"model outputs, so the loss input is a constant and its gradient is 0{text}",
        fix="take the softmax over the class dimension (check `dim=`), or use one logit with "
        "a sigmoid loss (binary_cross_entropy_with_logits)",
        confidence=0.9,
    )


def _clamped(tl: TimelineView, site: Site) -> Finding | None:
    if site.fn != "binary_cross_entropy":
        return None
    hits = [(s, v) for s, v in site.values("clamped") if v >= CLAMP_SHARE]
    if len(hits) < MIN_CLAMP_STEPS:
        return None
    losses = dict(site.values("loss"))
    step, share = hits[0]
    loss = losses.get(step)
    part = f"; 100 x {share:.1%} = {100 * share:.3g} of the loss {fmt(loss)}" if loss else ""
    return tl.finding(
        title=f"`binary_cross_entropy` at {site.source}: {share:.1%} of its inputs sit at "
        f"exactly 0/1 against the other target, pinned at the loss's clamp",
        step=step,
        evidence={
            "loss_fn": site.fn,
            "clamped_share": {str(s): round(v, 6) for s, v in hits[:8]},
            "steps_over_threshold": len(hits),
            "loss": loss,
            "producer": site.facts.get("producer"),
        },
        where=Where(op=site.fn, source=site.source),
        cause="binary_cross_entropy clamps log(p) at -100: an element with p exactly 1.0 "
        "(or 0.0) and the other target costs a constant 100, and the sigmoid in front "
        f"(derivative p(1-p) = 0) passes it no gradient{part}; those samples never move",
        fix="feed logits to F.binary_cross_entropy_with_logits (log-sigmoid in one stable op) "
        "instead of sigmoid outputs to binary_cross_entropy; normalize the inputs so that the "
        "logits do not saturate",
        confidence=0.85,
    )
