"""TD510 inputs-not-normalized on hand-built timelines."""

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _tl(mean, std, lo=None, hi=None, kind="Linear", dtype="float32", nxt=("ReLU",), out=1.0):
    lo = mean - 3 * std if lo is None else lo
    hi = mean + 3 * std if hi is None else hi
    first = {"module": "fc1", "type": kind, "dtype": dtype, "next": list(nxt)}
    stats = {"in_mean": mean, "in_std": std, "in_min": lo, "in_max": hi, "out_std": out}
    return make_timeline(
        params=["fc1.weight"],
        steps={1: {"data.first_layer": first, "data.first_stats": stats}},
    )


def test_fires_on_raw_pixels_into_tanh_and_says_it_saturates():
    f = assert_fires("TD510", _tl(127.0, 73.0, 0.0, 255.0, nxt=("Tanh", "Linear"), out=80.0))
    assert f.where.module == "fc1"
    assert f.severity is Severity.WARNING
    assert f.evidence["followed_by"] == "Tanh"
    assert "saturated" in f.cause
    assert "mean 127" in f.title and "[0, 255]" in f.title


def test_fires_on_raw_units_and_on_tiny_inputs():
    assert_fires("TD510", _tl(200.0, 50.0, out=60.0))
    f = assert_fires("TD510", _tl(1e-4, 2e-4))
    assert "far below" in f.cause


def test_fires_on_8bit_data_divided_by_255_twice():
    # facebookresearch/InterHand2.6M#110: ToTensor() then `/ 255`: scale ~2e-3, top 1/255.
    f = assert_fires("TD510", _tl(0.5 / 255, 0.29 / 255, 0.0, 1.0 / 255))
    assert f.evidence["divided_twice_by_255"] is True
    assert "divided by 255 twice" in f.cause and "ToTensor" in f.fix
    # float32 rounding of 1 / 255 is still that top
    assert_fires("TD510", _tl(0.002, 0.001, 0.0, 0.003921568859368563))


def test_small_inputs_of_another_range_are_not_taken_for_pixels_divided_twice():
    assert_silent("TD510", _tl(0.002, 0.001, 0.0, 0.0033))  # a normalized histogram
    assert_silent("TD510", _tl(0.002, 0.001, -1.0 / 255, 1.0 / 255))  # signed


def test_functional_tanh_is_found_from_the_activation_sites():
    tl = _tl(127.0, 73.0, 0.0, 255.0, nxt=("Linear",), out=80.0)
    tl.record(1, "activations.sites", {"fc1": {"op": "tanh", "kind": "tanh"}})
    assert assert_fires("TD510", tl).evidence["followed_by"] == "tanh"


def test_silent_on_normalized_inputs_and_unit_scale_data():
    assert_silent("TD510", _tl(0.0, 1.0))
    assert_silent("TD510", _tl(0.5, 0.29, 0.0, 1.0))  # pixels / 255: unit scale
    assert_silent("TD510", _tl(0.0, 0.0, 0.0, 0.0))  # all zeros (padding): nothing to judge


def test_silent_on_indices_and_on_normalizing_first_layers():
    assert_silent("TD510", _tl(500.0, 280.0, dtype="int64", kind="Embedding"))
    assert_silent("TD510", _tl(127.0, 73.0, kind="BatchNorm2d"))
    assert_silent("TD510", _tl(127.0, 73.0, kind="LayerNorm"))


def test_a_single_layer_model_is_not_judged():
    # Nothing runs after the layer: a linear regression whose inputs share the targets' units.
    assert_silent("TD510", _tl(200.0, 50.0, nxt=(), out=60.0))


def test_a_batchnorm_right_after_the_first_layer_makes_it_info():
    # ResNet's conv1 -> bn1: the batch statistics cancel the input's scale in training.
    f = assert_fires(
        "TD510",
        _tl(127.0, 73.0, 0.0, 255.0, kind="Conv2d", nxt=("BatchNorm2d", "ReLU"), out=90.0),
    )
    assert f.severity is Severity.INFO and "cancels" in f.cause
    # A BatchNorm further down does not: the first layer's outputs are still too large.
    f = assert_fires("TD510", _tl(127.0, 73.0, 0.0, 255.0, nxt=("ReLU", "BatchNorm1d"), out=90.0))
    assert f.severity is Severity.WARNING


def test_an_instancenorm_right_after_the_first_layer_makes_it_info():
    # fast neural style's TransformerNet: 0-255 pixels -> conv1 -> InstanceNorm2d, by design;
    # each sample's own statistics cancel the scale, in eval too.
    f = assert_fires(
        "TD510",
        _tl(127.0, 73.0, 0.0, 255.0, kind="Conv2d", nxt=("InstanceNorm2d", "ReLU"), out=90.0),
    )
    assert f.severity is Severity.INFO and "cancel" in f.cause
