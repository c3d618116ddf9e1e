"""TD210 loss-spike-or-divergence on hand-built timelines."""

from __future__ import annotations

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline, run_rule

PARAMS = ["enc.weight", "head.weight"]


# A supervised regression on fixed targets: a loss meant to fall.
MSE = {
    "kind": "loss_input",
    "step": 1,
    "site": 0,
    "fn": "mse_loss",
    "classes": None,
    "input_shape": [64, 1],
    "target_float": True,
    "source": "train.py:30",
}
STATS = {"0.t_mean": 0.1, "0.t_min": -2.0, "0.t_max": 2.0}


def _tl(losses, grads=None, loss_event=MSE, optimizers=None, sites=()):
    steps = {}
    for i, v in enumerate(losses, 1):
        steps[i] = {"loss.backward": [v], "optim.lr": {"opt0/group0": 0.8}}
        if loss_event is not None and (i <= 3 or i % 5 == 0):
            steps[i]["loss_inputs.observed"] = [0]
            steps[i]["loss_inputs.stats"] = dict(STATS)
    for s, g in (grads or {}).items():
        steps[s]["grads.norm"] = g
    events = [loss_event] if loss_event is not None else []
    events += [
        {"kind": "backward_site", "step": 1, "site": i, "source": s} for i, s in enumerate(sites)
    ]
    return make_timeline(params=PARAMS, steps=steps, events=events, optimizers=optimizers)


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
    assert "judged: supervised mse_loss" in f.cause


def test_spike_that_undoes_training_is_a_warning():
    losses = [1.0 - 0.01 * i for i in range(30)]
    losses[20] = 4.0
    losses[21:24] = [2.5, 2.0, 1.6]  # the run lost its progress for a while
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.evidence["kind"] == "spike" and f.step == 21
    assert f.severity is Severity.WARNING


def test_spike_the_run_shrugs_off_is_info():
    # one batch far above the rest, back to the trend at once (heavy-tailed data)
    losses = [1.0 - 0.01 * i for i in range(30)]
    losses[20] = 4.0
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.evidence["kind"] == "spike" and f.step == 21
    assert f.severity is Severity.INFO


def test_healthy_decrease_and_noise_are_silent():
    assert_silent("TD210", _tl([2.0 * 0.95**i + 0.02 * (i % 3) for i in range(60)]))
    # late-training noise: a 3x relative jump of a small loss is not a spike
    losses = [0.05 + 0.01 * (i % 4) for i in range(40)]
    losses[30] = 0.2
    assert_silent("TD210", _tl([1.4] * 3 + losses))


def test_nonfinite_losses_are_left_to_td201():
    assert_silent("TD210", _tl([1.0] * 20 + [float("nan")] * 10))


def test_a_jump_in_the_first_steps_counts_from_the_loss_before_any_update():
    losses = [3.3] + [60.0 + 5 * (i % 4) for i in range(39)]
    f = assert_fires("TD210", _tl(losses))
    assert f.evidence["kind"] == "divergence" and f.step == 2
    assert f.evidence["loss_before"] == 3.3


def test_a_rising_hand_written_loss_is_info_and_its_spikes_are_not_judged():
    rising = [1.0 + 0.1 * i for i in range(40)]  # an episode-summed RL loss as episodes grow
    f = assert_fires("TD210", _tl(rising, loss_event=None))
    assert f.severity is Severity.INFO
    assert "not judged a fault" in f.cause and "overshoot" not in f.cause
    spiky = [1.0 - 0.01 * i for i in range(30)]
    spiky[20] = 4.0
    assert_silent("TD210", _tl(spiky, loss_event=None))


def test_models_trained_against_each_other_are_not_judged():
    from traindoctor.testing import optimizer_facts

    opts = [optimizer_facts(["enc.weight"]), optimizer_facts(["head.weight"])]
    rising = [0.7 + 0.05 * i for i in range(40)]
    assert_silent("TD210", _tl(rising, optimizers=opts, sites=("gan.py:26", "gan.py:30")))
    # one loss stepped by two optimizers (per-group optimizers): still judged
    f = assert_fires("TD210", _tl(rising, optimizers=opts, sites=("train.py:40",)))
    assert f.severity is Severity.ERROR


