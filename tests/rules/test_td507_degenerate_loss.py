from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.testing import assert_fires, assert_silent


def test_cross_entropy_over_one_class():
    ev = {"fn": "cross_entropy", "classes": 1, "input_shape": [32, 1]}
    f = assert_fires(
        "TD507", site_timeline(ev, {1: {"loss": 0.0}}, extra={1: {"grads.norm": {"w": 0.0}}})
    )
    assert f.evidence["max_grad_norm"] == 0.0


def test_softmax_over_size_one_dim():
    ev = {
        "fn": "nll_loss",
        "classes": 1,
        "producer": ["LogSoftmaxBackward0"],
        "softmax_dim_size": 1,
    }
    assert_fires(
        "TD507", site_timeline({**ev, "fn": "mse_loss", "classes": None}, {1: {"loss": 0.2}})
    )


def test_bce_pinned_at_its_clamp():
    ev = {"fn": "binary_cross_entropy", "producer": ["SigmoidBackward0"]}
    stats = {s: {"clamped": 0.3, "loss": 30.5} for s in (1, 2, 3)}
    assert_fires("TD507", site_timeline(ev, stats))
    stats = {s: {"clamped": 0.0, "loss": 0.5} for s in (1, 2, 3)}
    assert_silent("TD507", site_timeline(ev, stats))


def test_silent_on_a_normal_classifier():
    ev = {"fn": "cross_entropy", "classes": 4, "producer": ["AddmmBackward0"]}
    assert_silent("TD507", site_timeline(ev, {1: {"loss": 1.3}}))
