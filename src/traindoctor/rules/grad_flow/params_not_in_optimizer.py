"""TD103 params-not-in-optimizer."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    common_module,
    describe_groups,
    foreign_tensors,
    group_params,
    onset,
    optimizer_names,
    optimizer_source,
    replaced_params,
    same_layout,
    stepped_by_hand,
    trainable_names,
)
from ._held_out import held_out_by_design


@rule(
    code="TD103",
    name="params-not-in-optimizer",
    severity=Severity.ERROR,
    summary="Trainable params that no optimizer param group holds.",
    requires=(
        "grads.norm",
        "params.replaced",
        "copies.norm",
        "forward.calls",
        "optim.hand_step",
        "grads.stepped",
    ),
    events=("optimizer_layout", "models_added", "hidden_params"),
    facts=("copies", "grads_seen_later", "modes", "optimizers", "params"),
    priority=16,
)
def params_not_in_optimizer(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Parameters with `requires_grad=True` that are not in any param group of the watched
    optimizer(s).

    ## Why it matters
    They get gradients (compute and memory are spent) but nothing applies them, so that part of
    the model stays at its initial values. Typical causes: the optimizer was built from part of
    the model (`model.backbone.parameters()`), or a module was replaced after the optimizer was
    built.

    ## How it is measured
    traindoctor compares, by tensor identity, the watched models' trainable parameters with the
    tensors in every optimizer param group, at attach and on the first steps. It also records
    whether those params receive gradients, and whether their tensors were replaced.

    Params kept out of the optimizer on purpose are told apart by measurement and not
    reported: a copy of the trained weights (a DQN target network, an EMA or teacher as in
    BYOL, DINO or mean teacher, `AveragedModel`) is bit-identical to trained params when
    training starts, or its values change during the run without any optimizer (a periodic
    `load_state_dict`, a Polyak/EMA average, `torch._foreach_lerp_`); a fixed reference model
    only ever runs with gradient recording off; the members of a torch.func ensemble never run
    while the optimizer trains their stacked copies (tensors that are no param of the model
    and get gradients). Either way, such params never get a gradient; params that do get one
    are reported. Params that do get one are a note only when they all belong to a separate
    watched model kept in eval mode at every step while the optimizers train the others (a
    fixed loss network such as SRGAN's VGG feature extractor, built without
    `requires_grad_(False)`): the fix is then `requires_grad_(False)`, for the compute.

    Trainable tensors the model holds where `model.parameters()` does not look (layers in a
    plain Python list or dict instead of `nn.ModuleList`/`nn.ModuleDict`, a tensor made with
    `requires_grad=True` instead of an `nn.Parameter`) are found by walking the model's
    attributes; they are reported when, at every sampled step (at least two), no optimizer
    held them, they had a gradient that changed from one to the next, and their values stayed
    the same (a tensor updated by hand or averaged, or an input cached with requires_grad, is
    not reported).

    ## Example
    ```python
    optimizer = torch.optim.SGD(model.backbone.parameters(), lr=0.1)   # head left out
    self.hids = [nn.Linear(64, 64) for _ in range(3)]   # a list: model.parameters() skips them
    ```

    ## Fix
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # or add what is missing: optimizer.add_param_group({"params": model.head.parameters()})
    # or, if the head must stay fixed: model.head.requires_grad_(False)
    ```

    ## Known false positives
    Params trained by a second optimizer that was not passed to traindoctor: pass all of them,
    `td.watch(model, [opt_a, opt_b])`. A copy that is neither a copy of the trained weights
    at the start, nor changed during the run, nor run under no_grad (a separately initialised
    target network whose first sync comes after the run ends) is still reported.
    """
    optimizers = tl.fact("optimizers")
    if not optimizers:
        return
    yield from _hidden_from_parameters(tl)
    held = optimizer_names(tl)
    by_design = held_out_by_design(tl)
    missing = sorted(n for n in trainable_names(tl) if n not in held and n not in by_design)
    if not missing:
        return
    # Params whose gradients a hand-written update applied (`p -= lr * p.grad` under no_grad,
    # `p.data.add_(...)`) are trained, by the user's own code: the nn_tutorial trains raw
    # tensors so before it builds any optimizer for the next models.
    by_hand = stepped_by_hand(tl)
    missing = [n for n in missing if n not in by_hand]
    if not missing:
        return
    with_grad = set()
    for _, norms in tl.series("grads.norm"):
        with_grad |= {n for n in missing if n in norms}
    # Params of a model watched from a later phase on (zero-code): its forward calls were not
    # measured (a copy or a fixed reference run under no_grad is not told apart), so only
    # those that got a gradient are reported.
    added = {n: a["step"] for a in tl.events("models_added") for n in a.get("params") or ()}
    missing = [n for n in missing if n not in added or n in with_grad]
    if not missing:
        return
    all_names = list((tl.fact("params") or {}).keys())
    groups = group_params(missing, all_names)
    replaced = replaced_params(tl)
    stale = foreign_tensors(tl)
    shapes = {tuple(u["shape"]) for u in stale}
    params = tl.fact("params") or {}
    matches = [n for n in missing if tuple(params[n]["shape"]) in shapes]
    # Stale tensors that never get a gradient, laid out like the missing params (same count
    # and ranks, e.g. a head re-created with a new number of classes): a replaced module.
    never_grad = [u["shape"] for u in stale if u.get("requires_grad") and not u.get("had_grad")]
    relaid = bool(never_grad) and same_layout(never_grad, [params[n]["shape"] for n in missing])
    opt_desc = "; ".join(
        f"{o['class']} {g['id']}: {len(g['params'])} tensors"
        for o in optimizers
        for g in o["groups"]
    )
    if (replaced & set(missing)) or (matches and len(matches) == len(missing)) or relaid:
        cause = (
            "these params were replaced after the optimizer was built (the module was re-assigned): "
            "the optimizer still holds the old tensors (TD111) and never sees the new ones"
        )
        fix = "build the optimizer after the model is final, or rebuild it after replacing modules"
    else:
        cause = (
            "no param group holds them: the optimizer was built from part of the model "
            f"({opt_desc})"
        )
        fix = (
            "build the optimizer from model.parameters(), or add them with "
            "optimizer.add_param_group({'params': [...]}); freeze them with requires_grad_(False) "
            "if they are not meant to train"
        )
    numel = sum(params[n]["numel"] for n in missing)
    frozen = _in_eval_throughout(tl, missing)
    if frozen:
        # A separate model the user keeps in eval mode, that no optimizer holds, beside the
        # trained ones: a fixed network by design (SRGAN's VGG loss network, a teacher) whose
        # only cost is the gradients computed for it.
        yield tl.finding(
            title=f"{len(missing)} params ({numel:,} values) of {', '.join(frozen)}, kept in "
            f"eval mode and in no optimizer, "
            + (
                f"receive gradients that are never applied ({len(with_grad)} of them)"
                if with_grad
                else "are fixed"
            ),
            step=1,
            severity=Severity.INFO,
            evidence={
                "params_not_in_optimizer": len(missing),
                "values": numel,
                "receive_gradients": len(with_grad),
                "eval_mode_throughout": list(frozen),
                "optimizer_groups": opt_desc,
            },
            where=Where(module=common_module(missing), params=tuple(missing)),
            cause=f"{', '.join(frozen)} stayed in eval mode at every step while the optimizers "
            "trained the other models: a fixed network (a loss network, a teacher), by design; "
            "its params still require grad, so backward computes and accumulates their "
            "gradients for nothing",
            fix=f"`{frozen[0]}.requires_grad_(False)` once, before training (saves that "
            "backward's compute and memory); if it was meant to train, add its params to an "
            "optimizer and call .train() on it",
        )
        return
    gets = (
        f", {len(with_grad)} of them receive gradients that are never applied" if with_grad else ""
    )
    opt0 = optimizers[0]
    step = onset(tl.events("optimizer_layout"), lambda e: not set(missing) & set(e["held"])) or 1
    # Params of models watched from a later phase on: not missing before they were.
    if all(n in added for n in missing):
        step = max(step, min(added[n] for n in missing))
    yield tl.finding(
        title=f"{len(missing)} trainable params ({numel:,} values) are in no optimizer: "
        f"{describe_groups(groups)}{gets}",
        step=step,
        evidence={
            "params_not_in_optimizer": len(missing),
            "values": numel,
            "receive_gradients": len(with_grad),
            "optimizer_groups": opt_desc,
        },
        where=Where(
            module=common_module(missing), params=tuple(missing), source=optimizer_source(opt0)
        ),
        cause=cause,
        fix=fix,
    )


