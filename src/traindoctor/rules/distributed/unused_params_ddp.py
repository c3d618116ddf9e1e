"""TD603 unused-params-ddp."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import describe_groups, group_params

MAX_NAMED = 8


@rule(
    code="TD603",
    name="unused-params-ddp",
    severity=Severity.ERROR,
    summary="DDP(find_unused_parameters=True) hides parameters that never get a gradient on "
    "any rank.",
    requires=("job.grads_none", "job.ddp", "job.ranks"),
    facts=("params",),
    priority=2,
)
def unused_params_ddp(tl: TimelineView, *, min_steps: int = 3) -> Iterator[Finding]:
    """
    ## What it detects
    A model wrapped in `DistributedDataParallel(..., find_unused_parameters=True)` holds
    trainable parameters that received no gradient on any rank at any observed step: a layer
    built in `__init__` and never called in `forward`, a head whose output never reaches the
    loss. Without the flag DDP stops at the second iteration with "Expected to have finished
    reduction in the prior iteration ... your module has parameters that were not used in
    producing loss", and the flag is the usual way that error is made to go away. Real
    reports: ImprintLab/MedSegDiff#27 (https://github.com/ImprintLab/MedSegDiff/issues/27: a
    layer defined in `__init__` but not used in forward), open-mmlab/mmgeneration#147
    (https://github.com/open-mmlab/mmgeneration/issues/147: "find_unused_parameters must be
    True ... or I just made some bugs").

    ## Why it matters
    Those parameters never train: the module the code means to use (an auxiliary head, a
    gate, a projection) is dead weight, and the model is not the one designed. And the flag
    costs every step a traversal of the autograd graph to find what was not used.

    ## How it is measured
    Each rank records, on sampled steps, the trainable parameters whose `.grad` is None when
    `step()` runs, and the DDP wrapper's `find_unused_parameters`; the merge lines the ranks
    up. A parameter None at every observed step (at least `min_steps`) on every rank, under a
    wrapper with the flag set, is reported, grouped by module. A parameter used on some steps
    or some ranks only (a conditional branch, a mixture of experts: what the flag is for)
    gets a gradient then and is not reported.

    ## Example
    ```python
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.aux_head = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(32, 4)
        def forward(self, x):
            return self.head(self.body(x))          # aux_head is never called
    model = DDP(Net(), find_unused_parameters=True)  # silences DDP's error about it
    ```

    ## Fix
    ```python
    def forward(self, x):
        h = self.body(x)
        return self.head(h) + 0.3 * self.aux_head(h)  # use it (or delete it)
    model = DDP(Net())                                # and drop find_unused_parameters
    ```

    ## Known false positives
    A parameter deliberately kept for a later phase of training (used only after the run
    observed) is reported; freeze it (`requires_grad_(False)`) until then.
    """
    ddp = tl.at("job.ddp", 0) or {}
    flagged = [
        int(r)
        for r, wrappers in ddp.items()
        if isinstance(wrappers, dict)
        and any(isinstance(w, dict) and w.get("find_unused_parameters") for w in wrappers.values())
    ]
    ranks = sorted(int(r) for r in (tl.at("job.ranks", 0) or {}))
    if not flagged or len(ranks) < 2:
        return
    never: dict[int, set[str]] = {}
    observed: dict[int, int] = {}
    first_step: int | None = None
    for step, by_rank in tl.series("job.grads_none"):
        for r, names in (by_rank or {}).items():
            if not isinstance(names, list):
                continue
            rank = int(r)
            observed[rank] = observed.get(rank, 0) + 1
            current = {str(n) for n in names}
            never[rank] = current if rank not in never else never[rank] & current
            first_step = step if first_step is None else min(first_step, step)
    if set(observed) != set(ranks) or min(observed.values()) < min_steps:
        return
    unused = set.intersection(*never.values())
    if not unused:
        return
    params = tl.fact("params") or {}
    names = sorted(unused)
    groups = group_params(names, list(params) or names)
    module = groups[0][0] if len(groups) == 1 else None
    yield tl.finding(
        title=(
            f"{len(names)} trainable param(s) never got a gradient on any rank under "
            f"DDP(find_unused_parameters=True): {describe_groups(groups)}"
        ),
        step=first_step,
        evidence={
            "ranks": ranks,
            "params": names[:MAX_NAMED],
            "count": len(names),
            "modules": [label for label, _ in groups][:MAX_NAMED],
            "steps_observed": {str(r): n for r, n in sorted(observed.items())},
            "find_unused_parameters_on": flagged,
        },
        where=Where(module=module, params=tuple(names[:MAX_NAMED])),
        cause=(
            "these parameters are not on the path from the model's output to the loss on any "
            "rank at any step; find_unused_parameters=True turned DDP's error about them into "
            "silence (and a search of the autograd graph every step)"
        ),
        fix=(
            "use the module in forward so it reaches the loss, or delete it; then drop "
            "find_unused_parameters=True (keep it only for branches that are used on some steps)"
        ),
    )
