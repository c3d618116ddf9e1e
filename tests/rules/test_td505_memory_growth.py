"""TD505 memory-growth on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _graphs(alive_at, dead_at=lambda s: 0, steps=range(1, 21), capped=False):
    return {
        s: {
            "memory.graphs_alive": {
                "alive": alive_at(s),
                "dead": dead_at(s),
                "oldest": 1 if alive_at(s) else None,
                "capped": capped,
            },
            "memory.host_rss_mb": 300.0 + s,
        }
        for s in steps
    }


HOLDER = {
    "kind": "graph_holder",
    "step": 6,
    "loss_step": 5,
    "op": "__radd__",
    "source": "train.py:30",
    "code": "total_loss += loss",
}
WALK = {
    "kind": "graph_retained",
    "step": 5,
    "alive": 3,
    "backward_reaches": [],
    "backward_source": "train.py:25",
}


def test_fires_when_every_earlier_graph_stays_alive():
    tl = make_timeline(
        steps=_graphs(lambda s: max(0, s - 2)),
        events=[HOLDER, WALK],
        facts={"memory": {"host_measure": "/proc/self/statm"}},
    )
    f = assert_fires("TD505", tl)
    assert f.severity == Severity.WARNING
    assert f.where.source == "train.py:30"
    assert f.evidence["graphs_alive"] == 18
    assert f.evidence["accumulation_code"] == "total_loss += loss"
    assert f.evidence["host_rss_mb"] == {"first": [1, 301.0], "last": [20, 320.0]}
    assert f.step == 3


def test_backward_line_without_holder_and_error_when_backward_reaches_them():
    walk = {**WALK, "backward_reaches": [3, 4]}
    tl = make_timeline(steps=_graphs(lambda s: max(0, s - 2)), events=[walk])
    f = assert_fires("TD505", tl)
    assert f.severity == Severity.ERROR
    assert f.where.source == "train.py:25"
    assert "back-propagates the earlier losses" in f.cause


def test_silent_when_graphs_are_freed():
    # loss.item() logging: every earlier graph is freed.
    assert_silent("TD505", make_timeline(steps=_graphs(lambda s: 0, lambda s: s - 1)))


def test_silent_for_a_bounded_window_of_kept_graphs():
    # A deque of the last 10 losses: alive plateaus at 9 while freed graphs pile up.
    tl = make_timeline(
        steps=_graphs(lambda s: min(9, max(0, s - 2)), lambda s: max(0, s - 11), steps=range(1, 61))
    )
    assert_silent("TD505", tl)


def test_silent_below_the_minimum_count():
    assert_silent("TD505", make_timeline(steps=_graphs(lambda s: max(0, s - 2), steps=range(1, 9))))


def test_capped_markers_still_count_as_growth():
    tl = make_timeline(steps=_graphs(lambda s: 64, steps=range(70, 80), capped=True))
    assert_fires("TD505", tl)


def test_cuda_growth_alone():
    steps = {
        s: {
            "memory.graphs_alive": {"alive": 0, "dead": s - 1, "oldest": None, "capped": False},
            "memory.cuda_allocated_mb": 100.0 + 10 * s,
        }
        for s in range(1, 21)
    }
    f = assert_fires("TD505", make_timeline(steps=steps))
    assert f.evidence["growth_mb"] == 160.0
    flat = {s: {**v, "memory.cuda_allocated_mb": 100.0 + (s % 2)} for s, v in steps.items()}
    assert_silent("TD505", make_timeline(steps=flat))


def test_fires_when_a_per_epoch_total_frees_the_pile_at_each_epoch():
    # `train_loss = 0` at each epoch's start, `train_loss += loss` inside: graphs pile up over
    # the 40 steps of an epoch, then are freed together (observed at 1-32, 40, 80).
    steps = _graphs(lambda s: max(0, s - 2), steps=list(range(1, 33)) + [40])
    steps[80] = _graphs(lambda s: 0, lambda s: 39, steps=[80])[80]
    f = assert_fires("TD505", make_timeline(steps=steps, events=[HOLDER]))
    assert f.evidence["graphs_alive"] == 38
    assert f.evidence["freed_later_at_step"] == 80
    assert f.where.source == "train.py:30"
