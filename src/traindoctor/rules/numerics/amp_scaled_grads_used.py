"""TD204 amp-scaled-grads-used."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module, describe_groups, fmt_factor, group_params


@rule(
    code="TD204",
    name="amp-scaled-grads-used",
    severity=Severity.ERROR,
    summary="Gradients are clipped or applied while still multiplied by the GradScaler scale.",
    requires=("amp.misuse", "amp.misuse.norm", "amp.misuse.scale", "amp.scale"),
    events=("amp_misuse",),
    facts=("params",),
    priority=18,
)
def amp_scaled_grads_used(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    With `torch.amp.GradScaler`, `scaler.scale(loss).backward()` leaves every gradient
    multiplied by the scale (65536 by default) until `scaler.unscale_(optimizer)` or
    `scaler.step(optimizer)` divides it. This rule fires when the scaled gradients are used:
    - `clip_grad_norm_` / `clip_grad_value_` run before `scaler.unscale_(optimizer)`;
    - `optimizer.step()` is called directly instead of `scaler.step(optimizer)`;
    - a scaled backward adds into gradients that `unscale_` already divided (unscale_ per
      micro-batch, or before the last micro-batch, under gradient accumulation), so scaled and
      unscaled gradients are summed and the step applies the mixture.

    A `clip_grad_norm_` before unscale_ that clipped at no measured step (the scaled norm
    stayed under max_norm each time, so the unscaled one did too) changed no update of this
    run yet: that one is a warning.

    ## Why it matters
    A clip threshold of 1.0 compared with a norm 65536x too large clips every step to 1/65536
    of the intended size: the model barely trains, and no error is raised. A direct
    `optimizer.step()` applies gradients 65536x too large (SGD diverges; Adam hides most of it,
    but non-finite steps are no longer skipped). Mixed gradients are mostly scaled ones, and
    the inf/NaN check of the micro-batches after `unscale_` never runs. Checks such as
    "is the gradient finite" made on scaled gradients report overflow that is not there.

    ## How it is measured
    traindoctor patches `clip_grad_norm_`/`clip_grad_value_` and `GradScaler.unscale_`/`step`
    process-wide (removed at the end, the functions' results unchanged) and reads the scaler's
    per-optimizer stage (`READY`: still scaled) when a clip runs on params of that optimizer,
    when an optimizer steps outside `scaler.step()` after a scaled backward, and when a scaled
    backward starts while an optimizer's gradients are already unscaled. The evidence gives the
    call site, the scale at that moment and the gradient size the call saw (the total norm
    `clip_grad_norm_` returned, the max |grad| for `clip_grad_value_`).

    ## Example
    ```python
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # still scaled
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Fix
    ```python
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)                 # once, after the last micro-batch's backward
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)                     # not optimizer.step()
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    ```

    ## Known false positives
    Clipping with a threshold deliberately multiplied by the scale (`max_norm * scaler.get_scale()`)
    is correct but reported: unscale first instead, it is clearer. Optimizers that handle the
    scale themselves (`_step_supports_amp_scaling`) are stepped by `scaler.step()` and are fine.
    """
    counts: dict[str, list[int]] = {}
    for step, per_key in tl.series("amp.misuse"):
        for key, n in per_key.items():
            if n:
                counts.setdefault(key, []).append(step)
    if not counts:
        return
    sizes = _per_key(tl, "amp.misuse.norm")
    scales = _per_key(tl, "amp.misuse.scale")
    step_scale = dict(tl.series("amp.scale"))
    all_names = list((tl.fact("params") or {}).keys())
    for event in tl.events("amp_misuse"):
        key = event.get("key")
        steps = counts.get(key)
        if not steps:
            continue
        scale = _scale_of(scales.get(key, []), step_scale, steps)
        names = list(event.get("params") or [])
        groups = group_params(names, all_names) if names else []
        what = event.get("what")
        title, cause, fix, effect = _describe(event, scale, sizes.get(key, []), groups, all_names)
        # A norm clip measured at every affected step that never bit: no update changed yet.
        idle = what == "clip_grad_norm_" and effect.get("never_clipped", 0) >= len(steps)
        evidence: dict[str, Any] = {
            "call": _CALL.get(what, what),
            "scaler_stage": event.get("stage"),
            "scale": scale,
            "steps_affected": len(steps),
            "first_steps": steps[:10],
            "optimizer": event.get("optimizer"),
            "params": len(names),
            **effect,
        }
        if event.get("unscale_source"):
            evidence["unscale_source"] = event["unscale_source"]
        yield tl.finding(
            title=title,
            step=steps[0],
            evidence=evidence,
            where=Where(
                module=common_module(names),
                params=tuple(names),
                op=_CALL.get(what, what),
                source=event.get("source"),
            ),
            cause=cause,
            fix=fix,
            severity=Severity.WARNING if idle else None,
        )


