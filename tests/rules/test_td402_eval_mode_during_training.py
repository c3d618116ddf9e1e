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


def test_functional_dropout_turned_off_with_the_model_in_eval_mode():
    on = {"on": 2, "off": 0, "roots_training": {"<model>": True}}
    off = {"on": 0, "off": 2, "roots_training": {"<model>": False}}
    events = [
        {"kind": "functional_dropout", "step": 1, "training": True, "p": 0.6, "source": "m.py:9"},
        {"kind": "functional_dropout", "step": 2, "training": False, "p": 0.6, "source": "m.py:9"},
        {
            "kind": "mode_call",
            "step": 1,
            "module": "<model>",
            "training": False,
            "source": "m.py:40",
        },
    ]
    steps = {1: {"modes.functional_dropout": on}, 2: {"modes.functional_dropout": off}}
    tl = make_timeline(params=["a.weight"], steps=steps, events=events)
    tl.facts["modes"] = {"sensitive": 0, "steps_in_eval": 0, "functional_off_steps": 29}
    f = assert_fires("TD402", tl)
    assert f.step == 2 and f.evidence["functional_dropout"] == "m.py:9"
    assert f.where.source == "m.py:40" and f.title.startswith("29 optimizer step(s)")
    # never on: a dropout switched off by hand, not by a mode
    steps = {2: {"modes.functional_dropout": off}}
    tl = make_timeline(params=["a.weight"], steps=steps, events=events[1:])
    assert_silent("TD402", tl)
    # off while the model trains (one submodule frozen in eval): not the whole model
    half = {**off, "roots_training": {"<model>": True}}
    steps = {1: {"modes.functional_dropout": on}, 2: {"modes.functional_dropout": half}}
    assert_silent("TD402", make_timeline(params=["a.weight"], steps=steps, events=events))


def test_functional_dropout_whose_line_reads_the_mode_needs_no_step_with_it_on():
    # zero-code mode attaches after step 1's forward: no call with training on was seen
    off = {"on": 0, "off": 4, "roots_training": {"<model>": False}}
    call = {"kind": "functional_dropout", "step": 2, "training": False, "p": 0.6}
    steps = {2: {"modes.functional_dropout": off}}
    reads = dict(call, source="gat.py:108", code="h = F.dropout(h, self.p, training=self.training)")
    f = assert_fires("TD402", make_timeline(params=["a.weight"], steps=steps, events=[reads]))
    assert f.step == 2 and "training=self.training" in f.cause
    fixed = dict(call, source="gat.py:108", code="h = F.dropout(h, self.p, training=False)")
    assert_silent("TD402", make_timeline(params=["a.weight"], steps=steps, events=[fixed]))


def _norms(names, roots_training=True):
    return {**_eval_at(0, names, roots_training), "norms_only": True}


def test_td402_a_mid_run_batchnorm_freeze_while_the_model_trains_is_an_info():
    # QAT's freeze_bn_stats sets bn.training directly: no .eval() call is seen.
    qat = _modes_tl([(1, _eval_at(1, [])), (49, _norms(["conv.bn"]))])
    f = assert_fires("TD402", qat)
    assert f.severity.value == "info" and "frozen" in f.title and f.step == 49
    # `for m in model.modules(): if isinstance(m, nn.BatchNorm2d): m.eval()` at epoch 3.
    call = {"step": 30, "training": False, "validating": False, "source": "train.py:77"}
    loop = _modes_tl(
        [(1, _eval_at(1, [])), (31, _norms(["backbone.bn1", "backbone.bn2"]))],
        calls=[{**call, "module": "backbone.bn1", "norm": True}],
    )
    f = assert_fires("TD402", loop)
    assert f.severity.value == "info" and "train.py:77" in f.cause


def test_td402_norm_layers_left_in_eval_by_a_container_call_stay_an_error():
    call = {"step": 30, "training": False, "validating": False, "source": "val.py:12"}
    tl = _modes_tl(
        [(1, _eval_at(1, [])), (31, _norms(["backbone.bn1"]))],
        calls=[{**call, "module": "backbone", "norm": False}],
    )
    assert assert_fires("TD402", tl).severity.value == "error"
    # The whole model in eval mode: the error, norms only or not.
    tl = _modes_tl([(1, _eval_at(1, [])), (31, _norms(["bn1"], roots_training=False))])
    assert assert_fires("TD402", tl).severity.value == "error"
