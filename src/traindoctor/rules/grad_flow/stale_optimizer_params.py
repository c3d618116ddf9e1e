"""TD111 stale-optimizer-params."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    common_module,
    ended,
    foreign_tensors,
    onset,
    optimizer_names,
    optimizer_source,
    replaced_params,
    same_layout,
    trainable_names,
)
from ..eval_hygiene import _ultralytics as ultralytics
from ._held_out import changed_outside_optimizer


@rule(
    code="TD111",
    name="stale-optimizer-params",
    severity=Severity.ERROR,
    summary="The optimizer holds tensors the model no longer uses (params replaced after it was built).",
    requires=(
        "params.replaced",
        "grads.observed",
        "grads.none",
        "grads.norm",
        "grads.stepped",
        "optim.hand_step",
        "forward.calls",
        "copies.norm",
    ),
    events=("inference_tensors", "optimizer_layout"),
    facts=("grads_seen_later", "models", "optimizers", "outcome", "params", "ultralytics"),
    priority=14,
)
def stale_optimizer_params(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Tensors held by an optimizer that are not parameters of the watched model(s) and never
    receive a gradient: leftovers of modules that were replaced after the optimizer was built.
    A warning when the optimizers hold none of the watched params while theirs get gradients
    and the watched model runs no forward with gradient: the model given to traindoctor is
    not the one trained (`td.watch(copy_of_model, optimizer)`), and no other finding could
    describe the training.

    ## Why it matters
    The optimizer keeps stepping the old tensors while the model computes with new ones that
    nothing updates. The loss may still fall a little (other layers train), which hides the bug.
    Re-assigning a head (`model.fc = nn.Linear(...)`), re-creating the model, or loading a
    model object after building the optimizer all do this.

    ## How it is measured
    traindoctor compares optimizer tensors with the model's parameters by identity, notices
    parameter names whose tensor changed since attach, and records on sampled steps whether the
    foreign tensors ever have a `.grad`; only tensors looked at on a sampled step after their
    optimizer had stepped count (an optimizer built per task or fold and used for a few steps
    between two sampled steps was never seen training: Reptile's inner loop). Tensors outside the model that do get gradients (a
    learnable loss weight, say) are legitimate and not reported, nor are tensors held only
    after the last step whose gradients were looked at (never measured).

    ## Example
    ```python
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.head = nn.Linear(512, num_classes)      # replaced after the optimizer was built
    ```

    ## Fix
    ```python
    model.head = nn.Linear(512, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)   # build it last
    ```

    Under Ultralytics, when inference tensors were seen (TD401: a callback fused or cast
    `trainer.model` under `inference_mode`), the finding is worded as TD401's: Ultralytics
    validates the EMA, your callbacks are named, and the fix is to validate `trainer.ema.ema`.

    ## Known false positives
    A second model trained by the same optimizer but not passed to traindoctor: pass both,
    `td.watch({"gen": g, "disc": d}, optimizer)`.
    """
    optimizers = tl.fact("optimizers") or []
    if not tl.series("grads.observed") and not ended(tl):
        return
    other = _another_model_trained(tl, optimizers)
    if other is not None:
        yield other
        return
    # Looked at after their optimizer stepped (older timelines lack the flag: looked).
    stale = [
        u
        for u in foreign_tensors(tl)
        if u.get("requires_grad") and not u.get("had_grad") and u.get("looked", True)
    ]
    if not stale:
        return
    since = onset(tl.events("optimizer_layout"), lambda e: e["stale"] > 0) or 1
    observed = [s for s, _ in tl.series("grads.observed")]
    if observed and max(observed) < since:
        # Held only after the last step whose gradients were looked at (zero-code mode: a
        # second model's optimizer built once the first one stopped stepping, a teacher
        # trained before its student): "never a gradient" was not measured.
        return
    replaced = replaced_params(tl)
    params = tl.fact("params") or {}
    held = optimizer_names(tl)
    orphans = [n for n in trainable_names(tl) if n not in held]
    shapes = [tuple(u["shape"]) for u in stale]
    matched = sorted(
        n for n in (replaced | set(orphans)) if n in params and tuple(params[n]["shape"]) in shapes
    )
    resized = False
    if not matched:
        # A module re-created with other sizes (a head for a new number of classes): no shape
        # matches, but the new params no optimizer holds are laid out like the stale tensors.
        candidates = sorted(n for n in (replaced | set(orphans)) if n in params)
        if candidates and same_layout(shapes, [params[n]["shape"] for n in candidates]):
            matched, resized = candidates, True
    numel = sum(math.prod(s) for s in shapes)
    # The new tensors' values change during the run although no optimizer holds them: the
    # user's code writes them (a VQ-VAE's EMA codebook re-assigned as a new nn.Parameter in
    # each forward). The held tensors are leftovers of params managed by hand, not a module
    # the optimizer should be training.
    by_hand = bool(matched) and set(matched) <= changed_outside_optimizer(tl)
    if by_hand:
        cause = (
            f"the model's {', '.join(f'`{n}`' for n in matched[:6])} are new tensors that no "
            "optimizer holds, and their values change during the run without any optimizer "
            "(the program writes them itself, as an EMA codebook re-assigned as a new "
            "nn.Parameter in forward): the optimizer's tensors are leftovers it holds for "
            "nothing, not a module left untrained"
        )
    elif matched:
        like = (
            "laid out like the stale ones (same count and ranks, new sizes)"
            if resized
            else "with the same shapes as the stale ones"
        )
        cause = (
            f"the model's {', '.join(f'`{n}`' for n in matched[:6])} are new tensors that no "
            f"optimizer holds, {like}: the module was replaced after the optimizer was built, "
            "so the optimizer steps the old tensors"
        )
    else:
        cause = (
            "the optimizer holds tensors that are not parameters of the watched model and never get "
            "a gradient: it was built for another model object (re-created or re-loaded after)"
        )
    found = tl.finding(
        title=f"the optimizer holds {len(stale)} tensors ({numel:,} values) that are not "
        f"parameters of the model and never receive a gradient",
        step=since,
        evidence={
            "stale_tensors": len(stale),
            "shapes": [list(s) for s in shapes[:8]],
            "replaced_params": sorted(replaced),
            "new_params_not_in_optimizer": len(orphans),
        },
        where=Where(
            module=common_module(matched) if matched else None,
            params=tuple(matched),
            source=optimizer_source(optimizers[0]) if optimizers else None,
        ),
        cause=cause,
        fix="build (or rebuild) the optimizer after the model's modules are final: "
        "optimizer = Optim(model.parameters(), ...) after the last module replacement"
        + ("; tensors written by hand are better buffers (register_buffer)" if by_hand else ""),
        severity=Severity.INFO if by_hand else None,
    )
    yield ultralytics.stale_optimizer_params(tl, found)  # Ultralytics' words where it trained


