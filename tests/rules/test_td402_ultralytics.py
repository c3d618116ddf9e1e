"""TD402 in Ultralytics' words: the trainer sets train mode once per epoch, so a training
callback's `.eval()` lasts the epoch. Hand-built timelines with the integration's facts."""

from __future__ import annotations

from traindoctor.testing import assert_fires, make_timeline

from ._ultralytics import facts

CALL = {
    "kind": "mode_call",
    "step": 2,
    "module": "<model>",
    "root": True,
    "training": False,
    "validating": False,
    "source": "train.py:11",
}


def _tl(recorded=None):
    eval_at = {"eval": ["model.0.bn", "model.1.bn"], "count": 2, "sensitive": 2}
    steps = {
        1: {"modes.eval_at_step": {"eval": [], "count": 0, "sensitive": 2}},
        2: {"modes.eval_at_step": {**eval_at, "roots_training": {"<model>": False}}},
    }
    return make_timeline(
        params=["model.0.conv.weight"],
        steps=steps,
        events=[CALL],
        facts={"modes": {"steps_in_eval": 11}, **(recorded or {})},
    )


def test_names_the_epoch_start_and_the_users_batch_callbacks():
    recorded = facts(
        user_callbacks={
            "on_train_batch_end": ["peek_at_predictions (train.py:9)"],
            "on_fit_epoch_end": ["not_a_batch_callback (train.py:20)"],
        }
    )
    f = assert_fires("TD402", _tl(recorded))
    assert f.where.source == "train.py:11" and f.where.module == "<model>"
    assert (
        " Ultralytics puts the model in train mode only at the start of each epoch "
        "(`trainer._model_train()`): a callback that calls `.eval()` during an epoch leaves "
        "it in eval mode until the next one. Your training callbacks: `on_train_batch_end`: "
        "peek_at_predictions (train.py:9)."
    ) in f.cause
    assert "not_a_batch_callback" not in f.cause
    assert f.fix.startswith("Restore the mode in the same callback (`was = m.training; m.eval()")
    assert f.severity.value == "error"


def test_without_user_callbacks_the_epoch_note_alone():
    f = assert_fires("TD402", _tl(facts()))
    assert f.cause.endswith("leaves it in eval mode until the next one.")


def test_plain_wording_without_ultralytics_facts():
    plain = assert_fires("TD402", _tl())
    assert "Ultralytics" not in plain.cause and "trainer.ema.ema" not in plain.fix
    worded = assert_fires("TD402", _tl(facts()))
    assert worded.cause.startswith(plain.cause) and worded.fix.endswith(f"({plain.fix})")
