from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent

CE = {"fn": "cross_entropy", "classes": 5, "input_shape": [32, 5], "target_shape": [32]}


def _hist(counts, steps=6):
    return {s: list(counts) for s in range(1, steps + 1)}


def test_one_based_labels():
    f = assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 8, 8, 8, 8])))
    assert "1-based" in f.title


def test_all_labels_identical():
    assert_fires("TD511", site_timeline(CE, {}, labels=_hist([0, 0, 32, 0, 0])))


def test_out_of_range_and_float_labels():
    assert_fires("TD511", site_timeline(CE, {1: {"t_min": 0.0, "t_max": 5.0}}))
    ev = {**CE, "target_float": True, "target_dtype": "float32"}
    assert_fires("TD511", site_timeline(ev, {1: {}}))


def test_silent_on_balanced_labels_and_soft_targets():
    assert_silent(
        "TD511", site_timeline(CE, {1: {"t_min": 0.0, "t_max": 4.0}}, labels=_hist([6, 7, 6, 7, 6]))
    )
    soft = {**CE, "target_float": True, "target_shape": [32, 5]}
    assert_silent("TD511", site_timeline(soft, {1: {"t_min": 0.0, "t_max": 0.9}}))
