"""TD405 evaluated-model-frozen."""

from __future__ import annotations

from collections.abc import Iterator

from ...findings import Finding, Severity, Where
from ...timeline import TimelineView
from .._registry import rule
from . import _ultralytics as ultralytics

MIN_VALIDATIONS = 3
# A copy run in more than half of the steps it spans is part of each training step (a DQN
# target network, a teacher): its syncs may lie beyond a short run. Evaluations run at an
# epoch cadence, far below it.
MAX_CALLED_SHARE = 0.5
TRAINED = "<trained>"


@rule(
    code="TD405",
    name="evaluated-model-frozen",
    severity=Severity.ERROR,
    summary="The model being validated never changes while the trained model does.",
    requires=(
        "modes.validated_fingerprint",
        "modes.trained_fingerprint",
        "loss.val",
        "copies.evaluated",
    ),
    events=("validated_model",),
    facts=("copies", "ultralytics"),
    priority=20,
)
def evaluated_model_frozen(tl: TimelineView) -> Iterator[Finding]:
    """
    ## What it detects
    Across several `doc.validating(model)` calls, the evaluated model's parameters are
    bit-identical every time while the trained model's parameters change: the validation
    looks at a copy that is never updated (an EMA whose `update()` is never called or is
    called on another object, a `copy.deepcopy` taken once, a checkpoint loaded once).

    ## Why it matters
    Every validation number describes the same frozen weights: the validation loss is
    constant to the last digit and metrics never move, so model selection, early stopping and
    learning-rate schedules driven by them are blind. Training may be fine; the report of it
    is not.

    ## How it is measured
    When `doc.validating(model)` starts, the per-parameter norms of the evaluated model and of
    the watched models are taken with one fused norm each and read back with the step's other
    values (no extra sync). Fires when the evaluated model's fingerprint is bit-identical over
    at least 3 validations while the trained models' fingerprint changed.

    ## Example
    ```python
    ema = copy.deepcopy(model)
    ...
    optimizer.step()
    # ema.update(model) is missing
    with doc.validating(ema):
        val_loss = criterion(ema(x_val), y_val)
    ```

    ## Fix
    ```python
    optimizer.step()
    ema.update(model)                      # after every optimizer step
    ```

    In zero-code mode (`traindoctor run`, no `doc.validating()`), the copies are found by
    measurement: at the first backward, modules whose parameters are bit-identical to the
    trained model's (a `copy.deepcopy`, a `load_state_dict`) are followed. Each run of their
    forward calls without gradient (or in eval mode) that starts after a step without one is
    an evaluation; the copy's and the trained model's summed parameter norms are taken
    then. Fires when a copy was evaluated at least 3 times, in at most half of the steps
    between its first and last evaluation, with bit-identical norms every time while the
    trained model's changed.

    Under Ultralytics, when a callback runs a validation (`model.val()` at `on_fit_epoch_end`),
    the finding says that `model.val()` validates a copy of `YOLO.model`, which for a
    `YOLO("....yaml")` is not the model the trainer trains (it builds and trains a new one): read
    `trainer.metrics` or `trainer.validator.metrics`, or validate `trainer.validator(trainer)` (the
    EMA) or `trainer.model`.

    ## Known false positives
    Evaluating a fixed reference model (a baseline or teacher) on purpose with
    `doc.validating(reference)`, or, in zero-code mode, a copy of the initial model kept on
    purpose and evaluated every epoch as a baseline. A target network or teacher used in
    every training step is not an evaluation and is not reported.
    """
    evaluated = [fp for _, fps in tl.series("modes.validated_fingerprint") for fp in fps]
    trained = [fp for _, fps in tl.series("modes.trained_fingerprint") for fp in fps]
    events = tl.events("validated_model")
    if len(events) == len(evaluated) and len({_model_key(e) for e in events}) > 1:
        # Several models validated in one run (an EMA every epoch, and a copy that a callback
        # validates): each is judged on its own validations.
        for key in dict.fromkeys(_model_key(e) for e in events):
            pairs = [(e, fp) for e, fp in zip(events, evaluated) if _model_key(e) == key]
            yield from _judge(
                tl,
                [fp for _, fp in pairs],
                trained,
                [e for e, _ in pairs if not e.get("is_trained_model")],
            )
        return
    yield from _judge(tl, evaluated, trained, [e for e in events if not e.get("is_trained_model")])
    if not events:
        yield from _judge_copies(tl)


