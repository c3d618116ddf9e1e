"""TD111 in Ultralytics' words when the stale params are inference tensors a callback left on
`trainer.model` (worded as TD401); a head replaced otherwise keeps the plain wording."""

from __future__ import annotations

from traindoctor.testing import assert_fires, make_timeline, optimizer_facts

from ._ultralytics import facts

PARAMS = {"model.0.conv.weight": {"shape": [8, 3, 3, 3]}, "model.0.conv.bias": {"shape": [8]}}
OLD = [
    {"shape": [8, 3, 3, 3], "requires_grad": True, "had_grad": False},
    {"shape": [8], "requires_grad": True, "had_grad": False},
]
INFERENCE = {
    "kind": "inference_tensors",
    "step": 2,
    "params": list(PARAMS),
    "buffers": [],
    "count": 2,
    "in_optimizer": [],
    "region_source": "train.py:14",
    "region_step": 1,
    "found_at": "region",
}


def _tl(recorded=None, events=(INFERENCE,)):
    opt = optimizer_facts([], unnamed=OLD, created_at="trainer.py:7")
    steps = {s: {"grads.observed": 1, "params.replaced": list(PARAMS)} for s in (1, 2, 3)}
    return make_timeline(
        params=PARAMS, optimizers=[opt], steps=steps, events=events, facts=recorded
    )


def test_inference_tensors_name_the_ema_and_the_callbacks():
    recorded = facts(user_callbacks={"on_fit_epoch_end": ["validate_live_model (train.py:10)"]})
    f = assert_fires("TD111", _tl(recorded))
    assert "Ultralytics' training validation evaluates the EMA (`trainer.ema.ema`)" in f.cause
    assert f.cause.endswith("validate_live_model (train.py:10).")
    assert f.fix.startswith("In the callback, validate `trainer.ema.ema`")


def test_without_inference_tensors_the_plain_wording():
    plain = assert_fires("TD111", _tl(events=()))
    assert assert_fires("TD111", _tl(facts(), events=())) == plain
    assert "trainer.ema.ema" not in plain.cause


def test_plain_wording_without_ultralytics_facts():
    f = assert_fires("TD111", _tl())
    assert "Ultralytics" not in f.cause and "trainer.ema.ema" not in f.fix
