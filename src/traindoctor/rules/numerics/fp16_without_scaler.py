"""TD211 fp16-without-scaler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import loss_source, module_of


@rule(
    code="TD211",
    name="fp16-without-scaler",
    severity=Severity.ERROR,
    summary="float16 autocast without a GradScaler: gradients underflow to exactly zero.",
    requires=("schedule.autocast", "schedule.grad_nonzero", "amp.scale"),
    events=("backward_call", "log_call"),
    facts=("params",),
    priority=20,
)
def fp16_without_scaler(tl: TimelineView, *, min_zero_share: float = 0.25) -> Iterator[Finding]:
    """
    ## What it detects
    The model's forward runs under `torch.autocast(dtype=torch.float16)` and no enabled
    GradScaler scales the loss. Reported as an error when, for some layer, at least
    `min_zero_share` of its gradient elements are exactly 0 on average over the observed
    steps (the layers and their shares are in the evidence); as a warning when no layer
    shows it yet.

    ## Why it matters
    float16's smallest positive value is 6e-8 (2^-24). Gradients below it, common for small
    loss weights, means over many elements and late in training, become exactly 0 when the
    backward passes through float16 ops: those weights stop learning with no NaN and no error.
    bfloat16 has float32's exponent range and does not need a scaler; float16 does.

    ## How it is measured
    A forward pre-hook on the watched models reads the autocast state (`torch.is_autocast_
    enabled`, `torch.get_autocast_dtype`) on the first and sampled steps. Under float16
    without an enabled GradScaler, the number of non-zero gradient elements of each parameter
    is counted at `optimizer.step()` on sampled steps (one fused L0 `_foreach_norm`, read back
    with the other signals) and divided by its size; params are grouped by module.

    ## Example
    ```python
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(model(x), y) + 1e-4 * aux_loss
    loss.backward(); opt.step()
    ```

    ## Fix
    ```python
    scaler = torch.amp.GradScaler()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(model(x), y) + 1e-4 * aux_loss
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    # or autocast to torch.bfloat16 where the hardware supports it (no scaler needed)
    ```

    ## Known false positives
    Exactly-zero gradients that float16 did not cause (dead ReLU units, embedding rows not in
    the batch, masked outputs) count toward the share; the warning without measured zeros is
    reported for any float16 run without a scaler.
    """
    fp16_steps = [
        s for s, by_dev in tl.series("schedule.autocast") if "float16" in (by_dev or {}).values()
    ]
    if not fp16_steps or tl.series("amp.scale"):
        return
    params = tl.fact("params") or {}
    shares: dict[str, list[float]] = {}
    for _, counts in tl.series("schedule.grad_nonzero"):
        zeros: dict[str, list[float]] = {}
        for name, nonzero in (counts or {}).items():
            numel = (params.get(name) or {}).get("numel")
            if not numel or not isinstance(nonzero, int | float):
                continue
            z = zeros.setdefault(module_of(name), [0.0, 0.0])
            z[0] += numel - nonzero
            z[1] += numel
        for mod, (z, n) in zeros.items():
            shares.setdefault(mod, []).append(z / n)
    layers = {m: round(sum(v) / len(v), 4) for m, v in shares.items() if v}
    underflow = {m: s for m, s in layers.items() if s >= min_zero_share}
    source = loss_source(tl)
    evidence: dict[str, Any] = {
        "autocast_dtype": "float16",
        "grad_scaler": None,
        "zero_grad_share": dict(sorted(layers.items(), key=lambda kv: -kv[1])[:12]),
        "observed_steps": len(next(iter(shares.values()), [])),
    }
    if not underflow:
        yield tl.finding(
            title="float16 autocast without a GradScaler (no gradient underflow measured yet)",
            step=fp16_steps[0],
            evidence=evidence,
            where=Where(source=source),
            cause="the forward runs under float16 autocast and no GradScaler scales the loss: "
            "gradients below 6e-8 will underflow to 0 in the float16 backward",
            fix=_FIX,
            severity=Severity.WARNING,
        )
        return
    worst = max(underflow, key=lambda m: underflow[m])
    names = tuple(n for n in params if module_of(n) == worst)
    listed = ", ".join(
        f"`{m}` {s:.0%}" for m, s in sorted(underflow.items(), key=lambda kv: -kv[1])
    )
    yield tl.finding(
        title=f"float16 autocast without a GradScaler: {underflow[worst]:.0%} of `{worst}`'s "
        "gradient elements are exactly 0 (underflow)",
        step=fp16_steps[0],
        evidence=evidence,
        where=Where(module=worst, params=names, source=source),
        cause=f"the forward runs under float16 autocast with no GradScaler; share of exactly-"
        f"zero gradient elements per layer: {listed}. Gradients below float16's 6e-8 "
        "become 0 in the backward, so these weights barely learn",
        fix=_FIX,
    )


_FIX = (
    "scale the loss with torch.amp.GradScaler: scaler.scale(loss).backward(); "
    "scaler.step(optimizer); scaler.update() -- or autocast to torch.bfloat16"
)