def _judge_copies(tl: TimelineView) -> Iterator[Finding]:
    """Zero-code mode: copies of the trained model that the script evaluates without a
    doc.validating() call (an EMA built before the loop, run under no_grad each epoch)."""
    copies = (tl.fact("copies") or {}).get("modules") or {}
    if not copies:
        return
    fps = tl.series("copies.evaluated")
    for name, record in copies.items():
        occasions = record.get("occasions") or []
        if len(occasions) < MIN_VALIDATIONS:
            continue
        first, last = record.get("first_step"), record.get("last_step")
        span = last - first + 1 if first is not None and last is not None else 0
        if not span or record.get("steps_called", 0) > span * MAX_CALLED_SHARE:
            # Run in (nearly) every step: part of the training computation (a target network,
            # a teacher), whose sync may simply come later than this run; not an evaluation.
            continue
        evaluated = [v[name] for _, v in fps if name in v]
        trained = [v[TRAINED] for _, v in fps if name in v and TRAINED in v]
        if len(evaluated) < MIN_VALIDATIONS or any(fp != evaluated[0] for fp in evaluated):
            continue
        if len(trained) < 2 or all(fp == trained[0] for fp in trained):
            continue
        of = record.get("of") or "<model>"
        model = "the model" if of == "<model>" else f"`{of}`"
        label = f"a {record.get('class', 'module')} copy of {model}"
        steps = occasions[:20]
        found = tl.finding(
            title=f"The evaluated copy ({label}) never changed over {len(evaluated)} "
            "evaluations while the trained model did",
            step=occasions[MIN_VALIDATIONS - 1],
            evidence={
                "validated_model": name,
                "evaluations": len(evaluated),
                "evaluation_steps": steps,
                "steps_called": record.get("steps_called"),
                "steps_spanned": span,
                "copied_params": record.get("copied_params"),
                "trained_model_changed": True,
            },
            where=Where(module=None, source=record.get("source")),
            cause=(
                f"{label[0].upper()}{label[1:]} (bit-identical to it when training started) is "
                f"run without gradient at steps {occasions[0]}..{occasions[-1]}, once every few "
                "steps like an evaluation, and its parameters are exactly the same every time "
                "while the trained model's change: it is never updated (an EMA whose update() "
                "is not called, a deepcopy taken once), so every number computed from it "
                "describes the initial weights."
            ),
            fix=(
                "Update the copy after each optimizer step (e.g. `ema.update(model)`), or "
                "evaluate the trained model itself."
            ),
        )
        yield ultralytics.evaluated_model_frozen(tl, found)  # Ultralytics' words where it trained


def _model_key(event: dict) -> tuple:
    return (event.get("model"), event.get("params"))


def _judge(
    tl: TimelineView, evaluated: list, trained: list, models: list[dict]
) -> Iterator[Finding]:
    if len(evaluated) < MIN_VALIDATIONS or len(models) < MIN_VALIDATIONS:
        return
    if any(fp != evaluated[0] for fp in evaluated):
        return
    if len(trained) < 2 or all(fp == trained[0] for fp in trained):
        return  # nothing trained either: not this rule's business (TD104/TD105)
    name = models[-1].get("model")
    steps = [e["step"] for e in models]
    val_losses = [v for _, vs in tl.series("loss.val") for v in (vs or [])]
    constant_loss = len(val_losses) >= 2 and len(set(val_losses)) == 1
    found = tl.finding(
        title=f"The validated model ({name}) never changed over {len(evaluated)} validations",
        step=steps[MIN_VALIDATIONS - 1],
        evidence={
            "validated_model": name,
            "validations": len(evaluated),
            "validation_steps": steps[:20],
            "evaluated_params": models[-1].get("params"),
            "trained_model_changed": True,
            "validation_loss_constant": constant_loss,
        },
        where=Where(module=None if " " in name else name, source=models[0].get("source")),
        cause=(
            f"Every validation (steps {steps[0]}..{steps[-1]}) evaluated {name} with exactly "
            "the same parameters while the trained model changed: it is a copy that is never "
            "updated (an EMA whose update is not called, a deepcopy taken once)."
            + (" The validation loss is bit-constant too." if constant_loss else "")
        ),
        fix=(
            "Update the copy after each optimizer step (`ema.update(model)`), or validate the "
            "trained model itself."
        ),
    )
    yield ultralytics.evaluated_model_frozen(tl, found)  # Ultralytics' words where it trained
