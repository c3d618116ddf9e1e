"""TD102 params-without-grad."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import (
    describe_groups,
    ended,
    graphless_loss_events,
    group_params,
    merged_forward_calls,
    optimizer_source,
    step_source,
    trainable_names,
)
from ._held_out import got_gradient, held_out_by_design


@rule(
    code="TD102",
    name="params-without-grad",
    severity=Severity.ERROR,
    summary="Trainable params whose .grad is still None when optimizer.step() runs.",
    requires=(
        "grads.none",
        "grads.cleared",
        "forward.calls",
        "backward.count",
        "copies.norm",
        "grads.norm",
        "grads.stepped",
        "optim.hand_step",
        "params.replaced",
    ),
    events=(
        "backward_call",
        "hand_step",
        "loss_not_differentiable",
        "optimizer_step",
        "optimizer_first_step",
    ),
    facts=(
        "copies",
        "grads_seen_later",
        "modules_unrun_referenced",
        "optimizers",
        "outcome",
        "params",
    ),
    priority=20,
)
def params_without_grad(tl: TimelineView, *, min_observations: int = 2) -> Iterator[Finding]:
    """
    ## What it detects
    Parameters with `requires_grad=True` whose `.grad` is `None` every time the optimizer
    steps: backward never reaches them.

    ## Why it matters
    They never train, silently: the optimizer skips params without a gradient. A head that is
    computed but left out of the loss, a branch run under `no_grad`, or a `.detach()` in the
    middle of the model all look like this.

    ## How it is measured
    On the first steps (and sampled steps after), just before `optimizer.step()`, traindoctor
    lists trainable params whose `.grad` is None (steps where no backward ran before `step()`
    are not evidence and are skipped). Hooks on the parameters record which ones
    received a gradient during backward (so a `zero_grad()` between backward and step is told
    apart), and forward hooks on every module record whether it ran, with grad enabled, and
    whether its output carried a graph. The cause comes from those facts.

    Params still without a gradient at the first observed step are also checked on every
    later step, so a branch that only some batches reach (an auxiliary head, a class head
    whose targets are absent from the first batches) is not reported once it gets one.
    Params that no optimizer holds and that are measured to be a copy of the trained weights
    (a DQN target network, an EMA/teacher; see TD103) or a reference run only under no_grad
    are not meant to get a gradient and are not reported.

    An optimizer that first steps in a later phase (a net trained after an autoencoder's
    pretraining, a student after its teacher) is judged on its own steps: when no backward
    ran in any observed step in which it stepped, and every param it stepped had grad None at
    each of them, its `step()` changed nothing because `loss.backward()` is missing there
    (pyod#711: Deep SVDD's `loss.backward()` commented out after the pretraining phase).

    ## Example
    ```python
    feats = model.backbone(x)
    aux = model.aux_head(feats)            # computed ...
    loss = criterion(model.head(feats), y) # ... but not in the loss
    ```

    ## Fix
    ```python
    loss = criterion(model.head(feats), y) + 0.4 * aux_criterion(aux, y_aux)
    # or, if aux_head is not meant to train: model.aux_head.requires_grad_(False)
    ```

    ## Known false positives
    Conditional computation (mixture-of-experts, dropped layers, a head for a class that never
    occurs) leaves some params without gradient on some batches; the rule needs them without
    gradient at every step of the run, so a run shorter than the first batch that reaches
    them still reports them.
    """
    observations = tl.series("grads.none")
    yield from _later_optimizers_without_backward(tl, observations, min_observations)
    # backward.count (every step) read at the observed steps only (issue 15)
    if "backward.count" in tl.signal_names("backward.count"):
        # A step() that runs before any backward of its step (a stray step() in a debug block,
        # or at the top of the loop) finds every grad None: no evidence about the graph.
        observations = [(s, n) for s, n in observations if tl.at("backward.count", s, 0) > 0]
    needed = 1 if ended(tl) else min_observations
    if len(observations) < needed:
        return
    never = set(observations[0][1])
    for _, names in observations[1:]:
        never &= set(names)
    # A gradient on any step (a branch only some batches reach) shows the graph reaches
    # them; a target network or EMA copy that no optimizer holds gets none by design.
    never -= got_gradient(tl)
    never -= set(held_out_by_design(tl))
    if not never:
        return
    all_names = list((tl.fact("params") or {}).keys())
    trainable = trainable_names(tl)
    never_sorted = sorted(never)
    groups = group_params(never_sorted, all_names)
    cleared = set()
    for _, names in tl.series("grads.cleared"):
        cleared |= set(names)
    calls = merged_forward_calls(tl)
    label = groups[0][0]
    module = label if label in (calls or {}) or len(groups[0][1]) > 1 else label.rsplit(".", 1)[0]
    cause, fix, source = _cause(tl, module, never_sorted, cleared, calls)
    steps = [s for s, _ in observations]
    severity = None
    if len(never) < len(trainable) and _never_called(groups, calls, all_names, cleared, tl):
        # Modules the forward mentions but never ran, while the rest of the model trains: a
        # branch a config switches off (a 2-layer projector built with 3), dead weight rather
        # than a training failure: said, not alarmed. A layer the forward never mentions
        # (defined, forgotten) stays an error.
        severity = Severity.INFO
        cause += (
            "; the forward mentions it in a branch that did not run, and the rest of the "
            "model receives gradients and trains"
        )
    yield tl.finding(
        title=f"{len(never)} of {len(trainable)} trainable params had grad None at every "
        f"optimizer step ({describe_groups(groups)})",
        step=steps[0],
        evidence={
            "params_without_grad": len(never),
            "trainable_params": len(trainable),
            "groups": [g for g, _ in groups],
            "observed_steps": steps,
        },
        where=Where(module=module, params=tuple(never_sorted), source=source),
        cause=cause,
        fix=fix,
        severity=severity,
    )


def _later_optimizers_without_backward(
    tl: TimelineView, observations: list, min_observations: int
) -> Iterator[Finding]:
    """Optimizers that first stepped after the run's first observed step and never had a
    backward in the observed steps where they stepped, every param they stepped still None.
    Steps without a backward are not evidence for the run's first observations (a stray
    step() before the first backward); a whole later phase without one is."""
    if not observations:
        return
    optimizers = tl.fact("optimizers") or []
    needed = 1 if ended(tl) else min_observations
    trainable = set(trainable_names(tl))
    norms = tl.series("grads.norm")
    later = tl.fact("grads_seen_later") or {}
    first_observed = observations[0][0]
    stepped = dict(tl.series("grads.stepped"))
    for event in tl.events("optimizer_first_step"):
        index, start = event.get("optimizer"), event.get("step", 0)
        if start <= first_observed or not isinstance(index, int) or index >= len(optimizers):
            continue
        opt = optimizers[index]
        held = {n for g in opt["groups"] for n in g["params"] if n in trainable}
        seen = [
            (s, set(n) & held)
            for s, n in observations
            if s >= start and held & set(stepped.get(s) or ())
        ]
        if len(seen) < needed or any(tl.at("backward.count", s, 0) for s, _ in seen):
            continue
        # Every param it stepped was None at each of its observed steps, and none of them had
        # a gradient on any step (sampled norms, or a later gradient followed).
        names: set[str] = set()
        for s, none in seen:
            this = held & set(stepped[s])
            if not this <= none:
                break
            names |= this
        else:
            # A gradient from its first step on (a sampled norm, or one followed later).
            gradient = {n for s, ns in norms if s >= start for n in ns}
            gradient |= {n for n, s in later.items() if s >= start}
            if names and not names & gradient:
                yield _no_backward_finding(tl, index, start, optimizers[index], names, seen, event)


_BACKWARD_MISSING = "loss.backward() is missing before optimizer.step()"
_WHY_MISSING = "commented out, or in a branch that never runs"
_CALL_BACKWARD = "call loss.backward() after computing the loss and before optimizer.step()"


def _no_backward_finding(tl, index, start, opt, names, seen, event) -> Finding:
    all_names = list((tl.fact("params") or {}).keys())
    trainable = trainable_names(tl)
    never_sorted = sorted(names)
    groups = group_params(never_sorted, all_names)
    label = groups[0][0]
    module = label if len(groups[0][1]) > 1 else label.rsplit(".", 1)[0]
    built = optimizer_source(opt)
    steps = [s for s, _ in seen]
    return tl.finding(
        title=f"{len(names)} params had grad None at every step of opt{index} "
        f"({describe_groups(groups)}): no backward() ran before its step()",
        step=steps[0],
        evidence={
            "params_without_grad": len(names),
            "trainable_params": len(trainable),
            "groups": [g for g, _ in groups],
            "optimizer": f"opt{index}",
            "optimizer_first_step": start,
            "backward_passes": 0,
            "observed_steps": steps,
        },
        where=Where(module=module, params=tuple(never_sorted), source=event.get("source")),
        cause=(
            f"no backward() ran in any observed step in which opt{index} "
            f"({opt.get('class', 'optimizer')}"
            + (f", built at {built}" if built else "")
            + f") stepped, from its first step ({start}) on: its step() finds every gradient "
            f"None and changes nothing. {_BACKWARD_MISSING} in this phase ({_WHY_MISSING})"
        ),
        fix=_CALL_BACKWARD,
    )


def _never_called(groups, calls, all_names, cleared, tl) -> bool:
    """Every group of params without grad belongs to a module that forward never called but
    mentions (and no zero_grad between backward and step, no graphless loss explains them)."""
    if calls is None or (cleared and all(set(n) <= cleared for _, n in groups)):
        return False
    if graphless_loss_events(tl):
        return False
    referenced = set(tl.fact("modules_unrun_referenced") or ())
    for label, names in groups:
        module = label if label in calls or len(names) > 1 else label.rsplit(".", 1)[0]
        if calls.get(module) is not None or module not in referenced:
            return False
    return True


def _cause(tl, module, names, cleared, calls):
    if cleared and set(names) <= cleared:
        return (
            "their gradients were computed in backward() but were None again when "
            "optimizer.step() ran: zero_grad() (or p.grad = None) is called between backward() "
            "and step()",
            "call optimizer.zero_grad() before the forward pass (or right after step()), never "
            "between backward() and step()",
            step_source(tl),
        )
    if (
        not tl.signal_names("backward.count")
        and not tl.events("backward_call")
        and tl.events("optimizer_step")
        and not got_gradient(tl)
    ):
        # Steps were taken and no backward ran in the whole run, nor had any param a gradient.
        return (
            "no backward() ran in any step: optimizer.step() finds every gradient None and "
            f"changes nothing. {_BACKWARD_MISSING} ({_WHY_MISSING})",
            _CALL_BACKWARD,
            step_source(tl),
        )
    graphless = graphless_loss_events(tl)
    if graphless:
        return (
            "the loss has no autograd graph (TD101), so backward() reaches no parameter",
            "fix TD101 first: compute the loss from the model output without detaching it",
            graphless[0].get("source"),
        )
    if calls is None:
        return (
            "backward() never reaches them: they are not used by the loss",
            "use the module's output in the loss, or freeze it with requires_grad_(False)",
            None,
        )
    info = calls.get(module)
    if info is None:
        return (
            f"module `{module}` is never called in forward during the observed steps: it is "
            "defined but unused, or its branch is switched off",
            f"call `{module}` in forward and use its output in the loss, or remove it / freeze it "
            f"with {module}.requires_grad_(False)",
            None,
        )
    where = f" (called at {info['source']})" if info.get("source") else ""
    if not info.get("grad_enabled"):
        return (
            f"module `{module}` runs{where} with gradient recording off (inside torch.no_grad() "
            "or inference_mode), so its params never get a gradient",
            f"run `{module}` outside torch.no_grad() if it should train, or freeze it with "
            f"{module}.requires_grad_(False) if it should not",
            info.get("source"),
        )
    if info.get("output_requires_grad"):
        return (
            f"module `{module}` runs{where} and its output carries a graph, but nothing from it "
            "reaches the loss: the output is left out of the loss, or detached (.detach(), .data, "
            ".item()) on the way",
            f"add `{module}`'s output to the loss (e.g. loss = main + w * aux), or freeze it with "
            f"{module}.requires_grad_(False) if it is not meant to train",
            info.get("source"),
        )
    return (
        f"module `{module}` runs{where} but its output has no graph although its params require "
        "grad: the params are read through .data or a detached copy",
        f"use `{module}`'s parameters directly (not .data / .detach()) in its forward",
        info.get("source"),
    )
