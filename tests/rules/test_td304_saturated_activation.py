"""TD304 saturated-activation on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

STEPS = (1, 2, 3, 10, 20)


def _tl(sat, input_std=99.0, steps=STEPS, ended=False):
    data = {}
    for i, s in enumerate(steps):
        w = min(i + 1, 4)
        data[s] = {
            "activations.sites": {
                "fc1": {"op": "tanh", "kind": "tanh", "units": 32, "window": w},
                "gate": {"op": "sigmoid", "kind": "sigmoid", "units": 32, "window": w},
            },
            "activations.saturated": {"fc1": sat, "gate": 0.0},
            "activations.pre_mean": {"fc1": -2.0, "gate": 0.0},
            "activations.pre_std": {"fc1": 59.0, "gate": 0.6},
            "activations.input_std": input_std,
        }
    return make_timeline(steps=data, ended=ended)


def test_names_the_layer_fraction_and_input_scale():
    f = assert_fires("TD304", _tl(0.9))
    assert f.where.module == "fc1"
    assert f.where.op == "tanh"
    assert f.evidence["saturated_fraction"] == 0.9
    assert f.evidence["input_std"] == 99.0
    assert "not normalized" in f.cause


def test_normalized_inputs_point_at_weights():
    f = assert_fires("TD304", _tl(0.9, input_std=1.0))
    assert "weights" in f.cause


def test_unsaturated_layers_are_silent():
    assert_silent("TD304", _tl(0.3))


def test_waits_for_a_window():
    assert_silent("TD304", _tl(0.9, steps=(1, 2)))
    assert_fires("TD304", _tl(0.9, steps=(1, 2), ended=True))
