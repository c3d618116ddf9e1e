"""TD202 nonfinite-grad."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._nonfinite import fmt_value, nonfinite_events, nonfinite_steps


@rule(
    code="TD202",
    name="nonfinite-grad",
    severity=Severity.ERROR,
    summary="Gradients (or the weights they updated) became NaN/Inf; names the first layer.",
    requires=("numerics.checked", "numerics.nonfinite"),
    events=("nonfinite",),
    priority=24,
)
def nonfinite_grad(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Gradients that are NaN/Inf while the loss and the forward pass were finite (backward made
    them: `sqrt` at 0, `norm` of a zero vector, a custom backward, overflow), or weights that
    are already NaN/Inf because an earlier update put them there (a learning rate far too
    large makes the weights overflow). Names the parameters and the layer. Weights found
    NaN/Inf after an earlier non-finite gradient (or loss, or activation) was reported are
    that value applied by `optimizer.step()`: they are folded into the first finding's
    evidence (`weights_nonfinite_after`), not reported as a second problem.

    ## Why it matters
    One `optimizer.step()` with a NaN gradient makes the weight NaN; every later forward pass
    is NaN. Optimizer states (Adam's moments) are poisoned too, so lowering the learning rate
    afterwards does not bring the run back.

    ## How it is measured
    Before each `optimizer.step()` (every step when it costs under 0.5% of step time, else on
    sampled steps), one fused `torch._foreach_norm` over the gradients about to be applied is
    reduced to a single finiteness flag, read once with the loss flags. When it is false, the
    autopsy checks each parameter and gradient exactly and replays the last batch on a deep
    copy of the model: finite loss and activations with non-finite gradients point at
    backward, and the layer named is the first one backward reached (the last in forward
    order); non-finite weights name the layer whose update overflowed.

    ## Example
    ```python
    opt = torch.optim.SGD(model.parameters(), lr=5.0)   # far too large: weights overflow
    ```

    ## Fix
    ```python
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # before opt.step()
    ```

    ## Known false positives
    Under a GradScaler, overflowing (scaled) gradients are expected now and then: the scaler
    skips those steps and this probe does not see them (TD205 covers a scaler that keeps
    skipping).
    """
    bad_steps = nonfinite_steps(tl, tl.series("numerics.nonfinite"))
    events = nonfinite_events(tl, ("grad", "param"))
    # Weights found NaN after an earlier non-finite value was reported are what the optimizer
    # step did with it: one finding per root cause, the follow-on folded into the first
    # gradient finding's evidence (or left to the loss/activation rule's finding).
    earlier = [e["step"] for e in tl.events("nonfinite") if e.get("first") != "param"]
    root = min(earlier) if earlier else None
    follow = [
        e for e in events if e.get("first") == "param" and root is not None and e["step"] > root
    ]
    events = [e for e in events if not any(e is f for f in follow)]
    first_grad = next((e for e in events if e.get("first") == "grad"), None)
    for e in events:
        params = list(e.get("params") or [])
        module = e.get("module")
        if e.get("first") == "param":
            title = (
                f"weights of `{module}` are NaN/Inf at step {e['step']} "
                f"({len(params)} param tensor(s) non-finite)"
            )
            cause = (
                f"the parameters of `{module}` (first in registration order: {params[0]}) were "
                "already non-finite when the step's loss was computed: an earlier "
                "optimizer.step() overflowed them (learning rate too large, or a NaN/Inf "
                "gradient applied on a step that was not checked)"
            )
        else:
            title = (
                f"gradient of `{module}` is NaN/Inf at step {e['step']} while the loss "
                f"({fmt_value(e.get('loss', '?'))}) is finite"
            )
            cause = (
                "the forward pass and the loss were finite; backward produced the NaN/Inf "
                f"and `{module}` is the first layer it reached"
            )
            after = _follow_on(e, follow if e is first_grad else []).get("weights_nonfinite_after")
            if after:
                cause += (
                    f"; optimizer.step() applied it: at step {after['step']} "
                    f"{after['count']} weight tensor(s) were NaN/Inf (the consequence, "
                    "not another problem)"
                )
        yield tl.finding(
            title=title,
            step=e["step"],
            evidence={
                "loss": e.get("loss"),
                "nonfinite_params": params,
                "nonfinite_grads": e.get("nonfinite_grads") or [],
                "nonfinite_modules": e.get("nonfinite_modules") or [],
                "nonfinite_steps": len(bad_steps),
                **_follow_on(e, follow if e is first_grad else []),
            },
            where=Where(
                module=module, params=tuple(params), op=e.get("op"), source=e.get("source")
            ),
            cause=cause,
            fix="lower the learning rate (or add warm-up), clip the gradient norm "
            "(torch.nn.utils.clip_grad_norm_ before optimizer.step()), and find the op whose "
            "backward is unbounded at this input (sqrt/norm at 0, division by a small value)",
            confidence=0.8,
        )


def _follow_on(e: dict[str, Any], follow: list[dict[str, Any]]) -> dict[str, Any]:
    """The first weights-NaN event after gradient event `e` (the run's first gradient
    finding: `follow` holds only the weights-NaN events after the first non-finite value),
    as evidence of that finding."""
    if e.get("first") != "grad":
        return {}
    later = [f for f in follow if f["step"] > e["step"]]
    if not later:
        return {}
    f = min(later, key=lambda f: f["step"])
    params = list(f.get("params") or [])
    return {
        "weights_nonfinite_after": {
            "step": f["step"],
            "module": f.get("module"),
            "count": len(params),
            "params": params,
        }
    }
