"""TD702 cannot-overfit-one-batch."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from ._experiments import cost, curve_text, experiment, run_lr


@rule(
    code="TD702",
    name="cannot-overfit-one-batch",
    severity=Severity.WARNING,
    summary="Overfit one batch on a copy: whether the model and loss can drive the loss on one "
    "fixed batch toward its floor with the user's optimizer, at lr x1, x10 and x0.1 (a warning "
    "when no lr does better than a constant prediction, else info).",
    requires=("optim.lr",),
    events=("experiment",),
    priority=15,
)
def cannot_overfit_one_batch(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Karpathy's "overfit one batch": any working model/loss pipeline can memorize one small
    batch. The captured batch is trained on, alone, for K steps (50) on a copy of the model
    from its initial weights, with a fresh optimizer of the user's class and hyper-parameters
    (param groups, betas, weight decay, momentum), at the user's learning rate; when that does
    not fit, at 10x and 0.1x. It is reported for every checked run: it fits (with the lr that
    did), partially, or not at all, with the curves.

    ## Why it matters
    When the loss cannot fall on one batch at any learning rate, the bug is in the model or the
    loss (a broadcast in the loss, an output that blocks the gradient, a detached head, a
    target the model cannot express), not in the data, the amount of training or the lr; a run
    whose loss is stuck can then stop tuning the lr. When it fits at 10x but not at the user's
    lr, the lr is the suspect. When it fits at once, a stuck full run points at the data.

    ## How it is measured
    At close, every hook detached: the batch (model inputs, the standard loss called on the
    model's output, its target and options, cloned when captured) is replayed on a deep copy,
    inside `torch.random.fork_rng`, so the user's weights, gradients, optimizer state, RNG and
    data loader are untouched. "Fits": the loss above its floor (0 for hard targets) falls to
    10% of its start; "cannot fit": above 50% at every lr (the floor unknown, soft targets or
    label smoothing: not even 10% lower), every curve flat at its end and none blown up. A
    loss that blows up at the script's lr (or at 0.1x) is reported as "lr too high" instead,
    and one that barely moves on the grid is tried at x100 and x1000. Cost: 50 to 250 steps
    of the copy on one batch.

    ## Example
    ```python
    pred = model(x)                       # (B, 1)
    loss = F.mse_loss(pred, y)            # y is (B,): broadcast to (B, B)
    # TD702: lr x1: 1.9 -> 1.0, x10: 1.9 -> 1.0, x0.1: 1.9 -> 1.7: cannot fit, at any lr
    ```

    ## Fix
    Look at the loss and the model's output path first (the other findings name the op or the
    shape); the learning rate is not the cause when no lr fits.
    ```python
    loss = F.mse_loss(model(x).squeeze(1), y)   # shapes (B,) and (B,)
    ```

    ## Severity
    A warning only when the failure is decisive: the loss has a known floor (hard targets: 0),
    no lr of the grid blew up, one loss was replayed (not one of several), the run's lr never
    rose above 3x the one the copy used (a warmup from ~0 makes the captured lr
    unrepresentative), and the
    input-independent baseline (TD703's runs) shows the real inputs doing no better than zeroed
    ones: the model/loss pipeline reduces to a constant prediction, which no working pipeline
    does on one batch it trains on. Every other verdict is info: it fits, partly fits, blows up
    at the lr (TD706 says whether the lr is the cause), or fails while the model still uses its
    input (a model too small for the batch, strong regularization: not necessarily a bug).

    ## Known false positives
    A model much too small for the batch, strong regularization (dropout, weight decay) or a
    loss with a large irreducible part can stay above 50% in 50 steps: reported as info, since
    such a model still does better with its inputs than without. A task whose labels do not
    depend on the input, within the batch, would read as a warning: that is a data bug.
    """
    e = experiment(tl, "overfit_one_batch")
    if e is None or e.get("verdict") in ("error", None):
        return
    facts = e.get("facts") or {}
    curves = e.get("curves") or {}
    verdict = e.get("verdict")
    if verdict == "not_measured":
        yield tl.finding(
            title=f"Overfit one batch not measured: {e.get('reason')}",
            step=e.get("step"),
            evidence={"reason": e.get("reason")},
            severity=Severity.INFO,
        )
        return
    severity = Severity.INFO  # decisive failures only are warnings (_decisive)
    lr = facts.get("lr") or []
    lr_text = ", ".join(f"{v:g}" for v in lr if v is not None) or "?"
    opt = facts.get("optimizer")
    if verdict == "ok":
        fit = facts.get("fit_at_lr_scale")
        label = f"lr x{fit:g}"
        at = f"lr {lr_text}" if fit == 1 else f"{label} of the lr ({lr_text})"
        title = (
            f"The model overfits one batch: {curve_text(curves.get(label, []), 25)} in "
            f"{facts.get('k')} steps of {opt} at {at}"
        )
        cause = (
            "the model and loss can fit one batch"
            + ("; only at 10x the lr: the lr may be too low" if fit == 10 else "")
            + ("; only at 0.1x the lr: the lr may be too high" if fit == 0.1 else "")
        )
    elif verdict == "lr_too_high":
        title = f"On one batch the loss blows up at the lr ({opt}, lr {lr_text}): " + "; ".join(
            f"{k}: {curve_text(v, 50)}" for k, v in curves.items()
        )
        cause = (
            "the loss on one fixed batch goes up at the script's lr (or even at 0.1x): the lr "
            "is too high for this model; whether the model can fit is not established"
        )
    elif verdict == "partial":
        title = (
            f"The model fits one batch only partly: best ratio to start "
            f"{min(facts.get('ratios', {}).values(), default=1):.2f} over lr x1/x10/x0.1 of {opt}"
        )
        cause = "the loss on one batch falls, but not toward its floor in K steps"
    else:
        title = (
            f"The model cannot overfit one batch at any lr ({opt}, lr {lr_text} x1/x10/x0.1): "
            + "; ".join(f"{k}: {curve_text(v, 50)}" for k, v in curves.items())
        )
        cause = (
            "the loss on one fixed batch does not fall at any lr: the bug is in the model or "
            "the loss, not in the data or the learning rate"
        )
        severity, constant = _decisive(tl, facts)
        if constant:
            cause += f"; {constant}"
    if facts.get("several_losses"):
        cause += (
            f"; the step called several losses: the replay fits its first, "
            f"`{e.get('loss_fn')}`, alone"
        )
    yield tl.finding(
        title=title,
        step=e.get("step"),
        evidence={
            "verdict": verdict,
            "curves": curves,
            **facts,
            "cost": cost(e),
            "loss_fn": e.get("loss_fn"),
        },
        where=Where(source=e.get("source")),
        cause=cause,
        fix="nothing to fix in the model/loss pipeline: it can fit one batch"
        if verdict == "ok"
        else "lower the learning rate (the curves show where the loss stays finite)"
        if verdict == "lr_too_high"
        else "inspect the model's output path and the loss call (shapes, detach, clamps) "
        "before tuning the lr",
        severity=severity,
    )


