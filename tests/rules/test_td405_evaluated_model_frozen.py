"""TD405 evaluated-model-frozen on hand-built timelines: a validated model that never changes, one
of two validated models frozen, and stale copies evaluated in zero-code mode."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline, run_rule

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


def _validations(evaluated, trained, is_trained=False):
    steps = {}
    events = []
    for i, (ev, tr) in enumerate(zip(evaluated, trained), start=1):
        s = 8 * i
        steps[s] = {
            "modes.validated_fingerprint": [ev],
            "modes.trained_fingerprint": [tr],
            "loss.val": [1.5],
        }
        events.append(
            {
                "kind": "validated_model",
                "step": s,
                "model": "a Sequential that is not a watched model",
                "is_trained_model": is_trained,
                "params": 4,
                "source": "t.py:3",
            }
        )
    return make_timeline(params=PARAMS, steps=steps, events=events)


def test_td405_fires_when_the_validated_copy_never_changes():
    frozen = [[1.0, 2.0]] * 4
    moving = [[1.0, 2.0], [1.1, 2.0], [1.2, 2.1], [1.3, 2.2]]
    f = assert_fires("TD405", _validations(frozen, moving))
    assert f.step == 24 and f.evidence["validations"] == 4
    assert f.evidence["validation_loss_constant"] and f.where.source == "t.py:3"


def test_td405_silent_when_the_copy_moves_or_nothing_trains_or_too_few():
    moving = [[1.0, 2.0], [1.1, 2.0], [1.2, 2.1], [1.3, 2.2]]
    assert_silent("TD405", _validations(moving, moving))
    assert_silent("TD405", _validations([[1.0]] * 4, [[1.0]] * 4))
    assert_silent("TD405", _validations([[1.0]] * 2, [[1.0], [2.0]]))


# One run validates two models: each is judged on its own validations (an EMA that moves every
# epoch must not hide a copy that never changes, as in Ultralytics' seed report).
TWO_MODEL_PARAMS = ["stem.conv.weight", "head.weight"]

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
    return make_timeline(params=TWO_MODEL_PARAMS, steps=steps, events=events)


def test_td405_names_the_frozen_copy_beside_a_moving_ema():
    f = assert_fires("TD405", _two_models([[7.0]] * 3))
    assert f.evidence["validated_model"] == COPY and f.evidence["validations"] == 3
    assert f.where.source == "train.py:5" and f.step == 12


def test_td405_silent_when_both_validated_models_move():
    assert_silent("TD405", _two_models([[7.0], [7.5], [8.0]]))


# Stale copies evaluated in zero-code mode (the copies probe's `copies.evaluated`).
def _copies_tl(fps, trained, *, steps_called=6, first=11, last=61):
    occasions = [s for s, _ in fps]
    record = {
        "class": "Sequential",
        "of": "<model>",
        "params": 4,
        "copied_params": 4,
        "steps_called": steps_called,
        "first_step": first,
        "last_step": last,
        "occasions": occasions,
        "source": "train.py:35",
    }
    steps = {
        s: {"copies.evaluated": {"Sequential": v, "<trained>": t}}
        for (s, v), t in zip(fps, trained)
    }
    return make_timeline(
        params=["fc.weight"],
        steps=steps,
        facts={"copies": {"params": {}, "modules": {"Sequential": record}}},
        ended=True,
    )


def test_td405_stale_copy_evaluated_each_epoch_in_zero_code_mode():
    fps = [(s, 7.17) for s in (11, 21, 31, 41, 51, 61)]
    f = assert_fires("TD405", _copies_tl(fps, [7.1, 7.2, 7.3, 7.4, 7.5, 7.6]))
    assert f.where.source == "train.py:35"
    assert f.step == 31
    assert f.evidence["evaluations"] == 6


def test_td405_updated_copy_or_frozen_training_is_silent():
    changing = [(s, 7.0 + s / 100) for s in (11, 21, 31)]
    assert_silent("TD405", _copies_tl(changing, [7.1, 7.2, 7.3]))
    stale = [(s, 7.17) for s in (11, 21, 31)]
    assert_silent("TD405", _copies_tl(stale, [7.1, 7.1, 7.1]))  # nothing trains either


def test_td405_a_copy_run_every_step_is_a_target_not_an_evaluation():
    # A DQN target synced later than the run ends: called in every step, never changing.
    fps = [(s, 7.17) for s in (2, 40, 80)]
    tl = _copies_tl(fps, [7.1, 7.2, 7.3], steps_called=119, first=2, last=120)
    assert not run_rule("TD405", tl)