_CALL = {
    "clip_grad_norm_": "clip_grad_norm_",
    "clip_grad_value_": "clip_grad_value_",
    "optimizer.step": "optimizer.step",
    "backward_after_unscale": "backward",
}

_ORDER = (
    "scaler.scale(loss).backward() for every micro-batch; then once: scaler.unscale_(optimizer); "
    "clip_grad_norm_(...); scaler.step(optimizer); scaler.update(); optimizer.zero_grad()"
)


def _describe(
    event: dict[str, Any],
    scale: float | None,
    sizes: list[float],
    groups: list[tuple[str, list[str]]],
    all_names: list[str],
) -> tuple[str, str, str, dict[str, Any]]:
    what = event.get("what")
    src = event.get("source") or "?"
    s = f"{scale:g}" if scale else "the scale"
    x = f"{fmt_factor(scale)}x" if scale else "scale-times"
    whose = _whose(groups, all_names)
    threshold = event.get("threshold")
    effect: dict[str, Any] = {}
    if what == "clip_grad_norm_":
        effect["max_norm"] = threshold
        finite = [v for v in sizes if math.isfinite(v)]
        if finite and scale:
            seen = finite[-1]
            true = seen / scale
            clipped = sum(v > (threshold or 0.0) for v in finite)
            effect.update(
                {
                    "norm_seen_scaled": seen,
                    "norm_true": true,
                    "steps_clipped": f"{clipped} of {len(finite)} measured",
                }
            )
            intended = min(true, threshold) if threshold else true
            actual = min(true, (threshold or math.inf) / scale)
            if actual > 0 and intended / actual > 1.0 + 1e-9:
                effect["update_shrunk_by"] = intended / actual
            if threshold and not clipped and all(v / scale <= threshold for v in finite):
                effect["never_clipped"] = len(finite)
        shrink = effect.get("update_shrunk_by")
        tail = f": every update is cut to 1/{_ratio(shrink)} of its intended size" if shrink else ""
        if "never_clipped" in effect:
            tail = (
                f"; it clipped at none of the {effect['never_clipped']} measured steps (the "
                "scaled norm stayed under max_norm), so no update has changed yet: a larger "
                f"gradient would be cut to max_norm/{s}"
            )
        title = (
            f"clip_grad_norm_(max_norm={threshold:g}) at {src} runs on gradients still "
            f"multiplied by the GradScaler scale {s}"
            if threshold is not None
            else f"clip_grad_norm_ at {src} runs on gradients still multiplied by the scale {s}"
        ) + tail
        cause = (
            f"scaler.unscale_(optimizer) is not called before clipping, so the norm compared "
            f"with max_norm is {x} the true norm"
            + (
                f" ({effect['norm_seen_scaled']:.4g} seen, {effect['norm_true']:.4g} true)"
                if "norm_true" in effect
                else ""
            )
            + f" for {whose}"
        )
        fix = f"call scaler.unscale_(optimizer) right before clip_grad_norm_; order: {_ORDER}"
    elif what == "clip_grad_value_":
        effect["clip_value"] = threshold
        finite = [v for v in sizes if math.isfinite(v)]
        if finite and scale:
            effect["max_abs_grad_seen_scaled"] = finite[-1]
            effect["max_abs_grad_true"] = finite[-1] / scale
            if threshold:
                effect["effective_clip_value"] = threshold / scale
        title = (
            f"clip_grad_value_ at {src} runs on gradients still multiplied by the GradScaler "
            f"scale {s}: each gradient element is capped at clip_value/{s} after unscaling"
        )
        cause = (
            f"scaler.unscale_(optimizer) is not called before clip_grad_value_, so the values "
            f"compared with clip_value are {x} too large for {whose}"
        )
        fix = f"call scaler.unscale_(optimizer) right before clip_grad_value_; order: {_ORDER}"
    elif what == "optimizer.step":
        opt = event.get("optimizer_class") or "optimizer"
        if event.get("stage") == "UNSCALED":
            title = (
                f"{opt}.step() at {src} is called directly after scaler.unscale_(): steps with "
                "inf/NaN gradients are applied instead of skipped"
            )
            cause = (
                "scaler.step(optimizer) is bypassed: the gradients were unscaled, but the "
                "GradScaler's overflow check, which skips steps with non-finite gradients, never "
                "decides whether this step runs"
            )
        else:
            finite = [v for v in sizes if math.isfinite(v)]
            if finite and scale:
                effect["grad_norm_applied_scaled"] = finite[-1]
                effect["grad_norm_true"] = finite[-1] / scale
            title = (
                f"{opt}.step() at {src} is called directly while a GradScaler is in use: it "
                f"applies gradients {x} their true size"
            )
            cause = (
                f"the loss is scaled (scaler.scale(loss).backward()) but optimizer.step() is "
                f"called instead of scaler.step(optimizer): the gradients of {whose} are never "
                f"unscaled, so each update is {x} too large (SGD diverges; Adam-type optimizers "
                "cancel most of it but their eps and weight decay do not), and steps with "
                "inf/NaN gradients are not skipped"
            )
        fix = (
            "replace optimizer.step() with scaler.step(optimizer) followed by scaler.update(); "
            f"order: {_ORDER}"
        )
    else:
        unscale_src = event.get("unscale_source") or "?"
        title = (
            f"backward at {src} adds scaled gradients into gradients that scaler.unscale_() at "
            f"{unscale_src} already divided: scaled and unscaled gradients are mixed"
        )
        cause = (
            "scaler.unscale_(optimizer) runs before the last micro-batch's backward (per "
            f"micro-batch, or on the wrong one) under gradient accumulation: the step applies "
            f"a sum of unscaled and {x}-scaled gradients of {whose}, and the micro-batches "
            "after unscale_ are never checked for inf/NaN"
        )
        fix = (
            "call scaler.unscale_(optimizer) once per optimizer step, after the last "
            f"micro-batch's backward and just before clipping; order: {_ORDER}"
        )
    return title, cause, fix, effect


def _whose(groups: list[tuple[str, list[str]]], all_names: list[str]) -> str:
    names = {n for _, members in groups for n in members}
    if not names:
        return "the optimizer's params"
    if all_names and names >= set(all_names):
        return f"all {len(names)} params of the model"
    return describe_groups(groups)


def _ratio(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def _per_key(tl: TimelineView, name: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _, per_key in tl.series(name):
        for key, v in per_key.items():
            if isinstance(v, int | float):
                out.setdefault(key, []).append(float(v))
    return out


def _scale_of(values: list[float], step_scale: dict[int, Any], steps: list[int]) -> float | None:
    """The scale at the misuse (measured then), else the scale recorded at its step."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    if finite:
        return finite[0]
    for s in steps:
        v = step_scale.get(s)
        if isinstance(v, int | float) and math.isfinite(v) and v > 0:
            return float(v)
    return None
