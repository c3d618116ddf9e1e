"""TD302 detached-branch."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule

REL_TOL = 1e-3


@rule(
    code="TD302",
    name="detached-branch",
    severity=Severity.ERROR,
    summary="Part of the loss is computed from detached tensors: that part trains nothing.",
    requires=("gradpath.parts_detached", "loss.parts", "loss.train"),
    priority=11,
)
def detached_branch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A loss part added to the loss without its autograd graph: computed from `.detach()`,
    `.data`, `.item()`, a numpy round-trip or under `torch.no_grad()`. Names the part (the
    `doc.log(parts=...)` name when there is one) and the line that adds it.

    ## Why it matters
    The part shows up in the loss value, so the logs look right, but its gradient is zero:
    whatever it was meant to train (a box head, a polygon loss) never learns, and the part
    stays flat for the whole run.

    ## How it is measured
    On the sampled backward passes every node of the loss graph is hooked: a scalar `add`/
    `sub` whose other operand is a tensor that does not require grad is a part added without
    graph; its line comes from the anomaly-mode metadata of that step. With
    `doc.log(parts=...)`, parts that carry no graph while others do (and whose values sum to
    the loss) are named, which also catches `.item()` parts that leave no trace in the graph.

    ## Example
    ```python
    poly = giou_loss(pred.detach(), target)   # detached: trains nothing
    loss = box_loss + poly
    ```

    ## Fix
    ```python
    poly = giou_loss(pred, target)
    loss = box_loss + poly
    ```

    ## Known false positives
    Accumulating into a constant tensor (`total = torch.zeros(()); total = total + part`) looks
    like a detached part in the graph; start from the first part (or a Python 0) instead.
    """
    parts_steps = tl.series("gradpath.parts_detached")
    named: list[str] = []
    for _, info in parts_steps:
        det = (info or {}).get("detached") or []
        if det and (info or {}).get("with_graph"):
            named = [n for n in det if n not in named][:4]
            break
    reported = False
    for e in _walks(tl):
        for n in e.get("nodes") or ():
            if not n.get("detached_input") or not n.get("grad_in"):
                continue
            src = n.get("source")
            at = f" at {src}" if src else ""
            part = f"part {', '.join(repr(p) for p in named)}" if named else "a loss term"
            yield tl.finding(
                title=f"{part[0].upper()}{part[1:]} is added to the loss without its graph{at}",
                step=e["step"],
                evidence={"op": n.get("op"), "parts_without_graph": named},
                where=Where(op=n.get("op"), source=src),
                cause=f"the `{n.get('op')}`{at} adds a tensor that does not require grad "
                f"({part}): it was computed from .detach()/.data/.item()/numpy or under "
                "no_grad, so its gradient is 0 and it trains nothing",
                fix="compute that part from the tensors that carry the graph (drop the "
                ".detach()/.item()/.data/numpy round-trip, or the no_grad around it)",
                confidence=0.8 if named else 0.6,
            )
            reported = True
            break
        if reported:
            return
    if named and _parts_sum_to_loss(tl):
        yield tl.finding(
            title=f"Loss part {', '.join(repr(p) for p in named)} carries no graph",
            step=parts_steps[0][0] if parts_steps else None,
            evidence={"parts_without_graph": named},
            cause=f"doc.log(parts=...) got {', '.join(repr(p) for p in named)} without a "
            "graph while the other parts have one, and the parts sum to the loss: that part "
            "is in the loss value but passes no gradient",
            fix="compute that part from the tensors that carry the graph (no .item()/.detach())",
            confidence=0.6,
        )


def _parts_sum_to_loss(tl: TimelineView) -> bool:
    losses = dict(tl.series("loss.train"))
    for step, parts in tl.series("loss.parts"):
        loss = losses.get(step)
        if isinstance(loss, list):
            loss = loss[-1] if loss else None
        if loss is None or not isinstance(parts, dict) or not parts:
            continue
        total = sum(v for v in parts.values() if isinstance(v, int | float))
        if abs(total - loss) <= REL_TOL * max(abs(loss), 1e-8):
            return True
    return False


def _walks(tl: TimelineView) -> list[dict]:
    """The sampled walks; those that know their source lines, when there are any (a walk of
    step 1 in zero-code mode has none: its forward ran before traindoctor attached)."""
    walks = tl.events("gradient_path")
    return [e for e in walks if e.get("lines_known")] or walks