def _in_eval_throughout(tl: TimelineView, missing: list[str]) -> list[str]:
    """The watched models that hold every one of `missing` and were in eval mode at every
    step while no optimizer stepping then trained them (modes probe); [] otherwise."""
    roots = (tl.fact("modes") or {}).get("eval_untrained") or []
    named = [r for r in roots if r != "<model>"]
    owners = {next((r for r in named if n.startswith(r + ".")), None) for n in missing}
    if not owners or None in owners:
        return []
    return sorted(o for o in owners if o is not None)


_HOW = {
    "list": "held in a plain Python list or tuple (not nn.ModuleList / nn.ParameterList)",
    "dict": "held in a plain dict (not nn.ModuleDict / nn.ParameterDict)",
    "attribute": "set as plain tensors with requires_grad=True (not nn.Parameter)",
}


def _hidden_from_parameters(tl: TimelineView) -> Iterator[Finding]:
    """Tensors of the model that parameters() does not return: gradient, never stepped."""
    seen: dict[str, list[dict]] = {}
    first: dict[str, int] = {}
    for e in tl.events("hidden_params"):
        for t in e.get("tensors") or ():
            seen.setdefault(t["name"], []).append(t)
            first.setdefault(t["name"], e["step"])
    names = [
        n
        for n, ts in seen.items()
        if len(ts) >= 2
        and all(t["grad"] for t in ts)
        # a new gradient each time (not one left from an old backward), the same values
        and len({t["grad"] for t in ts}) > 1
        and all(t["fingerprint"] == ts[0]["fingerprint"] for t in ts)
    ]
    if not names:
        return
    names.sort()
    hows = sorted({seen[n][0]["held"] for n in names})
    numel = sum(seen[n][0]["numel"] for n in names)
    samples = min(len(seen[n]) for n in names)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    yield tl.finding(
        title=f"{len(names)} trainable tensors ({numel:,} values) that model.parameters() does not "
        f"return get gradients no optimizer applies: {shown}",
        step=min(first[n] for n in names),
        severity=Severity.WARNING,
        evidence={
            "hidden_tensors": names,
            "values": numel,
            "held": hows,
            "steps_measured": samples,
        },
        where=Where(module=common_module(names), params=tuple(names)),
        cause=f"they are {'; others '.join(_HOW[h] for h in hows)}, so model.parameters() does "
        "not return them and the optimizer built from it never holds them: at each of the "
        f"{samples} sampled steps they had a gradient and their values were unchanged",
        fix="keep layers in nn.ModuleList / nn.ModuleDict and trainable tensors as nn.Parameter "
        "(or nn.ParameterList), then build the optimizer from model.parameters(); if they must "
        "stay fixed, make them with requires_grad=False or register_buffer",
    )
