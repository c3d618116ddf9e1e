"""TD104 params-not-updating."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    common_module,
    describe_groups,
    ended,
    group_params,
    step_source,
)

# Priority of the zero-gradient case: after the rules that find why the gradient is zero
# (TD107 loss-constant has 40; the TD3xx gradient-path rules come after the TD1xx ones).
CONSEQUENCE_PRIORITY = 90


@rule(
    code="TD104",
    name="params-not-updating",
    severity=Severity.ERROR,
    summary="optimizer.step() runs but the params it holds stay bit-identical.",
    requires=("params.update", "params.norm", "grads.norm", "optim.lr"),
    events=("hand_step", "optimizer_step"),
    facts=("bias_before_norm", "optimizers", "outcome", "params"),
    priority=30,
)
def params_not_updating(tl: TimelineView, *, min_steps: int = 3) -> Iterator[Finding]:
    """
    ## What it detects
    Parameters that have a gradient and are held by an optimizer whose `step()` runs, yet are
    bit-identical before and after every observed step.

    ## Why it matters
    The loop looks right (forward, backward, step) and the loss is logged, but the model does not
    change. Learning rate 0 (a typo, or a scheduler that returns 0: `lambda e: e // 1000`), a
    gradient that is exactly zero, or an update below float precision are the usual causes.

    ## How it is measured
    On the first steps and on sampled steps, traindoctor copies the params just before
    `optimizer.step()` and measures ||θ_after − θ_before|| right after, on the device (fused
    `torch._foreach_*` ops, one read-back). It also records each group's learning rate and the
    gradient norms at that moment, and picks the cause from them.

    ## Example
    ```python
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step // 1000)  # 0 for 1000 steps
    ```

    ## Fix
    ```python
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 1000))
    ```

    A bias that goes straight into a BatchNorm or InstanceNorm in training mode (a forward
    hook sees the norm's input is the biased layer's own output) is cancelled by the norm's
    mean subtraction: its gradient is 0 up to rounding. It is reported as info, with the fix
    `bias=False`. Params whose gradient is exactly 0 while other params change are reached by
    backward but got no signal from the batches seen (a head whose targets were absent): info.
    Params whose gradient is not 0 but tiny (a norm below 1e-10 at every observed step: an
    attention that reads only zero padding vectors, `src_key_padding_mask` True on the real
    tokens) get that measured cause, not the lr: no learning rate moves a weight by 1e-20.

    ## Known false positives
    When every gradient is exactly 0 the optimizer is not at fault; the finding is still
    reported (the params do not move) but ranked after the findings that explain the zero
    gradient (a clamped loss, TD107; a blocking op, TD301).

    A warmup that starts at lr 0 is not reported: the params must stay unchanged at every
    observed step (at least `min_steps`), and warmups move them from the second step on. A
    param group built with lr=0 (and kept there) while other groups train is a freeze written
    as a param group: info.

    In a loop that updates the weights by hand (no torch optimizer), the update is measured
    the same way around the hand-written write (copied after the step's first backward,
    compared when the write is seen), for the params it wrote.
    """
    updates = tl.series("params.update")
    needed = 1 if ended(tl) else min_steps
    if len(updates) < needed:
        return
    grads = dict(tl.series("grads.norm"))
    frozen: set[str] | None = None
    for step, upd in updates:
        with_grad = set(grads.get(step, {}))
        still = {n for n, v in upd.items() if v == 0.0 and n in with_grad}
        frozen = still if frozen is None else frozen & still
    if not frozen:
        return
    cancelled = tl.fact("bias_before_norm") or {}
    by_norm = sorted(n for n in frozen if n in cancelled)
    steps_seen = [s for s, _ in updates]
    if any(
        vals and all(v == 0 for v in vals) for vals in _group_lrs(tl, by_norm, steps_seen).values()
    ):
        by_norm = []  # lr 0 leaves them unchanged whatever the norm does: the lr is the cause
    if by_norm:
        yield _bias_before_norm(tl, by_norm, cancelled, grads, [s for s, _ in updates])
    frozen -= set(by_norm)
    if not frozen:
        return
    # A param held by several optimizers (InfoGAN's info optimizer over chain(G, D)) has the
    # update of the last of their steps: unchanged there says only that this optimizer's loss
    # did not reach it (torch skips a None gradient), not that no optimizer updates it.
    shared = _held_by_several(tl)
    only_shared = frozen <= shared
    if not only_shared:
        frozen -= shared
    names = sorted(frozen)
    all_names = list((tl.fact("params") or {}).keys())
    groups = group_params(names, all_names)
    steps = [s for s, _ in updates]
    grad_zero = all(grads.get(s, {}).get(n, 0.0) == 0.0 for s in steps for n in names)
    seen = [grads.get(s, {}).get(n) for s in steps for n in names]
    seen = [v for v in seen if isinstance(v, int | float)]
    grad_max = max(seen) if seen else None
    lrs = _group_lrs(tl, names, steps)
    zero_lr = {g for g, vals in lrs.items() if vals and all(v == 0 for v in vals)}
    cause, fix = _cause(tl, zero_lr, lrs, grad_zero, grad_max)
    what = "hand-written updates" if tl.events("hand_step") else "optimizer steps"
    finding = tl.finding(
        title=f"{len(names)} params did not change in {len(steps)} {what} "
        f"({describe_groups(groups)})",
        step=steps[0],
        evidence={
            "unchanged_params": len(names),
            "observed_steps": steps,
            "lr": {g: vals[-1] for g, vals in lrs.items()},
            "grad_norm_all_zero": grad_zero,
        },
        where=Where(module=common_module(names), params=tuple(names), source=step_source(tl)),
        cause=cause,
        fix=fix,
    )
    moved = {n for _, upd in updates for n, v in upd.items() if v > 0.0}
    if zero_lr and moved and _frozen_by_lr(tl, zero_lr, names):
        # `{"params": backbone.parameters(), "lr": 0.0}` beside groups that train: a freeze
        # written as a param group, not a schedule that lost the lr.
        finding = replace(
            finding,
            severity=Severity.INFO,
            cause=f"{', '.join(sorted(zero_lr))} was built with lr=0 and kept it at every "
            f"observed step while {len(moved)} params of other groups changed: a group frozen "
            "by its learning rate",
            fix="nothing, if that group is meant to stay fixed (requires_grad_(False) also saves "
            "its gradients); otherwise give the group a positive lr",
        )
    zeros = _zero_weights(tl, names) if grad_zero and not zero_lr else []
    if zeros:
        # Weights exactly 0 whose gradient is exactly 0: a zero initialisation is the root
        # cause (zero-init of one last layer trains: its input is not zero; these do not).
        finding = replace(
            finding,
            cause=(
                f"{len(zeros)} weight tensors ({', '.join(f'`{n}`' for n in zeros[:4])}"
                f"{', ...' if len(zeros) > 4 else ''}) were exactly 0 at every observed step "
                "(norm 0 from the first) and their gradient was exactly 0: initialized to "
                "zeros, consecutive layers give each other zero inputs and zero gradients "
                "(ReLU(0) has gradient 0), a fixed point no optimizer step can leave"
            ),
            fix=(
                "initialize these weights randomly (the layer's own reset_parameters(), or "
                "nn.init.kaiming_uniform_ / xavier_uniform_); zero-init at most the last "
                "layer of a branch, whose input is not zero"
            ),
        )
    elif grad_zero and not zero_lr:
        # The step did its job on a zero gradient: the root cause is upstream, in the loss or
        # the gradient path (TD107 loss-constant, TD3xx), so rank this finding after those.
        finding = replace(finding, priority=CONSEQUENCE_PRIORITY)
        if moved:
            # Reached by backward (the gradient is a tensor of zeros, not None) while the
            # rest of the model trains: the batches seen gave them no signal (a head whose
            # targets were absent, a masked term). Not an error by itself; a blocking op or
            # a constant loss, if that is the reason, is reported by its own rule.
            finding = replace(
                finding,
                severity=Severity.INFO,
                cause=(
                    f"their gradient was exactly 0 at every observed step while {len(moved)} "
                    "other params changed: backward reaches them (the gradient is a tensor of "
                    "zeros, not None) but the loss is flat with respect to them on the batches "
                    "seen (a head whose targets were absent from these batches, a masked loss "
                    "term, a saturated op, or a loss that does not depend on them: a last "
                    "bias that cancels in a difference of two outputs of the same network, "
                    "a critic's D(real) - D(fake) or a distance between two embeddings)"
                ),
                fix=(
                    "nothing, if later batches give them a gradient (a class or target that "
                    "was absent) or the loss cannot depend on them (then bias=False there); "
                    "otherwise find where the gradient stops (traindoctor explain TD301)"
                ),
            )
    if only_shared:
        finding = replace(
            finding,
            severity=Severity.INFO,
            cause="each of them is held by more than one optimizer, and the update measured at a "
            "step is the last of those optimizers' steps: that optimizer left them unchanged "
            "(its loss may not reach them, so their gradient was None there), which does not "
            "say whether the other optimizers updated them",
            fix="nothing, if another optimizer trains them; otherwise check that some loss "
            "reaches them before the step of an optimizer that holds them",
        )
    yield finding


def _zero_weights(tl: TimelineView, names: list[str]) -> list[str]:
    """The weight tensors (2 dims or more) among `names` whose norm was exactly 0 at every
    step that measured it (params.norm, at least 2 steps)."""
    shapes = tl.fact("params") or {}
    norms = [n for _, n in tl.series("params.norm") if n]
    if len(norms) < 2:
        return []
    out = []
    for name in names:
        shape = (shapes.get(name) or {}).get("shape")
        if not shape or len(shape) < 2:
            continue
        seen = [n[name] for n in norms if name in n]
        if len(seen) >= 2 and all(v == 0 for v in seen):
            out.append(name)
    return out


def _held_by_several(tl: TimelineView) -> set[str]:
    """Param names that more than one optimizer holds."""
    seen: dict[str, int] = {}
    for opt in tl.fact("optimizers") or []:
        for n in {n for g in opt["groups"] for n in g["params"] if n}:
            seen[n] = seen.get(n, 0) + 1
    return {n for n, k in seen.items() if k > 1}


def _bias_before_norm(tl, names, cancelled, grads, steps) -> Finding:
    """Biases that a batch/instance norm cancels: their gradient is zero up to rounding."""
    bias_grad = max((grads.get(s, {}).get(n, 0.0) for s in steps for n in names), default=0.0)
    weight_grads = [
        grads.get(s, {}).get(n.rsplit(".", 1)[0] + ".weight") for s in steps for n in names
    ]
    weight_grads = [g for g in weight_grads if g]
    weight_grad = min(weight_grads) if weight_grads else None
    layers = sorted({n.rsplit(".", 1)[0] for n in names})
    norms = sorted({cancelled[n] for n in names})
    relative = (
        f", {bias_grad / weight_grad:.0e} × the smallest weight-gradient norm of these layers"
        if weight_grad and bias_grad
        else ""
    )
    return tl.finding(
        title=f"{len(names)} bias{'es' if len(names) > 1 else ''} right before a "
        f"normalization did not change in "
        f"{len(steps)} optimizer steps ({', '.join(f'`{n}`' for n in names[:4])}"
        f"{', …' if len(names) > 4 else ''}): the normalization cancels them",
        step=steps[0],
        evidence={
            "unchanged_params": len(names),
            "observed_steps": steps,
            "normalized_by": {n: cancelled[n] for n in names},
            "max_bias_grad_norm": bias_grad,
            "min_weight_grad_norm": weight_grad,
        },
        where=Where(module=common_module(names), params=tuple(names)),
        cause=(
            f"the output of {', '.join(f'`{m}`' for m in layers[:4])} goes straight into "
            f"{', '.join(f'`{m}`' for m in norms[:4])}, which subtracts the per-channel mean "
            "over the batch: a per-channel bias added before it cancels, so its gradient is 0 "
            f"up to rounding (at most {bias_grad:.1e}{relative}) and the step leaves it "
            "unchanged. Harmless for training; the bias is dead weight"
        ),
        fix=(
            "build these layers without a bias (nn.Conv2d(..., bias=False), "
            "nn.Linear(..., bias=False)): the normalization's own bias (beta) plays its role"
        ),
        severity=Severity.INFO,
    )


def _group_lrs(tl: TimelineView, names: list[str], steps: list[int]) -> dict[str, list[float]]:
    wanted = set(names)
    groups = [
        g["id"]
        for opt in tl.fact("optimizers") or []
        for g in opt["groups"]
        if wanted & set(g["params"])
    ]
    lr_series = dict(tl.series("optim.lr"))
    return {g: [lr_series.get(s, {}).get(g) for s in steps if s in lr_series] for g in groups}


def _frozen_by_lr(tl: TimelineView, zero_lr: set[str], names: list[str]) -> bool:
    """Every unchanged param sits in a group built with lr 0 (its lr when watched, and its
    scheduler's base lr when there is one)."""
    held: set[str] = set()
    for opt in tl.fact("optimizers") or []:
        for g in opt["groups"]:
            if g["id"] not in zero_lr:
                continue
            if g.get("lr") != 0 or g.get("initial_lr") not in (None, 0):
                return False
            held |= {n for n in g["params"] if n}
    return set(names) <= held


def _group_initial(tl: TimelineView, gid: str) -> float | None:
    for opt in tl.fact("optimizers") or []:
        for g in opt["groups"]:
            if g["id"] == gid:
                return g.get("initial_lr")
    return None


TINY_GRAD = 1e-10  # a gradient norm below this moves no float32 weight at any usual lr


def _cause(tl, zero_lr, lrs, grad_zero, grad_max=None):
    if zero_lr:
        gid = sorted(zero_lr)[0]
        initial = _group_initial(tl, gid)
        if initial:
            return (
                f"the learning rate of {', '.join(sorted(zero_lr))} is 0 at every observed step "
                f"although it was built with lr={initial:g}: the LR scheduler sets it to 0 (e.g. "
                "integer division in a LambdaLR lambda, or a decay that reached 0)",
                "fix the schedule so that lr > 0 from the first steps (use float arithmetic in the "
                "lambda: min(1.0, (step + 1) / warmup))",
            )
        return (
            f"the learning rate of {', '.join(sorted(zero_lr))} is 0",
            "pass a positive learning rate to the optimizer (e.g. lr=1e-3)",
        )
    if grad_zero:
        return (
            "their gradients are exactly 0 at every observed step: the loss does not depend on them "
            "through any differentiable path (a saturated clamp, a constant output, a zero mask)",
            "find where the gradient stops (traindoctor explain TD107 / TD301) and keep the loss "
            "differentiable with respect to these params",
        )
    if grad_max is not None and 0.0 < grad_max < TINY_GRAD:
        # Not the lr: a gradient of 1e-20 moves nothing at any lr (Adam's eps swamps it).
        return (
            f"their gradients are not 0 but tiny, a norm of at most {grad_max:.1e} at every "
            "observed step: almost nothing reaches them from the loss (their inputs carry no "
            "signal: an attention that only reads padding or zero vectors, a product with a "
            "near-zero factor), so no learning rate would move them",
            "find what their inputs are (traindoctor explain TD301 / TD207): e.g. a "
            "`key_padding_mask` must be True on the padding, not on the real tokens",
        )
    lr_text = ", ".join(f"{g} lr={v[-1]:g}" for g, v in lrs.items() if v and v[-1] is not None)
    if not lr_text and tl.events("hand_step"):
        return (
            "the hand-written update writes them in place with non-zero gradients, yet leaves "
            "them bit-identical: the step size in the update expression is 0 (lr = 0, an integer "
            "division that rounds it to 0) or below the float resolution of the weights",
            "check the learning rate the update multiplies the gradient by (e.g. "
            "`p.data.add_(p.grad, alpha=-lr)` with lr > 0)",
        )
    return (
        f"the step runs with {lr_text or 'a positive lr'} and non-zero gradients but leaves them "
        "bit-identical; the likely reason is an update below the float resolution of the "
        "weights (lr × update direction smaller than ~1e-7 × |θ| in float32, ~4e-3 in bf16)",
        "raise the learning rate, or train these params in float32 (not bf16/fp16 master weights)",
    )
