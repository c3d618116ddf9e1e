"""TD303 dead-relu on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

STEPS = (1, 2, 3, 10, 20)


def _tl(dead, pre_mean=-3.6, bias=-3.7, steps=STEPS, ended=False, op="relu"):
    data = {}
    for i, s in enumerate(steps):
        data[s] = {
            "activations.sites": {
                "fc1": {"op": "relu", "kind": "relu", "units": 64, "window": min(i + 1, 4)},
                "fc2": {"op": op, "kind": "relu", "units": 32, "window": min(i + 1, 4)},
            },
            "activations.dead": {"fc1": 0.0, "fc2": dead},
            "activations.pre_mean": {"fc1": 0.02, "fc2": pre_mean},
            "activations.pre_std": {"fc1": 0.6, "fc2": 2.5},
            "activations.bias_mean": {"fc1": 0.03, "fc2": bias},
        }
    return make_timeline(steps=data, ended=ended)


def test_names_the_layer_fraction_and_bias_shift():
    f = assert_fires("TD303", _tl(0.75))
    assert f.where.module == "fc2"
    assert f.evidence["dead_fraction"] == 0.75
    assert "75%" in f.title
    assert "bias" in f.cause and "-3.7" in f.cause
    assert f.step == 3  # the first step with a full enough window


def test_negative_preactivation_without_bias_blames_the_learning_rate():
    f = assert_fires("TD303", _tl(0.9, pre_mean=-3.0, bias=0.1))
    assert "learning rate" in f.cause


def test_leaky_units_are_never_positive_and_leaky_relu_is_not_the_fix():
    """StyleGAN's F.leaky_relu(x, 0.2): negative units still pass 0.2 x the gradient."""
    f = assert_fires("TD303", _tl(0.75, op="leaky_relu"))
    assert "leaky ReLU units" in f.title and "never positive" in f.title
    assert "LeakyReLU" not in f.fix


def test_few_dead_units_are_silent():
    assert_silent("TD303", _tl(0.2))


def test_units_that_recover_are_silent():
    tl = _tl(0.8)
    tl.record(30, "activations.sites", tl.series("activations.sites")[-1][1])
    tl.record(30, "activations.dead", {"fc1": 0.0, "fc2": 0.1})
    assert_silent("TD303", tl)


def test_waits_for_a_window():
    assert_silent("TD303", _tl(0.8, steps=(1, 2)))
    assert_fires("TD303", _tl(0.8, steps=(1, 2), ended=True))
