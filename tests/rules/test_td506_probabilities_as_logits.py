import math

from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.rules.setup.probabilities_as_logits import double_softmax_floor
from traindoctor.testing import assert_fires, assert_silent

CE = {"fn": "cross_entropy", "classes": 4, "producer": ["SoftmaxBackward0"]}


def _probs(n=3):
    return {
        s: {"in_min": 0.1, "in_max": 0.5, "rowsum_dev": 1e-7, "loss": 1.3} for s in range(1, n + 1)
    }


def test_floor_is_the_one_hot_minimum():
    # brute force: CE of log_softmax over a one-hot probability row
    c = 4
    row = [1.0] + [0.0] * (c - 1)
    ce = -row[0] + math.log(sum(math.exp(v) for v in row))
    assert abs(double_softmax_floor(c) - ce) < 1e-12


def test_fires_on_softmax_rows():
    f = assert_fires("TD506", site_timeline(CE, _probs()))
    assert f.evidence["loss_floor"] == round(math.log1p(3 / math.e), 6)
    assert f.where.source == "train.py:12"


def test_silent_on_logits_and_on_soft_targets():
    logits = {s: {"in_min": -2.0, "in_max": 3.0, "rowsum_dev": 2.0} for s in (1, 2, 3)}
    assert_silent("TD506", site_timeline(CE, logits))
    # log-probabilities as input (distillation's kl_div): not in [0, 1]
    kd = {"fn": "kl_div", "producer": ["LogSoftmaxBackward0"]}
    assert_silent("TD506", site_timeline(kd, {1: {"in_min": -3.0, "in_max": -0.1}}))


def test_one_step_outside_the_simplex_is_enough_to_stay_silent():
    stats = _probs()
    stats[2]["rowsum_dev"] = 0.3
    assert_silent("TD506", site_timeline(CE, stats))


def test_sigmoid_outputs_into_cross_entropy_have_the_same_floor():
    # logits = torch.sigmoid(head(x)) fed to CrossEntropyLoss: rows do not sum to 1, but
    # every logit is in [0, 1], so CE cannot go below log(1 + (C-1)/e) (0.744 over 4 classes)
    sig = {**CE, "producer": ["SigmoidBackward0"]}
    stats = {s: {"in_min": 0.02, "in_max": 0.97, "rowsum_dev": 0.8} for s in (1, 2, 3)}
    f = assert_fires("TD506", site_timeline(sig, stats))
    assert "(made by `SigmoidBackward0`)" in f.title and "sigmoid's output" in f.cause
    # the same values from another op (raw scores that happen to lie in [0, 1]): silent
    assert_silent("TD506", site_timeline({**CE, "producer": ["AddmmBackward0"]}, stats))


def test_sigmoid_into_bce_with_logits():
    ev = {"fn": "binary_cross_entropy_with_logits", "producer": ["SigmoidBackward0"]}
    stats = {1: {"in_min": 0.01, "in_max": 0.99, "t_mean": 0.5}}
    f = assert_fires("TD506", site_timeline(ev, stats))
    assert (
        abs(f.evidence["loss_floor"] - (0.5 * math.log1p(math.exp(-1)) + 0.5 * math.log(2))) < 1e-6
    )
    # multi-label logits: values outside [0, 1]
    assert_silent(
        "TD506",
        site_timeline(
            {**ev, "producer": ["AddmmBackward0"]},
            {1: {"in_min": -4.0, "in_max": 5.0, "t_mean": 0.3}},
        ),
    )


NLL = {"fn": "nll_loss", "classes": 10, "producer": ["SoftmaxBackward0"]}


def test_softmax_into_nll_loss():
    stats = {s: {"in_min": 0.01, "in_max": 0.4, "rowsum_dev": 1e-7, "loss": -0.1} for s in (2, 3)}
    f = assert_fires("TD506", site_timeline(NLL, stats))
    assert f.evidence["loss_fn"] == "nll_loss"
    assert f.evidence["loss_range"] == [-1.0, 0.0]


