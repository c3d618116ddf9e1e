"""TD401 inference-tensor-params."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module, replaced_params
from . import _ultralytics as ultralytics


@rule(
    code="TD401",
    name="inference-tensor-params",
    severity=Severity.ERROR,
    summary="Params or buffers of the trained model are inference tensors: they cannot train.",
    requires=("params.replaced",),
    events=("inference_tensors",),
    facts=("ultralytics",),
    priority=8,
)
def inference_tensor_params(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Parameters or buffers of a watched (trained) model that are inference tensors: created
    inside `torch.inference_mode()`, typically by work a validator does there on the live model
    (fusing Conv+BN into new conv weights, casting modules to half, re-creating layers). Names
    the tensors, the step, and the `inference_mode` region that ran the model when they
    appeared.

    ## Why it matters
    Work done under `inference_mode` on a module's weights creates *new* tensors that are
    inference tensors: they can never require grad ("Setting requires_grad=True on inference
    tensor outside InferenceMode is not allowed"), the optimizer still holds the old tensors,
    and the model keeps computing with the new, untrainable ones. Training stops learning or
    crashes at the next step, and validation metrics computed from the mutated model are
    meaningless. Teams conclude it "cannot be fixed"; the fix is to never mutate the trained
    model under inference_mode.

    ## How it is measured
    At attach, on sampled steps, and at the exit of every `torch.inference_mode` region in
    which a watched model ran a forward, traindoctor checks `is_inference()` of each param and
    buffer of the watched models (one pass, no device work). The region's entry line is
    recorded when it is entered (the context manager and the decorator are both seen).
    Param names whose tensor changed since attach are listed with it (identity check), and
    whether any optimizer holds the new tensors.

    ## Example
    ```python
    with torch.inference_mode():
        model.conv1 = fuse_conv_and_bn(model.conv1, model.bn1)   # new inference tensors
        metrics = evaluate(model, val_loader)
    ```

    ## Fix
    ```python
    with doc.validating(model):          # eval + no_grad (not inference_mode); modes restored
        metrics = evaluate(model, val_loader)
    # or fuse a copy: fused = fuse(copy.deepcopy(model)) and validate that copy
    ```

    Under Ultralytics the training validation evaluates the EMA (`trainer.ema.ema`), never
    `trainer.model`: the finding names your `on_fit_epoch_end` / `on_train_epoch_end` /
    `on_val_end` callbacks, and the fix is to validate `trainer.ema.ema` or a deep copy there, or
    call `trainer.validator(trainer)`, and never fuse or cast `trainer.model`.

    ## Known false positives
    A frozen submodule built under inference_mode on purpose (a fixed feature extractor that
    never trains) is reported too when it belongs to the watched model; pass only the trained
    model to `watch()`.
    """
    events = tl.events("inference_tensors")
    if not events:
        return
    first = events[0]
    names = sorted({n for e in events for n in e.get("params") or []})
    buffers = sorted({n for e in events for n in e.get("buffers") or []})
    count = max(e.get("count", 0) for e in events)
    region = next((e for e in events if e.get("region_source")), None)
    replaced = sorted(replaced_params(tl) & set(names))
    held = sorted({n for e in events for n in e.get("in_optimizer") or []})
    shown = ", ".join(f"`{n}`" for n in (names or buffers)[:6])
    more = f" and {count - 6} more" if count > 6 else ""
    made = (
        f" They appeared after the `torch.inference_mode()` region entered at "
        f"{region['region_source']} (step {region['region_step']}) ran the model."
        if region
        else ""
    )
    held_text = (
        " The optimizer does not hold them: it keeps stepping the old tensors (TD111)."
        if names and not held
        else ""
    )
    found = tl.finding(
        title=f"{count} param/buffer tensor(s) of the trained model are inference tensors",
        step=first["step"],
        evidence={
            "params": names[:20],
            "buffers": buffers[:20],
            "count": count,
            "replaced_since_attach": replaced[:20],
            "held_by_an_optimizer": held[:20],
            "inference_mode_region": region.get("region_source") if region else None,
            "found": first.get("found_at"),
        },
        where=Where(
            module=common_module(names or buffers),
            params=tuple(names[:20]),
            source=region.get("region_source") if region else None,
        ),
        cause=(
            f"{shown}{more} are inference tensors: created under `torch.inference_mode()`, so "
            'they can never require grad, and training them fails with "Setting '
            'requires_grad=True on inference tensor outside InferenceMode is not allowed".'
            + made
            + held_text
        ),
        fix=(
            "Validate under `torch.no_grad()` (e.g. `with doc.validating(model):`), not "
            "`inference_mode`, and never mutate the trained model during validation: fuse or "
            "cast a `copy.deepcopy(model)` and evaluate that."
        ),
    )
    yield ultralytics.inference_tensors(tl, found)  # Ultralytics' words where it trained
