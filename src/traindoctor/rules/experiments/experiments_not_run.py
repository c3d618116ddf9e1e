"""TD705 experiments-not-run."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD705",
    name="experiments-not-run",
    severity=Severity.INFO,
    summary="Why the experiments on a copy could not run: custom loss code, several models, "
    "memory short, an experiment's own error.",
    events=("experiment",),
    priority=95,
)
def experiments_not_run(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    `traindoctor check` replays one captured batch on a copy of the model (TD701-TD704). It
    says so instead of guessing when it cannot: the loss is custom code (no standard
    `torch.nn.functional` loss was called on the model's output), several models are watched,
    the model is compiled or wrapped in DDP, free memory is short for a copy, or an experiment
    raised (its error is recorded here, never raised into the run).

    ## Why it matters
    A missing experiment is not a passed one.

    ## How it is measured
    From the capture probe (probes/capture.py) and the recipe's own errors.

    ## Example
    ```python
    loss = ((model(x) - y) ** 2).mean()     # written by hand: TD705, the loss is custom code
    ```

    ## Fix
    Use the `torch.nn.functional` loss to get the experiments:
    ```python
    loss = F.mse_loss(model(x), y)
    ```

    ## Known false positives
    None: it reports what was not measured.
    """
    for e in tl.events("experiment"):
        if e.get("name") == "skipped" or e.get("verdict") == "error":
            what = (
                "Experiments on a copy not run"
                if e.get("name") == "skipped"
                else (f"Experiment {e.get('name')} failed on the copy")
            )
            yield tl.finding(
                title=f"{what}: {e.get('reason')}",
                step=e.get("step"),
                evidence={k: v for k, v in e.items() if k in ("name", "reason", "facts")},
                fix="call a torch.nn.functional loss on the model's output to get the "
                "experiments; watch one model; free memory for a copy",
            )
