"""TD203 nonfinite-activation."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._nonfinite import nonfinite_events, nonfinite_steps, where_text


@rule(
    code="TD203",
    name="nonfinite-activation",
    severity=Severity.ERROR,
    summary="A module's output (or the input batch) is NaN/Inf: names the first one in forward order.",
    requires=("numerics.checked", "numerics.nonfinite"),
    events=("nonfinite",),
    priority=23,
)
def nonfinite_activation(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    The first module, in forward order, whose output contains NaN/Inf while the weights were
    finite, with the op inside it that turned finite inputs into non-finite outputs and the
    source line; or an input batch that already holds NaN/Inf.

    ## Why it matters
    Every module after it, the loss and every gradient inherit the NaN: the place where it
    first appears is the only one worth fixing, and the stack of NaN warnings that follow
    (one per parameter) hides it.

    ## How it is measured
    The loss and the gradients are checked for finiteness before every `optimizer.step()`
    (fused, one host read). When a NaN/Inf is found, the last training batch (kept by
    reference, never copied) is replayed on a deep copy of the model inside a forked RNG
    (same dropout masks, the user's RNG untouched) with forward hooks on every module and a
    TorchFunctionMode that checks every op's output: the first op with finite inputs and a
    non-finite output is named with its source line.

    ## Example
    ```python
    def forward(self, x):
        p = self.head(x).softmax(-1)
        return torch.log(p)          # p underflows to 0 -> -inf
    ```

    ## Fix
    ```python
    def forward(self, x):
        return self.head(x).log_softmax(-1)
    ```

    ## Known false positives
    Modules that produce -inf on purpose (attention masks filled with -inf before a softmax)
    are reported if their output is checked before the softmax; the op and line say which.
    """
    bad_steps = nonfinite_steps(tl, tl.series("numerics.nonfinite"))
    for e in nonfinite_events(tl, ("activation", "input")):
        module = e.get("module")
        at = where_text(e)
        if e.get("first") == "input":
            title = f"the input batch holds NaN/Inf at step {e['step']}"
            cause = "the data itself is non-finite before the model runs"
            fix = (
                "check the data pipeline (missing values, division by a zero std in "
                "normalisation, corrupted files); filter or repair those samples"
            )
        else:
            title = f"`{module}` outputs NaN/Inf at step {e['step']}" + (f" ({at})" if at else "")
            cause = (
                f"`{module}` is the first module in forward order whose output is non-finite "
                f"while the weights and its inputs were finite"
                + (f"; the op that produced it is {at}" if at else "")
            )
            fix = (
                "make the op numerically safe in its domain: log_softmax instead of "
                "log(softmax), log(x.clamp_min(eps)) only where x can legitimately be 0, "
                "x / y.clamp_min(eps), normalise inputs, lower the learning rate if "
                "activations grow step after step"
            )
        yield tl.finding(
            title=title,
            step=e["step"],
            evidence={
                "fraction_nonfinite": e.get("fraction"),
                "loss": e.get("loss"),
                "nonfinite_modules": e.get("nonfinite_modules") or [],
                "nonfinite_steps": len(bad_steps),
            },
            where=Where(module=module, op=e.get("op"), source=e.get("source")),
            cause=cause,
            fix=fix,
            confidence=0.9,
        )
