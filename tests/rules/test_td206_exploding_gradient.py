"""TD206 exploding-gradient on hand-built timelines."""

from __future__ import annotations

from tests.rules._loss_inputs_tl import SUPERVISED_CE
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "enc.bias", "head.weight", "head.bias"]


# A supervised cross-entropy whose loss does not fall through the jump: what TD206 judges at
# warning/error (a loss not meant to fall, or falling through the jump, is info).
CE = SUPERVISED_CE


def _tl(head_norms, enc=0.5, losses=None, loss_event=CE):
    steps = {}
    for step, v in head_norms.items():
        steps[step] = {
            "grads.norm": {"enc.weight": enc, "enc.bias": 0.0, "head.weight": v, "head.bias": 0.0},
            "optim.lr": {"opt0/group0": 0.8},
        }
    for step in range(1, max(head_norms) + 1):
        row = steps.setdefault(step, {})
        row["loss.train"] = [(losses or {}).get(step, 2.0)]
        if loss_event is not None:
            row["loss_inputs.observed"] = [0]
    events = [loss_event] if loss_event is not None else []
    return make_timeline(params=PARAMS, steps=steps, events=events)


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


# The seq2seq tutorial (GRU encoder, Bahdanau attention decoder, two Adams): the attention
# weights get almost no gradient while the scores are uniform, then the gradient rises as they
# differentiate. Measured per-layer gradient and weight norms (steps 1, 2, 3, 10).
SEQ2SEQ_GRADS = {
    "enc.gru": [0.347, 0.398, 0.371, 0.205],
    "dec.out": [1.06, 1.23, 1.14, 0.652],
    "dec.gru": [1.12, 1.22, 0.988, 0.425],
    "dec.attention.Va": [0.00725, 0.0822, 0.141, 0.0974],
    "dec.attention.Wa": [3.9e-4, 6.7e-4, 1.7e-3, 1.81e-2],
}
SEQ2SEQ_WEIGHTS = {
    "enc.gru": 16.0,
    "dec.out": 4.1,
    "dec.gru": 19.7,
    "dec.attention.Va": 0.56,
    "dec.attention.Wa": 6.54,
}


def _layers_tl(grads, weights, steps=(1, 2, 3, 10)):
    names = [f"{layer}.weight" for layer in grads]
    return make_timeline(
        params=names,
        steps={
            s: {
                "grads.norm": {f"{layer}.weight": g[i] for layer, g in grads.items()},
                "params.norm": {f"{layer}.weight": w for layer, w in weights.items()},
                "optim.lr": {"opt0/group0": 1e-3},
            }
            for i, s in enumerate(steps)
        },
    )


def test_a_gradient_rising_from_far_below_the_other_layers_is_not_an_explosion():
    assert_silent("TD206", _layers_tl(SEQ2SEQ_GRADS, SEQ2SEQ_WEIGHTS))
    # without the weight norms, the layer is judged against its own history (as before)
    f = assert_fires("TD206", _tl({1: 3.9e-4, 2: 6.7e-4, 3: 1.7e-3, 10: 1.81e-2}))
    assert f.where.module == "head"


def test_a_rising_layer_that_jumps_far_above_the_other_layers_still_explodes():
    grads = {**SEQ2SEQ_GRADS, "dec.attention.Wa": [3.9e-4, 6.7e-4, 1.7e-3, 50.0]}
    f = assert_fires("TD206", _layers_tl(grads, SEQ2SEQ_WEIGHTS))
    assert f.where.module == "dec.attention.Wa" and f.step == 10


def test_every_layer_rising_together_is_still_an_explosion():
    # lr too large: all layers grow x1.4 per step from an ordinary level, then jump
    grads = {
        "a": [0.5, 0.7, 1.0, 40.0],
        "b": [0.2, 0.28, 0.4, 16.0],
        "c": [1.0, 1.4, 2.0, 80.0],
    }
    weights = {"a": 5.0, "b": 5.0, "c": 5.0}
    f = assert_fires("TD206", _layers_tl(grads, weights))
    assert f.step == 10


def test_a_jump_the_loss_falls_through_is_info():
    # the network leaving its init: gradients rise 50x while the loss keeps falling
    losses = {s: 2.0 * 0.97**s for s in range(1, 31)}
    f = assert_fires(
        "TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}, losses=losses)
    )
    assert f.severity is Severity.INFO
    assert f.evidence["loss_before_after"][1] < f.evidence["loss_before_after"][0]


def test_a_jump_on_a_loss_not_known_to_fall_is_info():
    f = assert_fires(
        "TD206", _tl({1: 0.6, 2: 0.7, 3: 0.65, 10: 0.7, 20: 35.0, 30: 40.0}, loss_event=None)
    )
    assert f.severity is Severity.INFO