def test_log_softmax_into_nll_loss_is_silent():
    stats = {s: {"in_min": -5.0, "in_max": -0.01, "rowsum_dev": 9.0, "loss": 2.3} for s in (2, 3)}
    log_probs = {**NLL, "producer": ["LogSoftmaxBackward0"]}
    assert_silent("TD506", site_timeline(log_probs, stats))
    # Values in [0, 1] that are neither softmax rows nor a sigmoid: not called probabilities.
    odd = {s: {"in_min": 0.0, "in_max": 0.9, "rowsum_dev": 2.0} for s in (2, 3)}
    assert_silent("TD506", site_timeline({**NLL, "producer": ["ReluBackward0"]}, odd))


NLL = {"fn": "nll_loss", "classes": 7, "producer": ["IndexBackward0"]}


def test_nll_loss_on_raw_scores_fires_and_log_probabilities_do_not():
    # the log_softmax left out of a classifier trained with NLLLoss
    raw = {s: {"in_min": -3.0, "in_max": 2.5 + s, "rowsum_dev": 4.0, "loss": -s} for s in (1, 2, 4)}
    f = assert_fires("TD506", site_timeline(NLL, raw))
    assert "raw scores" in f.title and f.evidence["input_max"] == 6.5
    logp = {s: {"in_min": -9.0, "in_max": -0.01, "rowsum_dev": 0.9} for s in (1, 2, 4)}
    assert_silent("TD506", site_timeline(NLL, logp))
    # one measured step at or below 0 is enough to stay silent
    raw[2]["in_max"] = 0.0
    assert_silent("TD506", site_timeline(NLL, raw))


def test_nll_loss_on_log_probabilities_of_another_dim():
    # log_softmax over a graph's nodes (dim=0), then the training nodes picked by a mask: each
    # row is <= 0, but its probabilities over the 7 classes sum to ~7/2708
    wrong = {
        s: {"in_min": -9.0, "in_max": -7.5, "rowsum_dev": 7.0, "lse_dev": 5.96, "loss": 7.9}
        for s in (1, 2, 4)
    }
    f = assert_fires("TD506", site_timeline(NLL, wrong))
    assert "not normalized over its 7 classes" in f.title
    assert f.evidence["min_row_logsumexp_deviation"] == 5.96
    # log_softmax over the classes: logsumexp 0 up to float32 rounding
    right = {s: {**v, "lse_dev": 2e-7} for s, v in wrong.items()}
    assert_silent("TD506", site_timeline(NLL, right))
    # one measured step normalized is enough to stay silent
    wrong[2]["lse_dev"] = 1e-6
    assert_silent("TD506", site_timeline(NLL, wrong))


def test_a_log_softmax_over_another_dim_fed_as_is_is_left_to_td508():
    wrong = {s: {"in_min": -9.0, "in_max": -7.5, "lse_dev": 5.96} for s in (1, 2, 4)}
    made = {**NLL, "producer": ["LogSoftmaxBackward0", "AddmmBackward0"]}
    assert_silent("TD506", site_timeline(made, wrong))


def test_low_precision_softmax_rows_sum_to_one_within_their_rounding():
    # A bfloat16 softmax row of 4 classes sums to 1 within 2^-9 (Lightning "bf16-mixed",
    # torch.autocast on CPU), over float32's tolerance: judged by the values' dtype.
    stats = {s: {**v, "rowsum_dev": 2.0**-9} for s, v in _probs().items()}
    assert_fires("TD506", site_timeline({**CE, "input_dtype": "bfloat16"}, stats))
    # The softmax in bfloat16, cast to float32 before the loss: its rounding is bfloat16's.
    cast = {**CE, "input_dtype": "float32", "values_dtype": "bfloat16"}
    assert_fires("TD506", site_timeline(cast, stats))
    nll = {"fn": "nll_loss", "classes": 4, "producer": ["SoftmaxBackward0"]}
    assert_fires("TD506", site_timeline({**nll, "input_dtype": "bfloat16"}, stats))
    # float32 values that far from 1 are no softmax rows; nor bfloat16 ones a few % off.
    assert_silent("TD506", site_timeline({**CE, "input_dtype": "float32"}, stats))
    off = {s: {**v, "rowsum_dev": 0.05} for s, v in _probs().items()}
    assert_silent("TD506", site_timeline({**CE, "input_dtype": "bfloat16"}, off))
