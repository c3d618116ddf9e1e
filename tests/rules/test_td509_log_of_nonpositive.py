from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent

EV = {
    "fn": "nll_loss",
    "classes": 4,
    "producer": ["LogBackward0", "ReluBackward0", "AddmmBackward0"],
}


def test_fires_on_log_of_relu():
    stats = {1: {"log_arg_nonpos": 0.3, "nonfinite": 0.3, "loss": float("inf")}}
    f = assert_fires("TD509", site_timeline(EV, stats))
    assert "ReluBackward0" in f.title


def test_silent_when_nothing_nonpositive_or_finite():
    assert_silent(
        "TD509", site_timeline(EV, {1: {"log_arg_nonpos": 0.0, "nonfinite": 0.0, "loss": 1.2}})
    )
    # log of a softmax that underflowed: TD201's case
    ev = {**EV, "producer": ["LogBackward0", "SoftmaxBackward0"]}
    assert_silent(
        "TD509",
        site_timeline(ev, {1: {"log_arg_nonpos": 0.1, "nonfinite": 0.1, "loss": float("inf")}}),
    )


def test_bce_outside_unit_interval():
    ev = {"fn": "binary_cross_entropy", "producer": ["AddmmBackward0"]}
    assert_fires(
        "TD509", site_timeline(ev, {1: {"outside_01": 0.4, "in_min": -2.0, "in_max": 3.0}})
    )