def test_a_rising_hand_written_loss_with_huge_steps_is_a_warning():
    # the objective is unknown, but every step moves the weights by 2x their initial norm
    rising = [1.0 + 0.1 * i for i in range(40)]
    tl = _tl(rising, loss_event=None)
    for s in (1, 2, 3, 10, 20, 30):
        tl.record(s, "params.norm", dict.fromkeys(PARAMS, 1.0))
        tl.record(s, "params.update", dict.fromkeys(PARAMS, 2.0))
    f = assert_fires("TD210", tl)
    assert f.severity is Severity.WARNING


def test_spike_at_the_last_step_is_info():
    # nothing after it says whether the run recovered
    losses = [1.0 - 0.01 * i for i in range(30)]
    losses[29] = 4.0
    f = assert_fires("TD210", _tl(losses, _grads(29.0)))
    assert f.evidence["kind"] == "spike" and f.severity is Severity.INFO


# -- a loss fit to ~0 that stays noisy -------------------------------------------------------
# The per-step losses of pytorch/vision's classification reference (resnet18 from scratch,
# batches of 16, SGD lr 0.02, 6 classes), as measured under `traindoctor run`. Its lowest
# 5-step median is 0.001 and its last 0.04: a 38x ratio of a tiny level, 2% of the starting
# loss, which was reported as an ERROR "diverges".
# fmt: off
MEASURED = [
    1.855, 1.819, 1.833, 1.647, 0.759, 1.02, 0.451, 0.304, 0.246, 0.975, 0.165, 0.018, 2.294,
    1.011, 2.318, 5.534, 0.659, 3.097, 2.97, 2.469, 0.103, 0.324, 0.728, 1.465, 1.441, 4.763,
    0.201, 0.92, 0.936, 0.466, 0.342, 0.374, 0.026, 0.257, 0.086, 0.017, 0.011, 0.009, 0.001,
    0.001, 0.839, 0.001, 0.343, 0.001, 0.05, 0.233, 0.003, 0.031, 0.005, 0.041, 0.284, 0.0,
    0.041, 0.027,
]

def _floor_tl(losses):
    steps = {
        i: {"loss.train": [v], "optim.lr": {"opt0/group0": 0.02}, "loss_inputs.observed": [0]}
        for i, v in enumerate(losses, 1)
    }
    return make_timeline(params=["fc.weight"], steps=steps, events=[SUPERVISED_CE])

def test_a_loss_fit_to_zero_that_drifts_a_few_percent_is_no_divergence():
    found = run_rule("TD210", _floor_tl(MEASURED))
    assert [f for f in found if f.evidence["kind"] == "divergence"] == [], found

def test_a_climb_back_to_the_starting_level_is_still_a_divergence():
    # the same start, fit to ~0.005, then back above 2 for the last steps
    losses = MEASURED[:30] + [0.005] * 10 + [2.5, 2.2, 3.0, 2.8, 2.6, 2.4, 3.1, 2.9, 2.7, 2.5]
    f = assert_fires("TD210", _floor_tl(losses))
    assert f.evidence["kind"] == "divergence" and f.severity is Severity.ERROR

def test_a_rise_from_the_floor_by_half_the_start_is_judged():
    # lowest level 0.01, the last steps at 1.2: 0.65x the starting 1.85, a divergence from the
    # lowest level
    losses = [1.85, 1.8, 1.7, 1.2, 0.8, 0.4, 0.2] + [0.01] * 20 + [1.2] * 10
    f = assert_fires("TD210", _floor_tl(losses))
    assert f.evidence["kind"] == "divergence"

def test_a_drift_below_half_the_start_from_a_tiny_floor_is_silent_as_divergence():
    losses = [1.85, 1.8, 1.7, 1.2, 0.8, 0.4, 0.2] + [0.01] * 20 + [0.3] * 10
    assert_silent("TD210", _floor_tl(losses))
