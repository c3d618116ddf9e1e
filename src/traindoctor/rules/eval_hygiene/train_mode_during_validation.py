"""TD403 train-mode-during-validation."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from .._util import common_module

# Gradient-free runs of one model in this many consecutive steps (and in no others): a pass
# of each training step, not a validation between epochs.
PER_STEP = 5


@rule(
    code="TD403",
    name="train-mode-during-validation",
    severity=Severity.WARNING,
    summary="Validation forward passes run with BatchNorm/Dropout in train mode.",
    requires=(),
    events=("validation_in_train_mode", "put_in_eval", "loss_without_grad", "model_feeds"),
    priority=38,
)
def train_mode_during_validation(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Validation forward passes (a run of forward passes of a watched model with gradients
    disabled, between two training steps, or any forward inside `doc.validating()`) made while
    BatchNorm or Dropout modules of that model are in train mode. Names the modules and the
    line of the forward call. Also a validation whose forwards drop out through
    `F.dropout(x, p)` with `training` left at its default True (no Dropout module; `eval()`
    does not reach it), at the F.dropout line; a call that writes `training=True` keeps
    dropout on on purpose and is not reported.

    ## Why it matters
    In train mode BatchNorm normalizes each validation batch with its own statistics and
    *updates its running statistics with validation data*; Dropout drops units at random. The
    metrics are noisy and pessimistic, and the running statistics the model will be deployed
    with drift toward the validation set (small validation batches make it worse).

    ## How it is measured
    A forward hook on each watched model checks `torch.is_grad_enabled()` (the only cost on a
    training forward). A validation is two or more gradient-free forwards without a backward
    in between, or any forward inside `doc.validating()`; one gradient-free forward per step
    (pseudo-labels, a teacher pass on the same model) is not counted, nor are gradient-free
    forwards between a training forward and its backward (a target network's passes whose
    output that step's loss reads: BYOL, MoCo). For those, the `training` flag of the model's
    mode-sensitive modules is read. A model that no optimizer trains (a teacher or target
    copy) whose gradient-free runs come in at least half the steps from the first to the last
    reported (at least `PER_STEP` of them: every step, or every other one when labeled and
    unlabeled batches alternate) is part of the training step (a mean teacher on two views
    before the student's forward), not validated between epochs, and is not reported; nor
    are a copy's train-mode passes in a step where the user then set its mode (a BN
    re-estimation by hand, then `.eval()`).

    A watched model whose training outputs are the inputs of another watched model's training
    forward (in the first steps each training forward's inputs are compared by memory address
    with the other models' last outputs still alive: a generator's images, or their
    `.detach()`, given to its discriminator) is info when nothing shows an evaluation of it:
    its gradient-free forwards are samples (for logging, or the discriminator's fake batch)
    computed as its training forwards are, with batch statistics.

    An unwatched copy of a watched model (an EMA deep-copied from it) is followed too: found
    in the heap at the first evaluation (a watched model's `.eval()` or gradient-free forward,
    an `inference_mode` region; zero-code mode also at attach): the same class, the same
    parameter names and shapes, no param held by an optimizer or with a gradient. Its
    gradient-free forwards in steps where its BatchNorm or Dropout modules are in train mode
    are reported the same way, unless the user set its mode (`.eval()`/`.train()`) since it
    was found (a BN re-estimation like `update_bn` sets it).

    ## Example
    ```python
    with torch.no_grad():                  # no model.eval()
        for x, y in val_loader:
            val_loss += criterion(model(x), y)
    ```

    ## Fix
    ```python
    with doc.validating(model):            # eval mode + no_grad, modes restored after
        for x, y in val_loader:
            val_loss += criterion(model(x), y)
    ```

    What the gradient-free forwards were for is said only where the run shows it: they are
    called a validation (an evaluation, for a copy) inside `doc.validating()`, when the user
    puts that model (for a copy, the model it copies) in eval mode elsewhere in the run, or
    when a loss is computed with gradients off in the same step. Otherwise they are described
    as measured, gradient-free forwards in train mode: a policy acting in an environment or a
    generator sampled for images runs them too. A watched model's such forwards are still a
    warning (whatever they are for, what they computed is not what the model computes in eval
    mode, and BatchNorm's running statistics moved); an unwatched copy's are info (a copy kept
    in train mode and only ever run so, a PPO behaviour policy or an EMA generator sampled
    with batch statistics, is consistent by itself).

    ## Known misses
    An EMA copy (no optimizer holds it) validated in train mode after every single step looks
    like a teacher pass and is not reported; nor is a copy made after the run's first
    evaluation, or one called with gradients on.

    ## Known false positives
    Test-time augmentation or Monte-Carlo dropout that keeps Dropout active on purpose; BN
    adaptation methods that re-estimate statistics on the target data.
    """
    every = _validations(tl.events("validation_in_train_mode"))
    signs = _Signs(tl)
    copies = [e for e in every if e.get("copy_of")]
    if copies:
        yield _copy(tl, copies, signs)
    events = [e for e in every if not e.get("copy_of")]
    if not events:
        return
    # A model whose training outputs are the inputs of another watched model (a generator's
    # images go to its discriminator), with nothing in the run that shows an evaluation:
    # its gradient-free forwards are samples, computed as its training forwards are.
    fed = {e.get("model"): e.get("into") for e in tl.events("model_feeds")}
    samplers = {m for m in {e.get("model") for e in events} if m in fed and not signs.of(events, m)}
    loud = [e for e in events if e.get("model") not in samplers]
    first = (loud or events)[0]
    evaluated = signs.of(events, first.get("model"))
    if first.get("functional_dropout") and not first.get("modules"):
        yield _functional(tl, first, len(events), evaluated)
        return
    names = first.get("modules") or []
    count = first.get("count", len(names))
    shown = ", ".join(f"`{n}`" for n in names[:5]) + (f" and {count - 5} more" if count > 5 else "")
    at = f" at {first['source']}" if first.get("source") else ""
    model = first.get("model")
    if evaluated:
        title = (
            f"Validation of `{model}` ran with {count} BatchNorm/Dropout module(s) in train mode"
        )
        cause = (
            f"Gradient-free forward passes{at} (a validation: {evaluated}) ran while {shown} were "
            "in train mode: BatchNorm used per-batch statistics and updated its running "
            "statistics with validation data, and Dropout was active."
        )
        fix = (
            "Put the model in eval mode for validation and back after: `with "
            "doc.validating(model):` does both (`model.eval()` ... `model.train()` by hand)."
        )
    elif not loud:
        into = fed[model]
        title = (
            f"Gradient-free forwards of `{model}` (its training outputs feed `{into}`) ran "
            f"with {count} BatchNorm/Dropout module(s) in train mode"
        )
        cause = (
            f"Gradient-free forward passes{at} ran while {shown} were in train mode. In "
            f"training, `{model}`'s outputs are the inputs of `{into}` (a generator's samples "
            "given to its discriminator), and nothing in the run evaluates it in eval mode "
            "(no `.eval()`, no loss computed with gradients off, no `doc.validating()`): "
            "these forwards computed what its training forwards compute, with batch "
            "statistics, as samples for logging or for the other model do. Only BatchNorm's "
            "running statistics, which nothing in this run reads, moved with them."
        )
        fix = (
            f"Nothing to fix for sampling as trained. If `{model}` is later used in eval mode "
            "(exported, or evaluated with its running statistics), sample it inside `with "
            f"doc.validating({model}):` or re-estimate BatchNorm's statistics first."
        )
    else:
        title = (
            f"Gradient-free forwards of `{model}` between training steps ran with {count} "
            "BatchNorm/Dropout module(s) in train mode"
        )
        cause = (
            f"Gradient-free forward passes{at}, outside any training step's loss, ran while "
            f"{shown} were in train mode (what they were for, an evaluation, actions in an "
            "environment or samples, the run does not show): BatchNorm normalized each of "
            "their batches with its own statistics and updated its running statistics with "
            "them, and Dropout dropped units, so what they computed is not what the model "
            "computes in eval mode."
        )
        fix = (
            "Run these forwards in eval mode and switch back after: `with "
            "doc.validating(model):` does both (`model.eval()` ... `model.train()` by hand); "
            "keep train mode only where batch statistics or dropout are meant there."
        )
    yield tl.finding(
        title=title,
        severity=None if loud else Severity.INFO,
        step=first["step"],
        evidence={
            "model": model,
            "outputs_feed": None if loud else fed[model],
            "modules_in_train_mode": names[:20],
            "count": count,
            "validations_affected": len(events),
            "inside_doc_validating": bool(first.get("validating")),
            "forward_call": first.get("source"),
            "evaluation_shown_by": evaluated or None,
        },
        where=Where(
            module=common_module([f"{n}.x" for n in names]) or model,
            source=first.get("source"),
        ),
        cause=cause,
        fix=fix,
    )


