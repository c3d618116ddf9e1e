"""TD513 augmentation-repeats-across-workers on hand-built timelines."""

import random

from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(batches, workers=2):
    loader = {"kind": "data_loader", "step": 1, "name": "loader", "num_workers": workers}
    return make_timeline(
        params=["w"],
        steps={s: {"data.samples": b} for s, b in enumerate(batches, 1)},
        events=[loader] if workers is not None else [],
    )


def _fresh(rng, n=8):
    return [rng.random() * 100 for _ in range(n)]


def test_fires_on_pairs_of_identical_batches_from_two_workers():
    rng = random.Random(0)
    groups = [_fresh(rng) for _ in range(8)]
    f = assert_fires("TD513", _tl([b for g in groups for b in (g, list(g))]))
    assert f.evidence["lag"] == 1
    assert f.evidence["estimated_workers"] == 2
    assert f.step == 2


def test_counts_three_workers():
    rng = random.Random(1)
    groups = [_fresh(rng) for _ in range(6)]
    f = assert_fires("TD513", _tl([b for g in groups for b in (g, list(g), list(g))], 3))
    assert f.evidence["estimated_workers"] == 3


def test_silent_on_epochs_of_a_dataset_without_augmentation():
    rng = random.Random(2)
    pool = [rng.random() for _ in range(32)]
    batches = []
    for _ in range(4):  # 4 epochs of 4 shuffled batches: repeats, but nothing fresh after
        order = pool[:]
        rng.shuffle(order)
        batches += [order[i : i + 8] for i in range(0, 32, 8)]
    assert_silent("TD513", _tl(batches))


def test_silent_on_fresh_random_samples_and_on_one_batch_every_step():
    rng = random.Random(3)
    assert_silent("TD513", _tl([_fresh(rng) for _ in range(20)]))
    one = _fresh(rng)
    assert_silent("TD513", _tl([list(one) for _ in range(20)]))  # TD504's finding


def test_silent_when_repeats_come_back_only_after_a_long_lag():
    rng = random.Random(4)
    first = [_fresh(rng) for _ in range(20)]
    assert_silent(
        "TD513", _tl(first + [list(b) for b in first[:10]] + [_fresh(rng) for _ in range(5)])
    )


def _loader(**kw):
    event = {
        "kind": "data_loader",
        "step": 2,
        "name": "loader",
        "batch_size": 32,
        "num_workers": 2,
        "worker_init_fn": False,
        "generators": [
            {
                "path": "dataset.rng",
                "kind": "numpy.random.RandomState",
                "used_in": "Noisy.__getitem__ (train.py:17)",
            }
        ],
    }
    event.update(kw)
    return make_timeline(params=["w"], steps={1: {}}, events=[event])


def test_fires_on_a_dataset_generator_read_per_item_under_several_workers():
    f = assert_fires("TD513", _loader())
    assert f.where.source == "train.py:17"
    assert f.evidence["num_workers"] == 2


def test_silent_with_a_worker_init_fn_one_worker_or_a_generator_used_in_init_only():
    assert_silent("TD513", _loader(worker_init_fn=True))
    assert_silent("TD513", _loader(num_workers=1))
    unused = [{"path": "dataset.rng", "kind": "numpy.random.Generator", "used_in": None}]
    assert_silent("TD513", _loader(generators=unused))


def test_silent_on_repeats_when_every_loader_runs_in_the_main_process():
    # torchvision's detection reference on 16 images under a random flip, num_workers=0:
    # after the first epoch some samples come back (same image, same flip) among fresh ones.
    rng = random.Random(5)
    groups = [_fresh(rng) for _ in range(8)]
    batches = [b for g in groups for b in (g, list(g))]
    steps = {s: {"data.samples": b} for s, b in enumerate(batches, 1)}
    for workers in (0, 1):
        event = {"kind": "data_loader", "step": 1, "name": "data_loader", "num_workers": workers}
        assert_silent("TD513", make_timeline(params=["w"], steps=steps, events=[event]))
    event = {"kind": "data_loader", "step": 1, "name": "data_loader", "num_workers": 2}
    assert_fires("TD513", make_timeline(params=["w"], steps=steps, events=[event]))


def test_silent_on_repeats_when_no_dataloader_was_seen():
    # PPO: a few epochs over each rollout's minibatches, drawn by hand (no DataLoader): the
    # same samples come back among fresh ones, and no worker is there to blame.
    rng = random.Random(6)
    groups = [_fresh(rng) for _ in range(8)]
    assert_silent("TD513", _tl([b for g in groups for b in (g, list(g))], workers=None))
