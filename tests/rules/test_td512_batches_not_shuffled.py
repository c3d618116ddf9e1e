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