class _Signs:
    """What in the run shows that gradient-free forwards evaluated a model: forwards inside
    `doc.validating()`, the model put in eval mode by the user somewhere in the run, a loss
    computed with gradients off in a step of those forwards."""

    def __init__(self, tl: TimelineView) -> None:
        self.put_in_eval = {e.get("model") for e in tl.events("put_in_eval")}
        self.loss_steps = {e["step"] for e in tl.events("loss_without_grad")}

    def of(self, events: list[dict], model: object) -> str:
        """A short reason ('' when nothing shows it)."""
        if any(e.get("validating") for e in events):
            return "inside doc.validating()"
        if model in self.put_in_eval:
            model_name = "the model" if model == "<model>" else f"`{model}`"
            return f"{model_name} is put in eval mode elsewhere in the run"
        if any(e["step"] in self.loss_steps for e in events):
            return "a loss is computed with gradients off in the same step"
        return ""


def _copy(tl: TimelineView, events: list[dict], signs: _Signs) -> Finding:
    """An unwatched copy of a watched model (an EMA) run without gradient in train mode."""
    first = events[0]
    name, of = first.get("model"), first.get("copy_of")
    model = "the model" if of == "<model>" else f"`{of}`"
    names = first.get("modules") or []
    count = first.get("count", len(names))
    shown = ", ".join(f"`{n}`" for n in names[:5]) + (f" and {count - 5} more" if count > 5 else "")
    steps = sorted({e["step"] for e in events if e.get("model") == name})
    at = f" at {first['source']}" if first.get("source") else ""
    mine = [e for e in events if e.get("model") == name]
    evaluated = signs.of(mine, of)
    if evaluated:
        title = (
            f"`{name}`, an unwatched copy of {model}, was evaluated with {count} "
            "BatchNorm/Dropout module(s) in train mode"
        )
        use = f"evaluated ({evaluated.replace('the model', model)})"
    else:
        title = (
            f"`{name}`, an unwatched copy of {model}, ran gradient-free forwards with {count} "
            "BatchNorm/Dropout module(s) in train mode"
        )
        use = "run (to evaluate, act or sample: the run does not show which)"
    return tl.finding(
        title=title,
        severity=None if evaluated else Severity.INFO,
        step=first["step"],
        evidence={
            "model": name,
            "copy_of": of,
            "modules_in_train_mode": names[:20],
            "count": count,
            "steps_evaluated_in_train_mode": steps[:20],
            "evaluations_affected": len(steps),
            "mode_set_by_user": False,
            "forward_call": first.get("source"),
            "evaluation_shown_by": evaluated or None,
        },
        where=Where(module=name, source=first.get("source")),
        cause=(
            f"`{name}` has the class and parameter shapes of {model}, no optimizer holds its "
            f"params, and it ran gradient-free forwards{at} in {len(steps)} step(s) while "
            f"{shown} were in train mode; its mode was never set since it was found (a "
            "`copy.deepcopy` keeps the mode of the model it copies, train). It was "
            f"{use}. In train mode BatchNorm normalized each of those batches with that "
            "batch's statistics (and updated the copy's running statistics with them) and "
            "Dropout dropped units, so what was computed from the copy is not what the copy "
            "computes in eval."
        ),
        fix=(
            "Put the copy in eval mode once after making it (`ema = "
            "copy.deepcopy(model).eval()`, as timm's ModelEmaV2 and YOLO's ModelEMA do; it is "
            "never trained), or evaluate it inside `with doc.validating(copy):`"
            + (
                "."
                if evaluated
                else "; keep train mode only where batch statistics or dropout are meant there."
            )
        ),
    )


