"""TD515 grad-accumulation-unnormalized on hand-built timelines (and how it differs from TD109)."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline, optimizer_facts


def _tl(factors, cls="SGD", clip=None, divided=False, n_steps=10):
    steps = {}
    for s in range(1, n_steps + 1):
        steps[s] = {
            "loss.factor": list(factors),
            "loss.site": [0] * len(factors),
            "backward.count": len(factors),
        }
        if clip is not None:
            steps[s]["schedule.clip_norm"] = [clip[0]]
            steps[s]["schedule.clip_max"] = [clip[1]]
        if divided:
            steps[s]["schedule.tensor_divided"] = len(factors)
    return make_timeline(
        params=["w"],
        optimizers=[optimizer_facts(["w"], cls=cls)],
        steps=steps,
        events=[{"kind": "backward_site", "step": 1, "site": 0, "source": "train.py:42"}],
        ended=True,
    )


def test_unnormalized_sgd_accumulation_fires():
    f = assert_fires("TD515", _tl([1.0] * 4))
    assert f.evidence["micro_batches"] == 4
    assert f.where.source == "train.py:42"
    assert "loss / 4" in f.fix


def test_adam_fires_only_with_active_clipping():
    assert_silent("TD515", _tl([1.0] * 4, cls="AdamW"))
    assert_silent("TD515", _tl([1.0] * 4, cls="AdamW", clip=(0.5, 1.0)))
    f = assert_fires("TD515", _tl([1.0] * 4, cls="AdamW", clip=(3.2, 1.0)))
    assert f.evidence["clip"]["active_share"] == 1.0
    assert f.evidence["clip"]["median_norm_if_normalized"] == 0.8


def test_normalized_accumulation_is_silent():
    assert_silent("TD515", _tl([0.25] * 4))  # loss / accum
    assert_silent("TD515", _tl([1.0] * 4, divided=True))  # loss_sum / n_tokens (a tensor)
    assert_silent("TD515", _tl([1.0]))  # no accumulation


def test_inconsistent_factors_are_td109s():
    assert_silent("TD515", _tl([0.25, 1.0, 1.0, 1.0]))
    assert_fires("TD109", _tl([0.25, 1.0, 1.0, 1.0]))
