from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent

CE = {"fn": "cross_entropy", "classes": 3}


def test_fires_on_class_sorted_batches():
    labels = {s: [32 if (s - 1) // 4 % 3 == c else 0 for c in range(3)] for s in range(1, 13)}
    f = assert_fires("TD512", site_timeline(CE, {}, labels=labels))
    assert f.evidence["runs"][0] == [0, 4]


def test_silent_on_mixed_batches_and_on_one_class_overall():
    mixed = {s: [10, 11, 11] for s in range(1, 13)}
    assert_silent("TD512", site_timeline(CE, {}, labels=mixed))
    one = {s: [0, 32, 0] for s in range(1, 13)}
    assert_silent("TD512", site_timeline(CE, {}, labels=one))  # TD511's case


def test_nearly_single_class_batches_in_runs():
    ce = {"fn": "cross_entropy", "classes": 3}
    # 50 labels per batch, a boundary batch mixed, the others 49 of one class and 1 stray.
    counts = [[49, 1, 0]] * 4 + [[25, 25, 0]] + [[0, 49, 1]] * 4 + [[1, 0, 49]] * 4
    labels = {s: c for s, c in enumerate(counts, 2)}
    f = assert_fires("TD512", site_timeline(ce, {2: {"in_min": -1.0}}, labels))
    assert f.evidence["classes_in_single_batches"] == [0, 1, 2]


def test_an_imbalanced_data_set_is_not_sorted():
    ce = {"fn": "cross_entropy", "classes": 2}
    counts = [[32, 0], [30, 2], [31, 1], [32, 0], [29, 3], [32, 0], [31, 1], [32, 0]]
    labels = {s: c for s, c in enumerate(counts, 2)}
    assert_silent("TD512", site_timeline(ce, {2: {"in_min": -1.0}}, labels))