def _decisive(tl: TimelineView, facts: dict) -> tuple[Severity, str]:
    """A "cannot fit" is a warning when the pipeline is no better than a constant prediction
    (the input-independent baseline), the floor is known and one loss was replayed."""
    zeroed = experiment(tl, "input_independent") or {}
    z = zeroed.get("facts") or {}
    constant = zeroed.get("verdict") in ("inconclusive", "ignores_input", "no_better_than_zeros")
    if not constant or facts.get("floor") is None or facts.get("several_losses"):
        return Severity.INFO, ""
    used = max((v for v in facts.get("lr") or [] if isinstance(v, int | float)), default=None)
    if used is None or run_lr(tl) > 3 * used:
        # The lr rose after the batch was captured (a warmup from ~0): the copy trained at a
        # lr the run soon left behind; "cannot fit" there is not decisive.
        return Severity.INFO, ""
    if zeroed.get("verdict") == "ignores_input":
        return Severity.WARNING, "the output does not even change when the input is zeroed"
    real, zero = z.get("real_loss"), z.get("zeroed_loss")
    pair = (
        f" ({zero:.4g} on zeroed inputs, {real:.4g} on the real ones)"
        if isinstance(real, int | float) and isinstance(zero, int | float)
        else ""
    )
    return Severity.WARNING, (
        f"trained the same way on zeroed inputs it does as well{pair}: the pipeline does no "
        "better than a constant prediction"
    )
