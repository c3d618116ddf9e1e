"""TD605 sampler-epoch-not-set on hand-built rank timelines; the real 2-rank jobs (set_epoch
never called, and the twin that calls it): tests/distributed/test_td60x_jobs.py."""

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(epochs, shuffle=True, batches=4, repeat=True, steps=12):
    data = {}
    for s in range(1, steps + 1):
        pos = (s - 1) % batches if repeat else s
        data[s] = {"data.fp": {"in0.sum": float(pos), "in0.wsum": pos / 7}}
    for s, e in epochs.items():
        data.setdefault(s, {})["ranks.sampler"] = {
            "loader0": {
                "epoch": e,
                "shuffle": shuffle,
                "batches": batches,
                "seed": 0,
                "dataset": "TensorDataset",
            }
        }
    return make_timeline(params=["module.w"], steps=data, last_step=steps)


def test_epoch_never_set_and_batches_repeat_fires():
    f = assert_fires("TD605", _tl({2: 0}))
    assert f.evidence["epoch"] == 0 and f.evidence["repeated_batches"][0] == [1, 5]


def test_set_epoch_called_is_silent():
    assert_silent("TD605", _tl({2: 0, 5: 1, 9: 2}, repeat=False))


def test_no_shuffle_is_silent():
    assert_silent("TD605", _tl({2: 0}, shuffle=False))


def test_within_one_epoch_is_silent():
    assert_silent("TD605", _tl({2: 0}, batches=40))


def test_no_repeat_seen_is_silent():
    assert_silent("TD605", _tl({2: 0}, repeat=False))