def _validations(events: list[dict]) -> list[dict]:
    """The events of the models validated between steps: a model no optimizer trains whose
    gradient-free runs were seen in at least half the steps of their span, `PER_STEP` or more
    (every one of its events), runs inside the training step, a teacher or target whose
    output the loss reads."""
    # A copy's mode set by the user in the step of its train-mode passes (a BN re-estimation
    # by hand, then `.eval()`): those passes were deliberate.
    marked = {(e.get("model"), e["step"]) for e in events if e.get("mode_set_after")}
    events = [
        e
        for e in events
        if not e.get("mode_set_after") and (e.get("model"), e["step"]) not in marked
    ]
    steps: dict[object, list[int]] = {}
    for e in events:
        steps.setdefault(e.get("model"), []).append(e["step"])
    for e in events:
        if e.get("trained", True):
            steps.pop(e.get("model"), None)  # a model an optimizer trains: validated
    # Runs in at least half the steps of their span: part of the training step (a teacher on
    # every step, or on every other one when labeled and unlabeled batches alternate), not an
    # evaluation between epochs.
    per_step = {
        m
        for m, ss in steps.items()
        if len(set(ss)) >= PER_STEP and 2 * len(set(ss)) >= max(ss) - min(ss) + 1
    }
    # Inside doc.validating() the user said it is a validation.
    return [e for e in events if e.get("validating") or e.get("model") not in per_step]


