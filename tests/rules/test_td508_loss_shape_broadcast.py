from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent


def test_fires_on_b1_against_b():
    ev = {
        "fn": "mse_loss",
        "input_shape": [32, 1],
        "target_shape": [32],
        "broadcast_shape": [32, 32],
    }
    f = assert_fires("TD508", site_timeline(ev, {1: {}}))
    assert f.evidence["element_ratio"] == 32
    assert "train.py:12" in f.title


def test_silent_on_equal_shapes_and_on_scalar_targets():
    ev = {"fn": "mse_loss", "input_shape": [32], "target_shape": [32]}
    assert_silent("TD508", site_timeline(ev, {1: {}}))
    ev = {"fn": "l1_loss", "input_shape": [32, 4], "target_shape": [4], "broadcast_shape": [32, 4]}
    assert_silent("TD508", site_timeline(ev, {1: {}}))
