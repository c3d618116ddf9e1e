"""TD206 exploding-gradient on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias"]


def _tl(head_norms, enc=0.5):
    steps = {}
    for step, v in head_norms.items():
        steps[step] = {
            "grads.norm": {"enc.weight": enc, "enc.bias": 0.0, "head.weight": v, "head.bias": 0.0},
            "optim.lr": {"opt0/group0": 0.8},
        }
    return make_timeline(params=PARAMS, steps=steps)


def test_names_the_layer_and_step_of_the_jump():
    f = assert_fires("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}))
    assert f.step == 20
    assert f.where.module == "head"
    assert f.where.params == ("head.weight", "head.bias")
    assert f.severity is Severity.ERROR  # still high at the last sampled step
    assert f.evidence["median_before"] == 0.675
    assert "lr=0.8" in f.cause


def test_a_transient_jump_is_a_warning():
    f = assert_fires("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 9.0, 20: 0.6}))
    assert f.severity is Severity.WARNING and f.step == 10


def test_healthy_noise_and_scale_do_not_fire():
    # a layer with a large but steady norm, and one that doubles: neither is a jump
    assert_silent("TD206", _tl({1: 50.0, 2: 60.0, 3: 55.0, 10: 70.0, 20: 52.0}, enc=1e-3))
    assert_silent("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 1.3, 20: 2.6}))


def test_growth_from_zero_and_steady_growth_are_not_jumps():
    # LoRA-like: exactly zero first, then a steady linear rise
    assert_silent("TD206", _tl({1: 0.0, 2: 0.01, 3: 0.02, 10: 0.09, 20: 0.19, 30: 0.29}))


def test_needs_history_and_ignores_nonfinite():
    assert_silent("TD206", _tl({1: 0.6, 2: 60.0}))
    assert_silent("TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: float("inf")}))
