"""Params that no optimizer holds on purpose: a target network, an EMA/teacher copy, a frozen
reference run under no_grad. Shared by TD102 and TD103, which must not report them."""

from __future__ import annotations

from ...timeline import TimelineView
from .._util import (
    merged_forward_calls,
    module_of,
    optimizer_names,
    stepped_by_hand,
    trainable_names,
)


def got_gradient(tl: TimelineView) -> set[str]:
    """Params that had a gradient at some step: sampled ones (grads.norm), and on any step for
    params that had none at the first observed step (a branch that only some batches reach)."""
    seen = set(tl.fact("grads_seen_later") or {})
    for _, norms in tl.series("grads.norm"):
        seen.update(norms)
    return seen


def changed_outside_optimizer(tl: TimelineView) -> set[str]:
    """Params no optimizer holds whose values changed between two observed steps: something
    else writes them (a copy, an average, a hand-written update).

    Not a param re-created with fresh values (`self.head = nn.Linear(...)` inside forward():
    a new random tensor at each call, replaced under its name) that gets gradients which no
    update applies: its values change because it is new each time, and that is the bug TD103
    names. An EMA codebook re-assigned as a new nn.Parameter gets no gradient; a hand-written
    update is seen applying its gradient (grads.stepped). The caller declares "copies.norm",
    "grads.norm", "params.replaced", "optim.hand_step" and "grads.stepped"."""
    first: dict[str, float] = {}
    changed: set[str] = set()
    for _, norms in tl.series("copies.norm"):
        for name, value in norms.items():
            if name not in first:
                first[name] = value
            elif value != first[name]:
                changed.add(name)
    if changed:
        # (the gradient scan only where a changed param was replaced: an EMA teacher's or a
        # target network's params change without replacement, and held_out_by_design scans
        # the gradients itself)
        replaced = changed.intersection(
            n for _, names in tl.series("params.replaced") for n in names or ()
        )
        fresh = replaced & got_gradient(tl) if replaced else set()
        if fresh:
            changed -= fresh - stepped_by_hand(tl)
    return changed


def held_out_by_design(tl: TimelineView) -> dict[str, str]:
    """{param: measured reason} for trainable params that no optimizer holds, that never got a
    gradient, and that are measured to be a copy or a fixed reference: a bit-identical copy of
    a trained param at attach, values that changed without any optimizer, or a module only ever
    run with gradient recording off. Params that change outside the optimizer are listed even
    with a gradient (a hand-written update applies it)."""
    held = optimizer_names(tl)
    unheld = [n for n in trainable_names(tl) if n not in held]
    if not unheld:
        return {}
    with_grad = got_gradient(tl)
    copies = (tl.fact("copies") or {}).get("params") or {}
    changed = changed_outside_optimizer(tl)
    calls = merged_forward_calls(tl) or {}
    calls_seen = bool(tl.series("forward.calls"))
    out: dict[str, str] = {}
    for n in unheld:
        if n in changed:
            out[n] = "its values changed during the run although no optimizer holds it"
            continue
        if n in with_grad:
            continue
        if n in copies:
            out[n] = f"it was a bit-identical copy of `{copies[n]}` when training started"
            continue
        info = calls.get(module_of(n))
        if info is not None and not info.get("grad_enabled"):
            out[n] = f"its module `{module_of(n)}` only ever ran with gradient recording off"
        elif info is None and calls_seen and _foreign_with_grad(tl):
            # The module never ran while the optimizer trains tensors that are not the model's
            # and get gradients: stacked copies run by torch.func (stack_module_state + vmap
            # of functional_call), the members kept only to build or save them.
            out[n] = (
                f"its module `{module_of(n)}` never ran, and the optimizer trains tensors that "
                "are not the model's (copies, e.g. torch.func.stack_module_state)"
            )
    return out


def _foreign_with_grad(tl: TimelineView) -> bool:
    """An optimizer holds tensors that are no watched param and that had a gradient."""
    return any(
        u.get("had_grad")
        for o in tl.fact("optimizers") or []
        for g in o["groups"]
        for u in g.get("unnamed") or ()
    )
