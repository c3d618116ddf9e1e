"""TD201 nonfinite-loss."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._nonfinite import fmt_value, nonfinite_events, nonfinite_steps


@rule(
    code="TD201",
    name="nonfinite-loss",
    severity=Severity.ERROR,
    summary="The loss became NaN/Inf while the model's outputs were finite: the loss code made it.",
    requires=("numerics.checked", "numerics.nonfinite", "loss.train", "loss.backward"),
    events=("nonfinite",),
    priority=26,
)
def nonfinite_loss(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    A loss that is NaN or ±Inf at a step where the parameters, the input batch and every
    module output of the model were still finite: the non-finite value was created in the loss
    computation itself (a `log` of a probability that reached 0, a division by a count that
    was 0, `sqrt` of a negative number, ...).

    ## Why it matters
    Backward turns a NaN/Inf loss into NaN/Inf gradients, and one `optimizer.step()` with them
    makes every weight NaN: the run is lost from that step on, usually long before anyone
    looks. Clamping the loss afterwards hides the symptom and zeroes its gradient.

    ## How it is measured
    Every backward, `isfinite(loss)` is computed on the device; before `optimizer.step()` the
    flags are read with one host read per step. When one is false, the last training batch
    (kept by reference) is replayed on a deep copy of the model, in a forked RNG, with forward
    hooks on every module: when every output is finite the cause is the loss code. On CPU,
    where the read is free, the loss's autograd graph is inspected before backward frees it:
    the ops that can create non-finite values (`log`, `div`, `sqrt`, `pow`, `exp`, ...) are
    recomputed from the graph's saved inputs, which names the op that did it.

    ## Example
    ```python
    probs = model(x).softmax(-1)              # underflows to exactly 0 for confident logits
    loss = -torch.log(probs[range(n), y]).mean()   # log(0) = -inf
    ```

    ## Fix
    ```python
    loss = F.cross_entropy(logits, y)              # log-softmax in one stable op
    # or, for a hand-written likelihood: -torch.log_softmax(logits, -1).gather(1, y[:, None])
    ```

    ## Known false positives
    A loss that is meant to be infinite for some samples (a hard constraint) and is masked
    later is reported too: the check looks at the value passed to backward().
    """
    events = nonfinite_events(tl, ("loss",))
    if not events:
        return
    bad_steps = nonfinite_steps(tl, tl.series("numerics.nonfinite"))
    for e in events:
        culprits = e.get("culprits") or []
        measured = [c for c in culprits if c.get("measured")]
        op = e.get("op")
        if measured:
            how = (
                f"`{measured[0]['op']}` ({measured[0]['node']}) in the loss turned a finite input "
                f"into {measured[0].get('fraction', 0):.1%} non-finite values (recomputed from "
                "the loss's autograd graph)"
            )
        elif culprits:
            ops = ", ".join(sorted({c["op"] for c in culprits}))
            how = f"the loss's graph holds ops that can produce NaN/Inf from finite inputs: {ops}"
        else:
            how = "an op of the loss computation produced it"
        output = (
            "the replayed model outputs were all finite, so "
            if e.get("model_output_finite")
            else ""
        )
        rise = _rise_before(tl, bad_steps[0] if bad_steps else e["step"])
        climbed = ""
        fix = (
            "compute the loss in log space with a stable op (F.cross_entropy, "
            "log_softmax, F.binary_cross_entropy_with_logits) instead of log(probability); "
            "guard divisions by counts that can be 0 (x / n.clamp(min=1)); do not clamp the "
            "loss value, that zeroes its gradient"
        )
        if rise is not None:
            # The op only finished what the steps before started: a loss that climbed by
            # orders of magnitude is a divergence (TD210/TD206's), the overflow its end.
            climbed = (
                f"the loss had climbed from {rise[1]:.4g} at step {rise[0]} to {rise[3]:.4g} "
                f"at step {rise[2]} before it, so the values it is computed from grew step "
                "after step until the op gave up: the divergence is the cause; "
            )
            fix = (
                "find why the loss climbs before it turns non-finite: a learning rate too "
                "large for the loss's scale, a gradient that does not match the loss (a "
                "custom backward, an update of the wrong sign); clamping the loss only hides it"
            )
        yield tl.finding(
            title=f"loss is {fmt_value(e.get('loss', 'non-finite'))} at step {e['step']}"
            + (f" (from `{op}` in the loss)" if op else ""),
            step=e["step"],
            evidence={
                "loss": e.get("loss"),
                "culprits": culprits,
                "model_output_finite": e.get("model_output_finite"),
                "grads_finite": e.get("grads_finite"),
                "nonfinite_steps": len(bad_steps),
                "first_nonfinite_step": bad_steps[0] if bad_steps else e["step"],
                "loss_rise_before": rise,
            },
            where=Where(op=op, source=e.get("source")),
            cause=f"{climbed}{output}{how}; backward turns it into NaN/Inf gradients and the "
            "next optimizer.step() into NaN weights",
            fix=fix,
            confidence=0.9 if measured else 0.7,
        )


RISE = 10.0  # a loss this many times its start before turning non-finite had diverged


def _rise_before(tl: TimelineView, first_bad: int) -> tuple[int, float, int, float] | None:
    """(start step, start loss, last step, last loss) when the finite training loss rose at
    least RISE-fold between the run's first steps and the steps just before `first_bad`
    (positive losses only, 5 steps at least): the non-finite value ended a divergence."""
    losses: list[tuple[int, float]] = []
    for name in ("loss.train", "loss.backward"):
        for step, vals in tl.series(name):
            if step >= first_bad:
                continue
            finite = [float(v) for v in vals or () if isinstance(v, int | float)]
            finite = [v for v in finite if math.isfinite(v)]
            if finite:
                losses.append((step, sum(finite) / len(finite)))
        if losses:
            break
    if len(losses) < 5:
        return None
    start_step, start = min(losses[:3], key=lambda sv: sv[1])
    last_step, last = losses[-1]
    if start <= 0 or last < RISE * start or max(v for _, v in losses[-3:]) < RISE * start:
        return None
    return start_step, start, last_step, last
