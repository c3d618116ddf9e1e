"""TD210 loss-spike-or-divergence on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "head.weight"]


def _tl(losses, grads=None):
    steps = {}
    for i, v in enumerate(losses, 1):
        steps[i] = {"loss.backward": [v], "optim.lr": {"opt0/group0": 0.8}}
    for s, g in (grads or {}).items():
        steps[s]["grads.norm"] = g
    return make_timeline(params=PARAMS, steps=steps)


def _grads(head_at_20):
    g = {s: {"enc.weight": 0.5, "head.weight": 0.6} for s in (1, 2, 3, 10)}
    g[20] = {"enc.weight": 0.6, "head.weight": head_at_20}
    return g


def test_divergence_with_the_leading_layer():
    losses = [0.8 * 0.98**i for i in range(12)] + [0.8 * 1.4**i for i in range(28)]
    f = assert_fires("TD210", _tl(losses, _grads(30.0)))
    assert f.severity is Severity.ERROR
    assert f.evidence["kind"] == "divergence"
    assert f.where.module == "head"
    assert f.evidence["leading_layer"]["step"] == 20
    assert 13 <= f.step <= 16


def test_spike_is_a_warning():
    losses = [1.0 - 0.01 * i for i in range(30)]
    losses[20] = 4.0
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.evidence["kind"] == "spike" and f.step == 21
    assert f.severity is Severity.WARNING


def test_healthy_decrease_and_noise_are_silent():
    assert_silent("TD210", _tl([2.0 * 0.95**i + 0.02 * (i % 3) for i in range(60)]))
    # late-training noise: a 3x relative jump of a small loss is not a spike
    losses = [0.05 + 0.01 * (i % 4) for i in range(40)]
    losses[30] = 0.2
    assert_silent("TD210", _tl([1.4] * 3 + losses))


def test_nonfinite_losses_are_left_to_td201():
    assert_silent("TD210", _tl([1.0] * 20 + [float("nan")] * 10))
