"""TD522 on hand-built loss-inputs timelines, and the probe's measurement on real graphs."""

import torch
import torch.nn as nn

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.findings import Severity
from traindoctor.probes.loss_inputs import _out_of_range, producer
from traindoctor.testing import assert_fires, assert_silent

MSE = {"fn": "mse_loss", "classes": None, "producer": ["SigmoidBackward0", "AddmmBackward0"]}


def _stats(floor=0.9, base=0.4, share=0.8):
    return {
        s: {"rng_floor": floor, "rng_base": base, "rng_out": share, "t_min": -1.0, "t_max": 1.0}
        for s in (1, 2, 3)
    }


def test_fires_as_a_warning_with_the_floor_and_the_range():
    f = assert_fires("TD522", site_timeline(MSE, _stats()))
    assert f.severity is Severity.WARNING and f.where.op == "SigmoidBackward0"
    assert "80% of the targets lie outside [0, 1]" in f.title
    assert "a floor of 0.9 per element" in f.title and "targets from -1 to 1" in f.cause


def test_silent_below_the_thresholds_or_without_a_bounded_op():
    assert_silent("TD522", site_timeline(MSE, _stats(floor=0.01, share=0.02)))  # noise
    assert_silent("TD522", site_timeline(MSE, _stats(floor=0.0, share=0.0)))
    linear = {**MSE, "producer": ["AddmmBackward0"]}
    assert_silent("TD522", site_timeline(linear, _stats()))
    ce = {**MSE, "fn": "cross_entropy", "classes": 3}
    assert_silent("TD522", site_timeline(ce, _stats()))


def test_probe_measures_the_floor_of_standardized_targets_under_a_relu():
    torch.manual_seed(0)
    y = torch.randn(4096)
    out = _out_of_range("mse_loss", y, (0.0, float("inf")))
    assert 0.45 < float(out["rng_out"]) < 0.55
    # E[y^2; y < 0] = 0.5 of a unit variance
    assert abs(float(out["rng_floor"]) - 0.5) < 0.05 and abs(float(out["rng_base"]) - 1) < 0.05
    inside = _out_of_range("l1_loss", torch.rand(4096), (0.0, 1.0))
    assert float(inside["rng_out"]) == 0 and float(inside["rng_floor"]) == 0


def test_producer_below_views_is_the_bounded_op():
    head = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    names, node = producer(head(torch.randn(8, 4)).squeeze(1))
    assert names[0] == "SigmoidBackward0" and type(node).__name__ == "SigmoidBackward0"


def _marked(**kw):
    return {s: {**v, "rng_omin": -1.0, "rng_omax": -1.0} for s, v in _stats(**kw).items()}


def test_one_marker_value_outside_kept_per_element_is_not_judged():
    # heatmaps of unlabelled joints set to -1, the per-element loss masked after the call
    per_element = {**MSE, "options": {"reduction": 0}}
    assert_silent("TD522", site_timeline(per_element, _marked()))
    spread = {s: {**v, "rng_omin": -3.0, "rng_omax": -0.2} for s, v in _stats().items()}
    assert_fires("TD522", site_timeline(per_element, spread))  # targets spread outside
    f = assert_fires("TD522", site_timeline({**MSE, "options": {"reduction": 1}}, _marked()))
    assert "Every target outside the range is -1" in f.cause and "mask" in f.fix


def test_probe_measures_the_extremes_of_the_targets_outside():
    y = torch.tensor([0.2, -1.0, 0.7, -1.0])
    out = _out_of_range("mse_loss", y, (0.0, 1.0))
    assert float(out["rng_omin"]) == float(out["rng_omax"]) == -1.0
    inside = _out_of_range("mse_loss", torch.rand(16), (0.0, 1.0))
    assert float(inside["rng_omin"]) == float(inside["rng_omax"]) == 0.0
