"""TD402 eval-mode-during-training."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module
from . import _ultralytics as ultralytics


def _eval_calls(tl: TimelineView, onset: int) -> list[dict[str, Any]]:
    """The user's `.eval()`/`.train(False)` calls at or before the onset step (outside
    `doc.validating()`)."""
    return [
        e
        for e in tl.events("mode_call")
        if not e.get("training") and e["step"] <= onset and not e.get("validating")
    ]


def _switch_call(tl: TimelineView, onset: int) -> dict[str, Any] | None:
    """The user's last `.eval()`/`.train(False)` call at or before the onset step."""
    calls = _eval_calls(tl, onset)
    return calls[-1] if calls else None


def _shown(names: list[str], count: int) -> str:
    return ", ".join(f"`{n}`" for n in names[:5]) + (f" and {count - 5} more" if count > 5 else "")


@rule(
    code="TD402",
    name="eval-mode-during-training",
    severity=Severity.ERROR,
    summary="The optimizer steps while BatchNorm/Dropout modules are in eval mode.",
    requires=("modes.eval_at_step", "modes.functional_dropout"),
    events=("mode_call", "validation", "functional_dropout"),
    facts=("modes", "ultralytics"),
    priority=15,
)
def eval_mode_during_training(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Optimizer steps taken while mode-sensitive modules of the trained model (BatchNorm,
    InstanceNorm with running stats, Dropout with p > 0) are in eval mode: the model was put in
    eval mode (by a validation, a callback, a helper) and never put back in train mode, or was
    never in train mode. Names the modules, the first step, how many steps, and the line of the
    `.eval()` call when it was seen. A model with no such module whose forward calls
    `F.dropout(x, p, training=self.training)` (pytorch/examples' GAT) is mode-sensitive too:
    reported when its training forwards called it with training off while every watched model
    was in eval mode at the optimizer step, and the flag follows the mode: they dropped out at
    an earlier step, or the calling line reads a module's `.training`.

    ## Why it matters
    In eval mode BatchNorm normalizes with its running statistics and stops updating them, and
    Dropout is off: the model trains a different function from the one you designed,
    regularization is gone, and with small batches or a shifting input distribution training
    degrades or diverges. It typically starts right after the first validation.

    ## How it is measured
    Each step, before the optimizer step, the `training` flag of every mode-sensitive module of
    the watched models is read (a cached list, a bool each). Calls to `Module.train()`/`.eval()`
    on watched modules are recorded with their source line (the outermost call only;
    `doc.validating()`'s own switching is not counted). A subset of modules put in eval mode
    from the first step while the model itself trains (a deliberate BatchNorm freeze) is not
    reported.

    ## Example
    ```python
    def validate(model):
        model.eval()                       # never switched back
        ...
    for epoch in range(epochs):
        train_one_epoch(model)             # epochs 2+ train in eval mode
        validate(model)
    ```

    ## Fix
    ```python
    model.train()                          # at the start of every training epoch
    # or validate with `with doc.validating(model):`, which restores every module's mode
    ```

    Under Ultralytics the trainer puts the model in train mode only at the start of each epoch
    (`trainer._model_train()`), so a callback's `.eval()` lasts until the next epoch: the finding
    names your `on_train_epoch_start` / `on_train_batch_start` / `on_train_batch_end` callbacks;
    restore the mode in the same callback (`was = m.training; m.eval(); ...; m.train(was)`) or
    evaluate `trainer.ema.ema`.

    Normalization layers alone put in eval mode midway while the model stays in train mode,
    by `.eval()` calls on those layers themselves or by setting their `training` flag
    (quantization-aware training's `freeze_bn_stats`), are a deliberate BatchNorm freeze: an
    info.

    ## Known false positives
    A BatchNorm freeze done through a container's `.eval()` (`model.backbone.eval()` midway,
    the backbone still trained) is reported; ignore TD402 then.
    """
    changes = tl.series("modes.eval_at_step")
    onset = None
    for step, info in changes:
        names = info.get("eval") or []
        if not names:
            continue
        roots_off = [r for r, on in (info.get("roots_training") or {}).items() if not on]
        first_step = step == changes[0][0] and step <= 1
        # A partial freeze from the very first step while the model trains is deliberate.
        if roots_off or not first_step:
            onset = (step, info, roots_off)
            break
    if onset is None:
        found = _functional(tl)
        if found is not None:
            yield found
        return
    step, info, roots_off = onset
    frozen = _norm_freeze(tl, step, info, roots_off)
    if frozen is not None:
        yield frozen
        return
    names = info.get("eval") or []
    count = info.get("count", len(names))
    sensitive = info.get("sensitive", count)
    steps_in_eval = (tl.fact("modes") or {}).get("steps_in_eval", 0)
    call = _switch_call(tl, step)
    shown = _shown(names, count)
    since = (
        f" `{call['module']}` was switched to eval mode at {call['source']} (step {call['step']})"
        " and not switched back."
        if call and call.get("source")
        else ""
    )
    whole = f"the whole model (`{'`, `'.join(roots_off)}`)" if roots_off else f"{shown}"
    validations = [e["step"] for e in tl.events("validation")]
    after_val = next((s for s in validations if s <= step), None)
    found = tl.finding(
        title=f"{steps_in_eval} optimizer step(s) taken with {count}/{sensitive} "
        "BatchNorm/Dropout modules in eval mode",
        step=step,
        evidence={
            "modules_in_eval": names[:20],
            "count": count,
            "mode_sensitive_modules": sensitive,
            "first_step": step,
            "steps_in_eval": steps_in_eval,
            "models_in_eval_mode": roots_off,
            "switched_at": call.get("source") if call else None,
            "after_validation_at_step": after_val,
        },
        where=Where(
            module=(roots_off[0] if roots_off else common_module([f"{n}.x" for n in names])),
            source=call.get("source") if call else None,
        ),
        cause=(
            f"From step {step}, {whole} trained in eval mode: BatchNorm normalizes with frozen "
            "running statistics and Dropout is off while the optimizer steps." + since
        ),
        fix=(
            "Call `model.train()` at the start of each training epoch (after validation), or "
            "validate inside `with doc.validating(model):`, which restores every module's mode."
        ),
    )
    yield ultralytics.eval_mode_during_training(tl, found)  # Ultralytics' words where it trained


def _norm_freeze(
    tl: TimelineView, step: int, info: dict[str, Any], roots_off: list[str]
) -> Finding | None:
    """Normalization layers only, put in eval mode midway while every trained model stays in
    train mode, by no `.eval()` call on a container (each call seen was on a norm layer
    itself, or none was: QAT's `freeze_bn_stats` sets `bn.training` directly): a BatchNorm
    freeze (fine-tuning, QAT's recipe), not a validation's `.eval()` left behind. Said as a
    note. A validation's forgotten `.eval()` reaches the whole model or a submodule, with its
    Dropout layers and with a call on that container."""
    if roots_off or not info.get("norms_only"):
        return None
    calls = _eval_calls(tl, step)
    if any(not e.get("norm") for e in calls):
        return None
    names = info.get("eval") or []
    count = info.get("count", len(names))
    shown = _shown(names, count)
    call = calls[-1] if calls else None
    how = (
        f" by `.eval()` calls on the layers themselves (the last at {call['source']})"
        if call and call.get("source")
        else ", their `training` flag set directly (no `.eval()` call was seen)"
    )
    return tl.finding(
        title=f"BatchNorm statistics frozen from step {step}: {count} normalization "
        "layer(s) in eval mode while the model trains",
        step=step,
        evidence={
            "modules_in_eval": names[:20],
            "count": count,
            "first_step": step,
            "steps_in_eval": (tl.fact("modes") or {}).get("steps_in_eval", 0),
            "models_in_eval_mode": [],
            "switched_at": call.get("source") if call else None,
        },
        where=Where(
            module=common_module([f"{n}.x" for n in names]),
            source=call.get("source") if call else None,
        ),
        cause=(
            f"From step {step}, {shown} normalize with their running statistics and stop "
            f"updating them, switched{how}, while the model and its Dropout layers stay in "
            "train mode: a deliberate freeze (fine-tuning with frozen BatchNorm, "
            "quantization-aware training's `freeze_bn_stats`)"
        ),
        fix=(
            "nothing, if the freeze is meant; otherwise put the layers back in train mode "
            "(`model.train()` at the start of each epoch)"
        ),
        severity=Severity.INFO,
    )


# A line that passes a module's mode as the flag: `training=self.training`.
_READS_MODE = re.compile(r"\.training\b")


def _functional(tl: TimelineView) -> Finding | None:
    """A model with no Dropout module whose forward calls `F.dropout(x, p,
    training=self.training)`: dropout was on in an earlier step's training forward (or the
    calling line reads a module's mode: zero-code mode attaches after step 1's forward), and
    off in a later one's while every watched model was in eval mode at its optimizer step."""
    series = tl.series("modes.functional_dropout")
    calls = {bool(e.get("training")): e for e in tl.events("functional_dropout")}
    off_call = calls.get(False) or {}
    on_at = next((s for s, v in series if v.get("on")), None)
    # Its flag follows the mode: seen on at an earlier step, or read from a module's mode on
    # the line that calls it (`training=self.training`; a hard-coded False is no mode's).
    reads_mode = bool(_READS_MODE.search(off_call.get("code") or ""))
    if on_at is None and not reads_mode:
        return None
    onset = None
    for step, info in series:
        roots = info.get("roots_training") or {}
        off_only = info.get("off") and not info.get("on")
        after_on = on_at is None or step > on_at
        if after_on and off_only and roots and not any(roots.values()):
            onset = (step, sorted(roots))
            break
    if onset is None:
        return None
    step, roots = onset
    source = off_call.get("source") or (calls.get(True) or {}).get("source")
    steps_off = (tl.fact("modes") or {}).get("functional_off_steps", 0)
    call = _switch_call(tl, step)
    since = (
        f" `{call['module']}` was switched to eval mode at {call['source']} (step {call['step']})"
        " and not switched back."
        if call and call.get("source")
        else ""
    )
    p = off_call.get("p") or (calls.get(True) or {}).get("p")
    at = f" at {source}" if source else ""
    return tl.finding(
        title=f"{steps_off} optimizer step(s) taken with the model in eval mode: its "
        f"functional dropout{at} is off",
        step=step,
        evidence={
            "models_in_eval_mode": roots,
            "functional_dropout": source,
            "p": p,
            "on_at_step": on_at,
            "first_step": step,
            "steps_in_eval": steps_off,
            "switched_at": call.get("source") if call else None,
        },
        where=Where(module=roots[0], source=(call or {}).get("source") or source),
        cause=(
            f"The model holds no Dropout module but calls F.dropout(..., training=...){at}"
            f"{f' with p={p:g}' if p else ''}"
            + (
                f": it dropped out in the training forward of step {on_at}, and"
                if on_at is not None
                else ", its flag read from the module's mode"
                + (f" (`{off_call['code'].strip()}`)" if off_call.get("code") else "")
                + ";"
            )
            + f" from step {step} the whole model (`{'`, `'.join(roots)}`) trained in eval "
            "mode, so the dropout was off while the optimizer steps." + since
        ),
        fix=(
            "Call `model.train()` at the start of each training step or epoch (after "
            "evaluation), or validate inside `with doc.validating(model):`, which restores "
            "every module's mode."
        ),
    )
