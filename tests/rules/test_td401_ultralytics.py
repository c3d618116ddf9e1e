"""TD401 in Ultralytics' words: its validation evaluates the EMA, so inference tensors on
`trainer.model` come from the user's callbacks. Hand-built timelines with the integration's
facts."""

from __future__ import annotations

from traindoctor.testing import assert_fires, make_timeline

from ._ultralytics import facts

PARAMS = ["model.0.conv.weight", "model.0.conv.bias", "model.23.dfl.conv.weight"]
INFERENCE = {
    "kind": "inference_tensors",
    "step": 5,
    "params": PARAMS[:2],
    "buffers": [],
    "count": 2,
    "in_optimizer": [],
    "region_source": "train.py:14",
    "region_step": 4,
    "found_at": "region",
}
NOTE = (
    " Ultralytics' training validation evaluates the EMA (`trainer.ema.ema`), never "
    "`trainer.model`; work done under `torch.inference_mode()` on `trainer.model` itself"
)


def _tl(recorded=None):
    return make_timeline(params=PARAMS, steps={1: {}}, events=[INFERENCE], facts=recorded)


def test_names_the_ema_and_the_users_callbacks():
    recorded = facts(
        user_callbacks={
            "on_fit_epoch_end": ["validate_live_model (train.py:10)"],
            "on_train_batch_end": ["unrelated (train.py:30)"],
        }
    )
    f = assert_fires("TD401", _tl(recorded))
    assert NOTE in f.cause
    assert f.cause.endswith(
        "Your callbacks: `on_fit_epoch_end`: validate_live_model (train.py:10)."
    )
    assert "unrelated" not in f.cause
    assert f.fix.startswith(
        "In the callback, validate `trainer.ema.ema` or a `copy.deepcopy(trainer.model)`, or "
        "call `trainer.validator(trainer)`; never fuse or cast `trainer.model`. ("
    )
    assert f.where.source == "train.py:14" and f.step == 5 and f.severity.value == "error"


def test_plain_wording_without_ultralytics_facts():
    plain = assert_fires("TD401", _tl())
    assert "trainer.ema.ema" not in plain.cause + plain.fix
    worded = assert_fires("TD401", _tl(facts()))
    assert worded.cause.startswith(plain.cause + NOTE)
    assert (worded.title, worded.where, worded.evidence) == (
        plain.title,
        plain.where,
        plain.evidence,
    )
