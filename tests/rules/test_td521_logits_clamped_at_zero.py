from tests.rules._loss_inputs_tl import site_timeline
from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent

CE = {
    "fn": "cross_entropy",
    "classes": 10,
    "producer": ["ReluBackward0", "AddmmBackward0"],
    "clamp": {"op": "ReluBackward0", "module": "head"},
}


def _stats(rows=0.0, zero=0.45, tgt=0.4):
    return {
        s: {"in_min": 0.0, "in_max": 3.0, "clamp_zero": zero, "clamp_rows": rows, "clamp_tgt": tgt}
        for s in (1, 2, 3)
    }


def test_fires_as_a_warning_on_logits_at_zero():
    f = assert_fires("TD521", site_timeline(CE, _stats()))
    assert f.severity is Severity.WARNING
    assert f.where.module == "head" and f.where.op == "ReluBackward0"
    assert "45% of them exactly 0" in f.title and "40% of the rows" in f.cause


def test_rows_all_zero_make_it_an_error():
    stats = _stats()
    stats[3]["clamp_rows"] = 0.25
    f = assert_fires("TD521", site_timeline(CE, stats))
    assert f.severity is Severity.ERROR and "first at step 3" in f.cause


def test_under_the_log_softmax_of_nll_loss():
    nll = {**CE, "fn": "nll_loss", "producer": ["LogSoftmaxBackward0", "ReluBackward0"]}
    f = assert_fires("TD521", site_timeline(nll, _stats()))
    assert "under the log_softmax" in f.cause


def test_silent_when_the_clamp_never_bites_or_is_not_on_the_logits():
    assert_silent("TD521", site_timeline(CE, _stats(zero=0.0, tgt=0.0)))
    no_clamp = {k: v for k, v in CE.items() if k != "clamp"}
    assert_silent("TD521", site_timeline({**no_clamp, "producer": ["AddmmBackward0"]}, _stats()))
    # a regression loss is not a class loss
    assert_silent("TD521", site_timeline({**CE, "fn": "mse_loss", "classes": None}, _stats()))