def _another_model_trained(tl: TimelineView, optimizers: list) -> Finding | None:
    """The watched model is not the one trained: the optimizers hold none of its params, the
    tensors they hold get gradients, and the watched model ran no forward with gradient (a
    teacher's no_grad forward is not one) nor got a gradient on the measured steps (td.watch(copy_of_model, optimizer), the wrong variable).
    Every other rule then judges a model that did nothing: the report would say 'healthy'
    about a run it never saw. A hand-written master-weight copy is not this: its model runs."""
    groups = [g for opt in optimizers for g in opt.get("groups", [])]
    foreign = [u for g in groups for u in g.get("unnamed", []) if u.get("requires_grad")]
    if not foreign or any(n is not None for g in groups for n in g.get("params", [])):
        return None
    if not any(u.get("had_grad") for u in foreign):
        return None
    watched = set(trainable_names(tl))
    nones = tl.series("grads.none")
    calls = tl.series("forward.calls")
    if not watched or not nones or not calls:
        return None
    ran = any(c.get("grad_enabled") for _, v in calls for c in (v or {}).values())
    if ran or any(not watched <= set(v or ()) for _, v in nones):
        return None  # a watched module ran with gradient, or a watched param got one
    shapes = [tuple(u["shape"]) for u in foreign]
    params = tl.fact("params") or {}
    mine_shapes = {tuple(params[n]["shape"]) for n in watched if n in params}
    if all(len(s) >= 1 and s[0] >= 2 and s[1:] in mine_shapes for s in shapes):
        # Stacks of the watched params (torch.func.stack_module_state): an ensemble of the
        # watched members trained through vmap(functional_call), which never calls them.
        return None
    numel = sum(math.prod(s) for s in shapes)
    models = ", ".join(f"`{k}` ({v})" for k, v in (tl.fact("models") or {}).items()) or "the model"
    mine = sum(int(params[n].get("numel") or 0) for n in watched if n in params)
    return tl.finding(
        title=f"the watched model is not the one trained: the optimizer trains {len(foreign)} "
        f"other tensors ({numel:,} values), none of them the watched model's parameters",
        step=nones[0][0],
        severity=Severity.WARNING,
        evidence={
            "watched_models": tl.fact("models") or {},
            "watched_trainable_values": mine,
            "optimizer_tensors": len(foreign),
            "optimizer_values": numel,
            "shapes": [list(s) for s in shapes[:8]],
            "steps_measured": len(nones),
        },
        where=Where(source=optimizer_source(optimizers[0]) if optimizers else None),
        cause=f"traindoctor watched {models} ({mine:,} trainable values): it ran no forward "
        f"with gradient and its parameters got no gradient in {len(nones)} measured steps, while the "
        f"optimizer's {len(foreign)} tensors got gradients and were stepped. The model passed "
        "to traindoctor is not the one trained (a copy, another variable, a model loaded "
        "again): nothing else in this report describes the training",
        fix="pass the model the optimizer trains: td.watch(model, optimizer) with the object "
        "whose forward computes the loss (a wrapper of it, DataParallel/DDP/compiled/PEFT, "
        "is fine)",
        confidence=0.9,
    )
