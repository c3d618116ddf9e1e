"""TD213 loss-unbounded-below on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["enc.weight", "dec.weight"]
BCE = {
    "kind": "loss_input",
    "step": 1,
    "site": 0,
    "fn": "binary_cross_entropy",
    "source": "train.py:40",
}
BACKWARD = {"kind": "backward_call", "step": 1, "source": "train.py:44"}


def _tl(losses, standard=None, optimizers=None):
    steps = {}
    for i, v in enumerate(losses, 1):
        steps[i] = {"loss.backward": [v]}
        if standard is not None and (i <= 3 or i % 5 == 0):
            steps[i]["loss_inputs.stats"] = {"0.loss": standard(i)}
    return make_timeline(params=PARAMS, steps=steps, events=(BCE, BACKWARD), optimizers=optimizers)


def test_kl_subtracted_is_an_error_with_the_standard_loss_that_got_worse():
    losses = [600.0 - 10.0 * 3**i if i < 12 else -1e9 * i for i in range(40)]
    f = assert_fires("TD213", _tl(losses, standard=lambda i: 500.0 + 100 * i))
    assert f.severity is Severity.ERROR
    assert f.where.source == "train.py:44"
    assert "`binary_cross_entropy`" in f.cause and "train.py:40" in f.cause
    assert "recon + KLD" in f.fix
    assert f.evidence["last_median"] < -1e9


def test_healthy_vae_is_silent():
    losses = [600.0 * 0.97**i + 50 for i in range(40)]
    assert_silent("TD213", _tl(losses, standard=lambda i: 550.0 * 0.97**i))


def test_density_below_zero_by_design_is_silent():
    # A flow's negative log-likelihood: from +5 to -3 nats, not a hundredfold past zero.
    losses = [5.0 - 8.0 * i / 39 for i in range(40)]
    assert_silent("TD213", _tl(losses))


def test_fit_that_improves_beside_an_unbounded_total_is_info():
    losses = [1.0 - 10 ** (i / 4) for i in range(40)]
    f = assert_fires("TD213", _tl(losses, standard=lambda i: 1.0 / i))
    assert f.severity is Severity.INFO


def test_no_standard_loss_is_info():
    losses = [1.0 - 10 ** (i / 4) for i in range(40)]
    f = assert_fires("TD213", _tl(losses))
    assert f.severity is Severity.INFO and "no standard loss" in f.cause


def test_short_runs_are_not_judged():
    assert_silent("TD213", _tl([1.0 - 1e6 * i for i in range(10)], standard=lambda i: i))


def test_several_optimizers_are_not_judged():
    # A WGAN's critic score runs off below zero by design; two optimizers train two players.
    from traindoctor.testing import optimizer_facts

    opts = [optimizer_facts(["enc.weight"]), optimizer_facts(["dec.weight"])]
    losses = [1.0 - 10 ** (i / 4) for i in range(40)]
    assert_silent("TD213", _tl(losses, standard=lambda i: 1.0 + i, optimizers=opts))


def test_a_loss_that_ends_above_minus_one_is_silent():
    losses = [1e-4 - 0.02 * i for i in range(40)]  # from ~0 to -0.8: small, not unbounded
    assert_silent("TD213", _tl(losses, standard=lambda i: 1.0 + i))


def test_the_cause_says_what_was_measured_and_names_the_kl_as_the_common_cause_only():
    # A NegGrad+ unlearning run (retain CE - forget CE) diverges the same way: the words say
    # what was measured, and the KL sign is named as the most common cause, not the cause.
    losses = [-0.9 - 3**i if i < 30 else -1e15 * i for i in range(40)]
    f = assert_fires("TD213", _tl(losses, standard=lambda i: 1.6 + 1e3 * i))
    assert "no better" in f.cause and "below zero" in f.cause
    assert "which term is not measured" in f.cause
    assert "most often a KL divergence" in f.cause
    assert "gradient ascent on a forget set" in f.cause
