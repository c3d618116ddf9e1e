"""TD405 in Ultralytics' words: a callback's `model.val()` validates `YOLO.model`, which a YOLO
built from a yaml keeps apart from the model the trainer trains. Hand-built timelines with the
integration's facts."""

from __future__ import annotations

from traindoctor.testing import assert_fires, make_timeline

from ._ultralytics import facts, validation

PARAMS = ["model.0.conv.weight", "model.0.conv.bias"]
UNTRAINED = (
    " It is the model a callback's validation evaluates (`model.val()` validates a copy of "
    "`YOLO.model`), and `YOLO.model` is not the model the trainer trains"
)
FIX = (
    "In the callback, read what Ultralytics validated (`trainer.metrics`, "
    "`trainer.validator.metrics`) or validate what is trained: `trainer.validator(trainer)` "
    "(the EMA) or `trainer.model` (`model.val()` is right only after training). ("
)


def _tl(recorded=None):
    steps, events = {}, []
    for i in range(1, 5):
        s = 4 * i
        steps[s] = {
            "modes.validated_fingerprint": [[1.0, 2.0]],
            "modes.trained_fingerprint": [[1.0 + i, 2.0]],
        }
        events.append(
            {
                "kind": "validated_model",
                "step": s,
                "model": "a DetectionModel that is not a watched model",
                "is_trained_model": False,
                "params": 2,
                "source": "train.py:11",
            }
        )
    return make_timeline(params=PARAMS, steps=steps, events=events, facts=recorded)


def _callback_validations():
    return [validation("callback", epoch=e) for e in (1, 2, 3, 4)]


def test_a_callback_validating_the_untrained_yolo_model():
    recorded = facts(validations=_callback_validations(), yolo_model_is_trained_model=False)
    f = assert_fires("TD405", _tl(recorded))
    assert UNTRAINED in f.cause and f.cause.endswith(
        "validates the untrained model until training ends."
    )
    assert f.fix.startswith(FIX)
    assert f.where.source == "train.py:11" and f.evidence["validations"] == 4


def test_the_trained_yolo_model_gets_the_fix_only():
    recorded = facts(validations=_callback_validations(), yolo_model_is_trained_model=True)
    f = assert_fires("TD405", _tl(recorded))
    assert UNTRAINED not in f.cause and f.fix.startswith(FIX)


def test_plain_wording_without_a_callback_validation():
    plain = assert_fires("TD405", _tl())
    # Ultralytics' own validations of a frozen EMA: no callback ran one, nothing to add
    only_trainer = facts(validations=[validation("train")], yolo_model_is_trained_model=False)
    assert assert_fires("TD405", _tl(only_trainer)) == plain
    assert "YOLO.model" not in plain.cause + plain.fix
