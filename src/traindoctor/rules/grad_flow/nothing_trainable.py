"""TD110 nothing-trainable."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    foreign_tensors,
    onset,
    optimizer_source,
)


@rule(
    code="TD110",
    name="nothing-trainable",
    severity=Severity.ERROR,
    summary="No parameter of the watched model(s) has requires_grad=True.",
    requires=(),
    events=("trainable",),
    facts=("models", "optimizers", "params"),
    priority=5,
)
def nothing_trainable(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Models whose parameters all have `requires_grad=False`, with no trainable tensor in the
    optimizer either.

    ## Why it matters
    Nothing can learn. Depending on the loss, `backward()` raises ("does not require grad") or
    the run goes on with a constant model; a freezing loop that was meant for the backbone and
    also caught the head is the usual cause.

    ## How it is measured
    At attach and on the first steps, traindoctor lists every parameter of the watched models
    with its `requires_grad` flag, and every tensor the optimizers hold.

    ## Example
    ```python
    for p in model.parameters():           # meant: model.backbone.parameters()
        p.requires_grad = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ```

    ## Fix
    ```python
    model.backbone.requires_grad_(False)   # freeze only what should stay fixed
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ```

    ## Known false positives
    Pure inference or evaluation runs do not need traindoctor's training rules: do not watch them.
    """
    params = tl.fact("params") or {}
    if any(info.get("requires_grad") for info in params.values()):
        return
    if any(u.get("requires_grad") for u in foreign_tensors(tl)):
        return
    numel = sum(info.get("numel", 0) for info in params.values())
    models = ", ".join(f"`{m}`" for m in (tl.fact("models") or {}).values()) or "the model"
    if not params:
        title, cause = f"{models} has no parameters at all", "the watched model has no parameters"
        fix = "pass the model that holds the trainable layers to traindoctor and to the optimizer"
    else:
        title = f"all {len(params)} params ({numel:,} values) of {models} have requires_grad=False"
        cause = (
            "every parameter was frozen (requires_grad=False): a freezing loop or "
            "requires_grad_(False) that was meant for part of the model covered all of it"
        )
        fix = (
            "freeze only the part meant to stay fixed (e.g. model.backbone.requires_grad_(False)) "
            "and keep the trained layers at requires_grad=True"
        )
    opt = (tl.fact("optimizers") or [{}])[0]
    yield tl.finding(
        title=title,
        step=onset(tl.events("trainable"), lambda e: e["count"] == 0) or 1,
        evidence={"params": len(params), "values": numel, "trainable": 0},
        where=Where(module="<model>", source=optimizer_source(opt)),
        cause=cause,
        fix=fix,
    )
