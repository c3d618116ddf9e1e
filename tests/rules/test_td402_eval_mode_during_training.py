"""TD402 eval-mode-during-training on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["stem.conv.weight", "stem.conv.bias", "head.weight"]


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
