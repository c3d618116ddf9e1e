"""TD105 optimizer-never-steps."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule


@rule(
    code="TD105",
    name="optimizer-never-steps",
    severity=Severity.ERROR,
    summary="backward() keeps running but optimizer.step() does not (or only ran at the start).",
    requires=("backward.count", "optim.step", "optim.any_step", "amp.skipped", "data.inputs"),
    events=("backward_call", "hand_step", "optimizer_step", "idle_backward"),
    facts=("optimizer_activity", "optimizers", "models", "unwatched_optimizers", "modes"),
    priority=12,
)
def optimizer_never_steps(
    tl: TimelineView, *, min_backward: int = 8, accumulation_margin: int = 4
) -> Iterator[Finding]:
    """
    ## What it detects
    Backward passes that are never followed by `optimizer.step()`: the optimizer never steps,
    or stepped on the first batch(es) and then stopped.

    ## Why it matters
    Gradients are computed (and, without `zero_grad()`, pile up) but never applied: the model
    stays where it was, while the training loss is still logged. A `step()` placed inside a
    debug-only `if`, or indented into a branch that stops being true, does exactly this.

    ## How it is measured
    traindoctor counts backward passes per optimizer step. It fires when the backward passes
    since the last step reach `accumulation_margin` times the most backward passes that ever
    preceded one step (gradient accumulation is legitimate), and at least `min_backward`. Steps
    that a GradScaler skipped count as steps.

    A loop without a torch optimizer that updates the weights itself (`p.data.add_(p.grad,
    alpha=-lr)`, `p -= lr * p.grad` under `torch.no_grad()`) steps too: an in-place write of
    the params that got a gradient, between two backward passes, with no optimizer step in
    between, is a step (`optim.hand_step`). Only when nothing updates them does this fire.

    At the 8th, 16th, 32nd, ... backward pass without a step, traindoctor measures which
    watched params that require grad the pass gave a gradient (`idle_backward`). When none
    did, the passes after the last step train another model (a student after its teacher,
    updated by hand or by an optimizer not passed to `td.watch`): that is an info, not a
    missing step.

    At the same backward passes it reads what the gradients are for: when every watched model
    was in eval mode, or the graph reached a tensor that requires grad and is no parameter (an
    input given `requires_grad`) after the optimizer had stepped, the passes evaluate the model
    with gradients (FGSM or PGD examples after training, saliency maps, a Fisher information
    estimate for EWC): an info. An input that requires grad in train mode when no optimizer
    ever stepped is not enough (a MAML loop sets it on its inputs and lost its step): the error.

    ## Example
    ```python
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y) / accum
        loss.backward()
        if epoch == 0 and i == 0:          # debug block
            print(loss.item())
            optimizer.step()               # indented into the debug block
            optimizer.zero_grad()
    ```

    ## Fix
    ```python
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    Steps of a torch optimizer traindoctor was not given (built after `td.watch`: a student
    trained after its teacher, a test-time adaptation with its own `SGD`) are seen too: when
    one steps during these backward passes, the training goes on under an optimizer that is
    not watched, and this is only an info that names it. With several optimizers, one that
    stopped while every model it holds stayed in eval mode, trained by no optimizer, from its
    last step on (a teacher trained first, then used by a student's loss with requires_grad
    left on) ended its phase: an info that says its backward work is wasted.

    ## Known false positives
    Gradient accumulation over `min_backward` or more micro-batches before the first step:
    it is fine once a step has been seen; raise `min_backward` for very long accumulations.
    """
    if "backward.count" not in tl.signal_names("backward.count"):
        return
    yield from _idle_optimizers(tl, min_backward, accumulation_margin)
    # Steps of any watched optimizer count: when the one that numbers the steps stops, the
    # others may go on (layer-wise optimizers trained one after the other, as forward-forward).
    # The last step and the backward passes since are read back from the newest records (a
    # few steps in a run that steps), not from the start (issue 15).
    last = _last_step(tl)
    since = sum(c for s, c in tl.series_since("backward.count", last))
    if since < min_backward:
        return  # below any threshold: the rest (every step) is not read
    counts = dict(tl.series("backward.count"))
    stepped = {s for name in STEPPED for s, v in tl.series(name) if v}
    per_step = [counts.get(s, 0) for s in sorted(stepped)]
    threshold = max(min_backward, accumulation_margin * max(per_step, default=0))
    if since < threshold:
        return
    total = sum(counts.values())
    others = [u for u in tl.fact("unwatched_optimizers") or () if int(u.get("last") or 0) > last]
    if others:
        yield _stepped_elsewhere(tl, others, last, since, total, len(stepped), per_step)
        return
    idle = [e for e in tl.events("idle_backward") if int(e.get("step") or 0) > last]
    if stepped and idle and not any(e.get("fed") for e in idle):
        yield _other_model(tl, idle, last, since, total, len(stepped), per_step)
        return
    # An input gradient in train mode reads as an evaluation after a training phase only: with
    # no step ever taken, the models training and params given gradients, a loop that sets
    # requires_grad on its inputs (MAML's x_tr.requires_grad_(True)) lost its step.
    if idle and all(e.get("training") is False or (e.get("input_grads") and stepped) for e in idle):
        yield _gradient_evaluation(tl, idle, last, since, total, len(stepped), per_step)
        return
    step_events = tl.events("optimizer_step")
    backward_events = tl.events("backward_call")
    by_hand = not tl.fact("optimizers") and not step_events
    severity = Severity.ERROR
    fix = (
        "call optimizer.step() (then zero_grad()) once per accumulation cycle, at the loop "
        "level: `if (i + 1) % accum == 0: optimizer.step(); optimizer.zero_grad()`"
    )
    if by_hand and stepped:
        hand = tl.events("hand_step")
        title = (
            f"the weights were updated by hand {len(stepped)} time(s), the last at step {last}, "
            f"then not once in the following {since} backward passes"
        )
        cause = (
            f"the hand-written update stopped running after step {last}: it sits under a "
            "condition that was true only at the start (a debug or first-batch block, or the "
            "wrong indentation level), so gradients are computed but never applied"
        )
        source = next((e["source"] for e in hand if e.get("source")), None)
        source = source or (backward_events[0]["source"] if backward_events else None)
        fix = "update the weights after every backward pass, at the loop level"
    elif by_hand and not tl.series("data.inputs"):
        # No optimizer given and the watched model never ran: the backward passes are another
        # model's (td.watch(copy_of_model)), whose optimizer traindoctor does not see.
        models = ", ".join(f"`{k}` ({v})" for k, v in (tl.fact("models") or {}).items())
        title = (
            f"{since} backward passes ran, but the watched model ran no forward pass and no "
            "optimizer was given: the model watched is not the one trained"
        )
        cause = (
            f"traindoctor watched {models or 'the model'} without an optimizer: it ran no "
            f"forward pass during the {since} backward passes, and no in-place update of its "
            "params was seen. The backward passes belong to another model (a copy, another "
            "variable); whether that model's optimizer steps is not measured"
        )
        source = backward_events[0]["source"] if backward_events else None
        fix = (
            "pass the model the loop trains, and its optimizer: td.watch(model, optimizer) "
            "with the object whose forward computes the loss"
        )
        severity = Severity.WARNING
    elif by_hand:
        title = (
            f"{since} backward passes and the weights were never updated: no optimizer was "
            "given to traindoctor, and no param that gets a gradient was changed in place"
        )
        cause = (
            "the watched model ran, but nothing seen applied its gradients (no optimizer was "
            "given, no `p.data.add_(p.grad, alpha=-lr)` was seen): the update step is missing, "
            "or under a condition that is never true"
        )
        source = backward_events[0]["source"] if backward_events else None
        fix = (
            "build an optimizer and call optimizer.step() after backward(), or update the "
            "weights by hand: `with torch.no_grad(): for p in params: p -= lr * p.grad`; if "
            "the loop has an optimizer, pass it: td.watch(model, optimizer)"
        )
    elif stepped:
        title = (
            f"optimizer.step() ran {len(stepped)} time(s), the last at step {last}, then not once "
            f"in the following {since} backward passes"
        )
        cause = (
            f"optimizer.step() stopped being called after step {last}: the call sits under a "
            "condition that was true only at the start (a debug or first-batch block, or the wrong "
            "indentation level), so gradients are computed but never applied"
        )
        source = step_events[0]["source"] if step_events else None
    else:
        title = f"{since} backward passes and optimizer.step() was never called"
        cause = (
            "optimizer.step() is never reached: it is missing, or under a condition that is never "
            "true (e.g. an accumulation counter that never hits its modulus)"
        )
        source = backward_events[0]["source"] if backward_events else None
    yield tl.finding(
        title=title,
        step=last + 1,
        evidence=_counts(len(stepped), total, since, per_step),
        where=Where(source=source),
        cause=cause,
        fix=fix,
        severity=severity,
    )


def _other_model(
    tl: TimelineView,
    idle: list[dict],
    last: int,
    since: int,
    total: int,
    steps: int,
    per_step: list[int],
) -> Finding:
    """The backward passes since the last step give the watched params no gradient: they
    train something traindoctor does not watch (a student, by hand or by an optimizer of its
    own), not the watched model whose optimizer stopped."""
    measured = ", ".join(str(e.get("backward_since_step")) for e in idle[:4])
    return tl.finding(
        title=(
            f"{since} backward passes after the last step (step {last}) gave the watched "
            "model's params no gradient: they train something traindoctor does not watch"
        ),
        step=last + 1,
        evidence={
            **_counts(steps, total, since, per_step),
            "measured_at_backward": [e.get("backward_since_step") for e in idle[:8]],
            "watched_params_fed": 0,
            "watched_trained_params": idle[-1].get("trained"),
        },
        where=Where(source=_first_source(tl)),
        cause=(
            f"the watched optimizer stopped stepping after step {last}, and the backward "
            f"passes measured since (the {measured}th after it) fed none of the "
            f"{idle[-1].get('trained')} watched params that require grad: a later phase (a "
            "student after its teacher, a model updated by hand or by an optimizer not passed "
            "to td.watch) trains another model. Whether that one learns is not checked"
        ),
        fix=(
            "nothing to fix if the later phase is meant; to have it checked, watch it: close "
            "this doctor and td.watch(new_model, new_optimizer) for the new phase, or run the "
            "script with `traindoctor run`, which follows later phases"
        ),
        severity=Severity.INFO,
    )


def _gradient_evaluation(
    tl: TimelineView,
    idle: list[dict],
    last: int,
    since: int,
    total: int,
    steps: int,
    per_step: list[int],
) -> Finding:
    """The backward passes with no step ran with the models in eval mode, or computed the
    gradient of an input that requires grad: an evaluation that uses gradients (adversarial
    examples, saliency maps, a Fisher information estimate), not a lost optimizer.step()."""
    inputs = any(e.get("input_grads") for e in idle)
    evaluating = all(e.get("training") is False for e in idle)
    measured = []
    if evaluating:
        measured.append("every watched model was in eval mode")
    if inputs:
        measured.append(
            "the graph reached a tensor that requires grad and is no parameter, an input "
            "given `requires_grad`"
        )
    after = f"after the last step (step {last})" if steps else "with no optimizer step at all"
    return tl.finding(
        title=f"{since} backward passes {after} compute gradients for an evaluation, not "
        "for training",
        step=last + 1,
        evidence={
            **_counts(steps, total, since, per_step),
            "measured_at_backward": [e.get("backward_since_step") for e in idle[:8]],
            "models_training": [e.get("training") for e in idle[:8]],
            "input_grads": [e.get("input_grads") for e in idle[:8]],
        },
        where=Where(source=_first_source(tl)),
        cause=(
            f"at the backward passes measured, {' and '.join(measured)}: gradients used to "
            "attack, explain or weigh the model (FGSM/PGD examples, saliency maps, a Fisher "
            "information estimate) need no optimizer step"
        ),
        fix=(
            "nothing to fix if these passes evaluate the model; if they were meant to train "
            "it, call model.train() and optimizer.step() after backward()"
        ),
        severity=Severity.INFO,
    )


def _counts(steps: int, total: int, since: int, per_step: list[int]) -> dict[str, int]:
    """The evidence every TD105 finding gives: steps, backward passes, those since the last
    step, and the most a step had before."""
    return {
        "optimizer_steps": steps,
        "backward_passes": total,
        "backward_since_last_step": since,
        "backward_per_step_before": max(per_step, default=0),
    }


def _first_source(tl: TimelineView) -> str | None:
    backward_events = tl.events("backward_call")
    return backward_events[-1].get("source") if backward_events else None


def _stepped_elsewhere(
    tl: TimelineView,
    others: list[dict],
    last: int,
    since: int,
    total: int,
    steps: int,
    per_step: list[int],
) -> Finding:
    """The backward passes since the last watched step are stepped by optimizers that
    traindoctor was not given: not a missing step, only an optimizer it does not check."""
    kinds = ", ".join(
        f"{u.get('class', 'optimizer')} ({u.get('steps', 0)} steps)" for u in others[:3]
    )
    kinds += " ..." if len(others) > 3 else ""
    after = f"after the last watched step (step {last})" if last else "and no watched step"
    holds = any(u.get("holds_watched") for u in others)
    what = (
        "it holds params of the watched model"
        if holds
        else "it holds none of the watched model's params (it steps another model's)"
    )
    along = [u for u in others if last and int(u.get("first") or 0) <= last]
    if along:
        # It stepped beside the watched one before: a loop that now trains only it, or the
        # watched optimizer's step() under a condition no longer true. Not told apart here.
        phase = (
            f"{along[0].get('class', 'optimizer')}, not passed to td.watch, stepped beside the "
            f"watched optimizer since step {along[0].get('first')} and goes on after it "
            "stopped: either the loop now trains only that optimizer's params, or the watched "
            "optimizer's step() sits under a condition that is no longer true"
        )
    else:
        phase = (
            "another torch optimizer, not passed to td.watch (a later phase: a student, a "
            "fine-tuning or a test-time adaptation), steps after these backward passes"
        )
    return tl.finding(
        title=(
            f"{since} backward passes {after} were stepped by an optimizer not given to "
            f"traindoctor: {kinds}"
        ),
        step=last + 1,
        evidence={
            **_counts(steps, total, since, per_step),
            "unwatched_optimizers": [
                {k: u.get(k) for k in ("class", "steps", "first", "last", "holds_watched")}
                for u in others[:8]
            ],
        },
        where=Where(source=next((u["source"] for u in others if u.get("source")), None)),
        cause=(
            f"the watched optimizer stopped stepping and {phase}; {what}. What it trains is "
            "not checked"
        ),
        fix=(
            "nothing to fix if the later phase is meant; to have it checked, pass it to "
            "td.watch: td.watch(models, [optimizer, other_optimizer]) when it exists at "
            "watch(), else close this doctor and watch the new phase with td.watch(model, "
            "new_optimizer), or run the script with `traindoctor run`, which follows later "
            "phases"
        ),
        severity=Severity.INFO,
    )


STEPPED = ("optim.step", "optim.any_step", "amp.skipped")  # a step ran (or a scaler skipped it)


def _last_step(tl: TimelineView) -> int:
    """The last step that stepped (max of the steps STEPPED marks; 0 if none): each signal
    read back from its newest records, in windows that grow until one marks a step, then the
    others only after it."""
    last = 0
    for name in STEPPED:
        if last:
            last = max([last, *(s for s, v in tl.series_since(name, last) if v)])
            continue
        width = 64
        while True:
            start = tl.last_step - width
            recs = tl.series_since(name, start) if start > 0 else tl.series(name)
            marked = [s for s, v in recs if v]
            if marked or start <= 0:
                last = max(marked, default=0)
                break
            width *= 4
    return last


def _idle_optimizers(
    tl: TimelineView, min_backward: int, accumulation_margin: int
) -> Iterator[Finding]:
    """With several optimizers: one whose params keep getting fresh gradients that it never
    applies (a GAN whose discriminator step was removed, an encoder's optimizer never stepped
    in a seq2seq loop) while the others step."""
    activity = tl.fact("optimizer_activity") or []
    optimizers = tl.fact("optimizers") or []
    if len(activity) < 2 or not any(a.get("steps") for a in activity):
        return
    for oi, a in enumerate(activity):
        pending = int(a.get("pending") or 0)
        threshold = max(min_backward, accumulation_margin * int(a.get("max_pending") or 0))
        if pending < threshold:
            continue
        info = optimizers[oi] if oi < len(optimizers) else {}
        names = [n for g in info.get("groups") or () for n in g.get("params") or () if n]
        modules = sorted({n.rsplit(".", 1)[0] if "." in n else n for n in names})
        held = ", ".join(f"`{m}`" for m in modules[:4]) + (" ..." if len(modules) > 4 else "")
        kind = info.get("class", "optimizer")
        steps = int(a.get("steps") or 0)
        ran = "never ran" if not steps else f"ran {steps} time(s), then stopped"
        resting = _resting(tl, names, int(a.get("since") or 1)) if steps else None
        if resting is not None:
            yield _phase_over(tl, oi, kind, steps, pending, names, held, resting, info)
            continue
        yield tl.finding(
            title=(
                f"{kind} #{oi} (holding {held or 'its params'}) got fresh gradients in "
                f"{pending} backward passes that its step() never applied: step() {ran}"
            ),
            step=int(a.get("since") or 1),
            evidence={
                "optimizer": oi,
                "class": kind,
                "steps": steps,
                "backward_with_fresh_grads_since_last_step": pending,
                "most_before_one_step": int(a.get("max_pending") or 0),
                "other_optimizers_steps": [
                    int(b.get("steps") or 0) for j, b in enumerate(activity) if j != oi
                ],
            },
            where=Where(params=tuple(names[:16]), source=info.get("created_at")),
            cause=(
                f"the gradients of {held or 'these params'} are computed every iteration but "
                f"this optimizer's step() is not called (removed, or under a condition that is "
                "not true), while the other optimizers step: that part of the model never "
                "trains"
            ),
            fix=(
                f"call step() of the optimizer that holds {held or 'these params'} after its "
                "backward pass (and zero_grad() before the next one)"
            ),
        )


def _resting(tl: TimelineView, names: list[str], since: int) -> dict[str, int] | None:
    """{model: the step since which it is in eval mode} when every watched model whose params
    the optimizer holds has been in eval mode, trained by no stepping optimizer, from the step
    after its last step on (facts['modes']['eval_since']): its phase is over (a teacher
    trained first, then used by a student's loss); None otherwise."""
    resting = ((tl.fact("modes") or {}).get("eval_since")) or {}
    roots = [r for r in (tl.fact("models") or {}) if r != "<model>"]
    owners = set()
    for n in names:
        owners.add(next((r for r in roots if n.startswith(f"{r}.")), "<model>"))
    if not owners or not all(o in resting and int(resting[o]) <= since + 1 for o in owners):
        return None
    return {o: int(resting[o]) for o in sorted(owners)}


def _phase_over(
    tl: TimelineView,
    oi: int,
    kind: str,
    steps: int,
    pending: int,
    names: list[str],
    held: str,
    resting: dict[str, int],
    info: dict,
) -> Finding:
    models = ", ".join(f"`{m}` (since step {s})" for m, s in resting.items())
    return tl.finding(
        title=(
            f"{kind} #{oi} stopped after {steps} step(s) while {models} stayed in eval mode: "
            f"its params still got gradients in {pending} backward passes"
        ),
        step=min(resting.values()),
        evidence={
            "optimizer": oi,
            "class": kind,
            "steps": steps,
            "backward_with_fresh_grads_since_last_step": pending,
            "eval_since": resting,
        },
        where=Where(params=tuple(names[:16]), source=info.get("created_at")),
        cause=(
            f"the optimizer holding {held or 'these params'} stepped {steps} time(s); since "
            f"then {models} has been in eval mode at every step and no optimizer trains it, "
            "while the other optimizers step: a phase that is over (a teacher trained first, "
            "then used by the student's loss). Its forward still runs with gradients, so "
            "backward computes gradients for its params that nothing applies"
        ),
        fix=(
            "nothing to fix if its training is over; to save that backward work, "
            "`teacher.requires_grad_(False)` or its forward under `torch.no_grad()`"
        ),
        severity=Severity.INFO,
    )
