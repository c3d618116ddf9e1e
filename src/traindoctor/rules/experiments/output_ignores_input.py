"""TD703 output-ignores-input."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._experiments import cost, experiment


@rule(
    code="TD703",
    name="output-ignores-input",
    severity=Severity.INFO,
    summary="Input-independent baseline on a copy: the model trained on its real inputs against "
    "the same training with the inputs zeroed.",
    events=("experiment",),
    priority=12,
)
def output_ignores_input(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Karpathy's input-independent baseline: the captured batch is trained on for K steps on a
    copy with its real inputs and again with its inputs set to zero. A model that uses its
    input does much better with the real one; one that does as well with zeros ignores it.
    Also measured: whether the initial model's output changes at all when the input is zeroed
    (exactly unchanged: the forward does not read the input).

    ## Why it matters
    A forward that drops its input (a per-sample normalization over a dim of size 1, an input
    overwritten by a buffer, a residual path that bypasses it, `x * 0` from a mask) trains
    normally and converges to the best constant prediction: the loss falls a little and
    plateaus, and every other check looks fine.

    ## How it is measured
    At close, on deep copies from the initial weights, inside `torch.random.fork_rng`: the
    output on the real and on the zeroed inputs (the positional tensors, or the first keyword
    tensor), then the loss after the same K steps (50) of the user's optimizer on each, at the
    lr where one batch was overfit. Reported for every checked run.

    ## Example
    ```python
    x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)  # x is (B, 1)
    # TD703: the output does not change when the input is zeroed
    ```

    ## Fix
    Normalize over the batch/dataset (dim 0), not over a feature dim of size 1; make sure the
    forward reads `x`.
    ```python
    x = (x - mean) / std          # mean, std: per feature, computed over the training set
    ```

    ## Known false positives
    A task whose labels do not depend on the input (a degenerate dataset) does equally well
    without it: that is a finding about the data.
    """
    e = experiment(tl, "input_independent")
    if e is None or e.get("verdict") in ("error", None, "not_measured"):
        return
    facts = e.get("facts") or {}
    verdict = e.get("verdict")
    real, zero = facts.get("real_loss"), facts.get("zeroed_loss")
    if verdict == "ignores_input":
        title = "The model's output does not change when its input is zeroed: it ignores the input"
        cause = (
            f"at init, zeroing the input changed the output by {facts.get('output_change'):.3g} "
            f"(scale {facts.get('output_scale'):.3g})"
        )
    elif verdict == "no_better_than_zeros":
        title = (
            f"The model does no better on its real inputs ({real:.4g}) than on zeros "
            f"({zero:.4g}) after the same training on one batch"
        )
        cause = "the prediction does not use the input (input-independent baseline)"
    elif verdict == "inconclusive":
        title = (
            f"Input-independent baseline inconclusive: real inputs {real:.4g}, zeros {zero:.4g}, "
            "but one batch cannot be fit at all (TD702)"
        )
        cause = "the loss cannot be driven down with the real inputs either: see TD702"
    else:
        pair = (
            f": {real:.4g} with the real inputs, {zero:.4g} with zeros" if real is not None else ""
        )
        title = f"The model uses its input{pair}"
        cause = "the input-independent baseline does worse than the real inputs"
    yield tl.finding(
        title=title,
        step=e.get("step"),
        evidence={"verdict": verdict, "curves": e.get("curves") or {}, **facts, "cost": cost(e)},
        where=Where(source=e.get("source")),
        cause=cause,
        fix="nothing to fix: the prediction depends on the input"
        if verdict == "ok"
        else "fix what TD702 reports first, then run the check again"
        if verdict == "inconclusive"
        else "check that forward() reads its input (normalization dims, masks, overwritten x)",
    )