def _functional(tl: TimelineView, first: dict, validations: int, evaluated: str) -> Finding:
    """Dropout through `F.dropout` in gradient-free forwards (a validation where `evaluated`
    says why): the call's `training` was True with gradients off, whatever mode the model was
    in."""
    fd = first["functional_dropout"]
    line = fd.get("source")
    at = f" at {line}" if line else ""
    default = bool(fd.get("default"))
    why = (
        "`training` is left at its default, True, so it drops whatever mode the model is in"
        if default
        else "its `training` argument was True"
    )
    what = "Validation" if evaluated else "Gradient-free forwards"
    return tl.finding(
        title=f"{what} of `{first.get('model')}` ran with dropout on: F.dropout(p="
        f"{fd.get('p', 0):g}){at} drops in its gradient-free forwards",
        step=first["step"],
        evidence={
            "model": first.get("model"),
            "functional_dropout": fd,
            "validations_affected": validations,
            "inside_doc_validating": bool(first.get("validating")),
            "forward_call": first.get("source"),
        },
        where=Where(module=first.get("model"), source=line),
        cause=f"Gradient-free forward passes ({f'a validation: {evaluated}; ' if evaluated else ''}"
        f"called at {first.get('source')}) ran through F.dropout{at} with dropout on: {why}. "
        + (
            "Validation losses and metrics are noisy and pessimistic, and predictions are random."
            if evaluated
            else "Their outputs are random, not what the model computes in eval mode."
        ),
        fix="pass the module's mode: `F.dropout(x, p, training=self.training)` (or use an "
        "nn.Dropout module), and validate in eval mode",
    )
