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
    losses[21:] = [2.5, 2.0, 1.6] + [0.97 - 0.002 * i for i in range(6)]  # never back to 0.8
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.evidence["kind"] == "spike" and f.step == 21
    assert f.severity is Severity.WARNING
    rec = f.evidence["recovery"]
    assert rec["recovered"] is False and rec["progress_undone"] > 0.5
    assert "never came back" in f.cause


def test_spike_the_run_comes_back_from_after_a_few_bad_steps_is_info():
    # the progress lost for three steps, then back on its trend to the end: no lasting harm
    losses = [1.0 - 0.01 * i for i in range(30)]
    losses[20] = 4.0
    losses[21:24] = [2.5, 2.0, 1.6]
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.evidence["kind"] == "spike" and f.severity is Severity.INFO
    assert f.evidence["recovery"]["recovered"] is True
    assert "the run came back" in f.cause


def test_a_later_spike_the_run_never_came_back_from_is_not_hidden_by_an_earlier_one():
    losses = [1.0 - 0.01 * i for i in range(60)]
    losses[20] = 4.0  # one batch, back at once
    losses[40] = 4.0
    losses[41:] = [0.95] * 19  # this one undid the training
    f = assert_fires("TD210", _tl(losses, _grads(20.0)))
    assert f.severity is Severity.WARNING and f.step == 41


def test_a_tiny_level_that_ends_a_little_higher_is_not_undone_training():
    # fit to ~0.02 from 1.8, a spike, then the last steps at 0.1: above the level before the
    # spike, but a few percent of the progress made
    losses = [1.8 * 0.7**i for i in range(12)] + [0.02, 0.01, 0.03] * 6 + [1.9]
    losses += [0.02] * 10 + [0.1] * 8
    f = assert_fires("TD210", _tl(losses))
    assert f.evidence["kind"] == "spike" and f.severity is Severity.INFO
    assert f.evidence["recovery"]["recovered"] is True


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


# -- the same program, unseeded: runs that read as a warning or an error before ----------------
# Per-step losses of pytorch/vision's classification reference at lr 0.00625 (resnet18 from
# scratch, batches of 16, 6 classes, 54 steps) under `traindoctor run`, 4 decimals.
# fmt: off
# A spike at step 26 (2.57), ten bad steps after it, then back to ~0.02 by the end.
EXCURSION = [
    1.5552, 1.9356, 1.9248, 1.6566, 1.5541, 1.2301, 0.8678, 0.778, 0.5752, 0.7859, 0.4499,
    0.2087, 0.4045, 0.1493, 0.5406, 0.1004, 0.0341, 0.0865, 0.0321, 0.0097, 0.1146, 0.1487,
    0.2936, 0.018, 0.0439, 2.5697, 0.0094, 2.3389, 0.3302, 1.0271, 0.8106, 0.2931, 1.4878,
    0.0418, 1.5513, 0.0186, 0.0208, 0.0799, 0.0322, 0.0127, 0.2717, 0.3179, 0.1009, 0.0124,
    0.0112, 0.6648, 0.0019, 0.0224, 0.0077, 0.0025, 0.0196, 0.1866, 0.0317, 0.7025,
]
# Fit to ~0.001, then three of the last four batches above 1.9, between two still at ~0.01.
LAST_BATCHES = [
    1.9229, 1.6469, 1.6246, 1.5085, 1.8991, 1.5707, 1.2107, 0.8172, 0.5611, 1.0368, 0.3388,
    0.3099, 0.7953, 0.2271, 0.1511, 0.1623, 0.0623, 0.0574, 0.0439, 0.2056, 0.2096, 0.0326,
    0.511, 0.0043, 0.0138, 0.1767, 0.0149, 0.1086, 0.0881, 0.0042, 0.0048, 0.0055, 0.094,
    0.0085, 0.1977, 0.0019, 0.4623, 0.0014, 0.0008, 0.305, 0.0039, 0.0008, 0.9632, 0.0997,
    0.0665, 0.0131, 0.6938, 0.0082, 0.0062, 0.0945, 5.7788, 0.0089, 1.9939, 3.0416,
]
# fmt: on


def test_a_spike_followed_by_bad_steps_the_run_comes_back_from_is_info():
    f = assert_fires("TD210", _floor_tl(EXCURSION))
    assert f.evidence["kind"] == "spike" and f.step == 26 and f.severity is Severity.INFO
    assert f.evidence["recovery"]["recovered"] is True


def test_a_few_high_batches_at_the_very_end_are_no_divergence():
    found = run_rule("TD210", _floor_tl(LAST_BATCHES))
    assert [f for f in found if f.severity is not Severity.INFO] == [], found
    # the same end held for a tenth of the run, every batch high: a divergence
    held = LAST_BATCHES[:-5] + [2.1, 5.8, 1.9, 2.0, 3.0]
    f = assert_fires("TD210", _floor_tl(held))
    assert f.evidence["kind"] == "divergence" and f.severity is Severity.ERROR


def test_a_short_run_whose_loss_blew_up_before_the_script_stopped_it():
    """Six steps, the loss x1e21 (the script's own NaN check exits before the next backward):
    too short for the windows, still a divergence."""
    losses = [5.38, 5.31, 1.91, 58.8, 31620.0, 5.6e21]
    f = assert_fires("TD210", _tl(losses))
    assert f.severity is Severity.ERROR and f.evidence["kind"] == "divergence"
    assert f.step == 4


def test_a_short_run_of_unknown_course_blown_up_a_millionfold_is_a_warning():
    losses = [5.38, 5.31, 1.91, 58.8, 31620.0, 5.6e21]
    f = assert_fires("TD210", _tl(losses, loss_event=None))
    assert f.severity is Severity.WARNING
    # a thousandfold only: info for a loss whose course is unknown
    f = assert_fires("TD210", _tl([1.0, 1.1, 3.0, 40.0, 1500.0], loss_event=None))
    assert f.severity is Severity.INFO


def test_a_short_run_with_a_noisy_or_falling_end_is_silent():
    assert_silent("TD210", _tl([1.0, 0.9, 2000.0, 1800.0, 3000.0]))  # not rising step by step
    assert_silent("TD210", _tl([1.0, 0.9, 0.8, 0.7, 0.6]))
    assert_silent("TD210", _tl([1.0, 2.0, 4.0, 8.0, 16.0]))  # 16x: within a short run's reach
