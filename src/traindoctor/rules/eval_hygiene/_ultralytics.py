"""TD401, TD402, TD405 (and TD111's inference tensors) in Ultralytics' words: which model its
validation evaluates, when its trainer sets the mode, and the user's callbacks that did it."""

from __future__ import annotations

from ...findings import Finding
from ...timeline import TimelineView
from .._ultralytics import callbacks_text, ultralytics_facts, validations, with_note


def inference_tensors(tl: TimelineView, f: Finding) -> Finding:
    """TD401 (and TD111 when inference tensors were seen): the training validation evaluates
    the EMA, so inference tensors on `trainer.model` come from the user's own callbacks."""
    facts = ultralytics_facts(tl)
    if facts is None:
        return f
    cbs = callbacks_text(facts, ("on_fit_epoch_end", "on_train_epoch_end", "on_val_end"))
    return with_note(
        f,
        note=(
            " Ultralytics' training validation evaluates the EMA (`trainer.ema.ema`), never "
            "`trainer.model`; work done under `torch.inference_mode()` on `trainer.model` "
            "itself (a `fuse()`, as AutoBackend did to the model it was given before it worked "
            "on a copy, a `.half()`, rebuilt layers) gives it inference tensors that the "
            "optimizer does not hold." + (f" Your callbacks: {cbs}." if cbs else "")
        ),
        fix=(
            "In the callback, validate `trainer.ema.ema` or a `copy.deepcopy(trainer.model)`, "
            "or call `trainer.validator(trainer)`; never fuse or cast `trainer.model`."
        ),
    )


def eval_mode_during_training(tl: TimelineView, f: Finding) -> Finding:
    """TD402: the trainer sets train mode once per epoch; name the user's batch callbacks."""
    facts = ultralytics_facts(tl)
    if facts is None:
        return f
    cbs = callbacks_text(
        facts, ("on_train_epoch_start", "on_train_batch_start", "on_train_batch_end")
    )
    return with_note(
        f,
        note=(
            " Ultralytics puts the model in train mode only at the start of each epoch "
            "(`trainer._model_train()`): a callback that calls `.eval()` during an epoch leaves "
            "it in eval mode until the next one."
            + (f" Your training callbacks: {cbs}." if cbs else "")
        ),
        fix=(
            "Restore the mode in the same callback (`was = m.training; m.eval(); ...; "
            "m.train(was)`), or evaluate a copy (`trainer.ema.ema` is one, kept up to date)."
        ),
    )


def evaluated_model_frozen(tl: TimelineView, f: Finding) -> Finding:
    """TD405 when a callback ran a validation: `model.val()` validates `YOLO.model`, which a
    YOLO built from a yaml keeps apart from the model the trainer trains."""
    facts = ultralytics_facts(tl)
    if facts is None or not validations(facts, "callback"):
        return f
    note = ""
    if facts.get("yolo_model_is_trained_model") is False:
        note = (
            " It is the model a callback's validation evaluates (`model.val()` validates a "
            "copy of `YOLO.model`), and `YOLO.model` is not the model the trainer trains: "
            "a `YOLO(...)` built from a yaml keeps its own, untrained model, and "
            "`model.train()` builds and trains a new one, so the callback validates the "
            "untrained model until training ends."
        )
    return with_note(
        f,
        note=note,
        fix=(
            "In the callback, read what Ultralytics validated (`trainer.metrics`, "
            "`trainer.validator.metrics`) or validate what is trained: `trainer.validator(trainer)` "
            "(the EMA) or `trainer.model` (`model.val()` is right only after training)."
        ),
    )


def stale_optimizer_params(tl: TimelineView, f: Finding) -> Finding:
    """TD111 worded as TD401 when the stale params are inference tensors left by a callback."""
    if not tl.events("inference_tensors"):
        return f
    return inference_tensors(tl, f)
