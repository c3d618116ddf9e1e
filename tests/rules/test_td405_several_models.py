"""TD405 when one run validates two models: each is judged on its own validations (an EMA that
moves every epoch must not hide a copy that never changes, as in Ultralytics' seed report)."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "head.weight"]
EMA = "a DetectionModel that is not a watched model"
COPY = "a AutoBackend that is not a watched model"


def _two_models(copy_fps):
    steps, events = {}, []
    for i, copy_fp in enumerate(copy_fps, start=1):
        s = 4 * i
        ema_fp = [1.0 + i, 2.0]  # the EMA follows the trained model
        steps[s] = {
            "modes.validated_fingerprint": [ema_fp, copy_fp],
            "modes.trained_fingerprint": [[1.0 + i, 2.0], [1.0 + i, 2.0]],
        }
        for model, params, source in ((EMA, 2, "train.py:9"), (COPY, 1, "train.py:5")):
            events.append(
                {
                    "kind": "validated_model",
                    "step": s,
                    "model": model,
                    "is_trained_model": False,
                    "params": params,
                    "source": source,
                }
            )
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_td405_names_the_frozen_copy_beside_a_moving_ema():
    f = assert_fires("TD405", _two_models([[7.0]] * 3))
    assert f.evidence["validated_model"] == COPY and f.evidence["validations"] == 3
    assert f.where.source == "train.py:5" and f.step == 12


def test_td405_silent_when_both_validated_models_move():
    assert_silent("TD405", _two_models([[7.0], [7.5], [8.0]]))
