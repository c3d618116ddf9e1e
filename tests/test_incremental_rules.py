"""Incremental rule passes (issue 15): series read without re-sorting, records read since a step,
and rules that keep state between passes give the findings of a fresh pass."""

from __future__ import annotations

from traindoctor.timeline import Timeline


def test_series_in_step_order_whatever_the_write_order():
    tl = Timeline()
    for s in (1, 2, 5):
        tl.record(s, "optim.step", s)
    assert tl.series("optim.step") == [(1, 1), (2, 2), (5, 5)]
    assert tl.rewrites("optim.step") == 0
    tl.record(3, "optim.step", 3)  # out of order: sorted once, on read
    assert tl.series("optim.step") == [(1, 1), (2, 2), (3, 3), (5, 5)]
    assert tl.rewrites("optim.step") == 1
    tl.record(4, "optim.step", 4)  # the cached order is dropped on the next write
    assert [s for s, _ in tl.series("optim.step")] == [1, 2, 3, 4, 5]
    assert tl.series_since("optim.step", 3) == [(4, 4), (5, 5)]


def test_series_since_reads_only_newer_records():
    tl = Timeline()
    for s in range(1, 11):
        tl.append(s, "loss.backward", float(s))
    assert tl.series_since("loss.backward", 8) == [(9, [9.0]), (10, [10.0])]
    assert tl.series_since("loss.backward", 10) == []
    assert tl.series_since("loss.backward", 0) == tl.series("loss.backward")
    assert tl.series_since("nothing.there", 0) == []
    tl.append(10, "loss.backward", 11.0)  # the newest step may still grow: not a rewrite
    assert tl.rewrites("loss.backward") == 0
    tl.append(9, "loss.backward", 12.0)  # an earlier step changed: readers start over
    assert tl.rewrites("loss.backward") == 1
    assert tl.series("loss.backward")[-2:] == [(9, [9.0, 12.0]), (10, [10.0, 11.0])]
