"""TD401-TD403 and TD405 on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


def _inference(params=("stem.conv.weight", "stem.conv.bias"), region="val.py:12", held=()):
    return {
        "kind": "inference_tensors",
        "step": 9,
        "params": list(params),
        "buffers": [],
        "count": len(params),
        "in_optimizer": list(held),
        "region_source": region,
        "region_step": 8,
        "found_at": "region",
    }


def test_td401_names_params_region_and_the_stale_optimizer():
    tl = make_timeline(params=PARAMS, steps={1: {}}, events=[_inference()])
    f = assert_fires("TD401", tl)
    assert f.step == 9
    assert f.where.params == ("stem.conv.bias", "stem.conv.weight")
    assert f.where.module == "stem.conv" and f.where.source == "val.py:12"
    assert "val.py:12" in f.cause and "TD111" in f.cause
    held = make_timeline(params=PARAMS, steps={1: {}}, events=[_inference(held=PARAMS[:2])])
    assert "TD111" not in assert_fires("TD401", held).cause


def test_td401_silent_without_inference_tensors():
    assert_silent("TD401", make_timeline(params=PARAMS, steps={1: {}, 2: {}}))


def _eval_at(step, names, roots_training=True, sensitive=3):
    return {
        "eval": names,
        "count": len(names),
        "sensitive": sensitive,
        "roots_training": {"<model>": roots_training},
    }


def _modes_tl(changes, calls=(), steps_in_eval=30):
    steps = {s: {"modes.eval_at_step": v} for s, v in changes}
    events = [{"kind": "mode_call", **c} for c in calls]
    return make_timeline(
        params=PARAMS, steps=steps, events=events, facts={"modes": {"steps_in_eval": steps_in_eval}}
    )


def test_td402_fires_when_the_model_was_left_in_eval_after_a_validation():
    tl = _modes_tl(
        [(1, _eval_at(1, [])), (9, _eval_at(9, ["stem.bn", "block.bn", "drop"], False))],
        calls=[
            {
                "step": 8,
                "module": "<model>",
                "root": True,
                "training": False,
                "validating": False,
                "source": "val.py:40",
            }
        ],
    )
    f = assert_fires("TD402", tl)
    assert f.step == 9 and f.where.source == "val.py:40" and f.where.module == "<model>"
    assert f.evidence["steps_in_eval"] == 30 and "val.py:40" in f.cause


def test_td402_silent_for_a_deliberate_bn_freeze_from_the_first_step():
    tl = _modes_tl([(1, _eval_at(1, ["backbone.bn1", "backbone.bn2"], True))])
    assert_silent("TD402", tl)
    # ... but a freeze that appears mid-run is reported
    later = _modes_tl([(1, _eval_at(1, [])), (5, _eval_at(5, ["backbone.bn1"], True))])
    assert assert_fires("TD402", later).where.module == "backbone.bn1"


def test_td402_fires_when_training_in_eval_mode_from_the_start():
    tl = _modes_tl([(1, _eval_at(1, ["stem.bn", "drop"], False))])
    assert assert_fires("TD402", tl).step == 1


def test_td403_reports_validation_forwards_in_train_mode():
    e = {
        "kind": "validation_in_train_mode",
        "step": 9,
        "model": "<model>",
        "modules": ["stem.bn", "block.bn"],
        "count": 2,
        "forwards": 3,
        "validating": False,
        "source": "val.py:7",
    }
    f = assert_fires("TD403", make_timeline(params=PARAMS, steps={1: {}}, events=[e]))
    assert f.where.source == "val.py:7" and f.evidence["modules_in_train_mode"] == e["modules"]
    assert_silent("TD403", make_timeline(params=PARAMS, steps={1: {}}))


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
