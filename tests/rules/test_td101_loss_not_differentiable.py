"""TD101 loss-not-differentiable on hand-built timelines."""

from __future__ import annotations

from traindoctor.testing import assert_fires, assert_silent, make_timeline

PARAMS = ["fc.weight", "fc.bias"]


def _event(step=1, **over):
    e = {
        "kind": "loss_not_differentiable",
        "step": step,
        "via": "backward",
        "requires_grad": True,
        "is_leaf": True,
        "grad_enabled": True,
        "inference": False,
        "model_output": {"tensors": 1, "requires_grad": True, "grad_fn": "AddmmBackward0"},
        "grad_fn": None,
        "leaves": None,
        "source": "train.py:21",
        "code": "loss = torch.tensor(loss.item(), requires_grad=True)",
    }
    e.update(over)
    return e


def _tl(*events, **kw):
    steps = {1: {"loss.backward": [2.3]}, 2: {"loss.backward": [2.3]}}
    return make_timeline(params=PARAMS, steps=steps, events=events, **kw)


def test_fires_when_graph_cut_between_model_output_and_loss():
    f = assert_fires("TD101", _tl(_event(step=1), _event(step=2)))
    assert f.step == 1
    assert f.where.source == "train.py:21"
    assert f.evidence["grad_fn"] is None
    assert f.evidence["model_output_grad_fn"] == "AddmmBackward0"
    assert f.evidence["times_seen"] == 2
    assert f.evidence["requires_grad"] is True
    assert "AddmmBackward0" in f.cause
    assert "re-wrapped as a leaf" in f.cause
    assert "has no grad_fn" in f.title and "backward()" in f.title
    assert f.severity.value == "error"


def test_healthy_twin_is_silent():
    assert_silent("TD101", _tl())


def test_first_event_decides_step_and_source():
    f = assert_fires("TD101", _tl(_event(step=3, source="a.py:1"), _event(step=5, source="b.py:2")))
    assert (f.step, f.where.source) == (3, "a.py:1")


def test_cause_no_grad():
    f = assert_fires("TD101", _tl(_event(grad_enabled=False, requires_grad=False, is_leaf=True)))
    assert "torch.no_grad()" in f.cause
    assert f.evidence["grad_enabled"] is False


def test_cause_inference_mode():
    f = assert_fires("TD101", _tl(_event(inference=True, grad_enabled=False)))
    assert "inference" in f.cause


def test_cause_nothing_trainable_points_to_td110():
    tl = make_timeline(
        params=PARAMS,
        frozen=PARAMS,
        events=[_event(model_output={"grad_fn": None}, requires_grad=False, is_leaf=True)],
    )
    f = assert_fires("TD101", tl)
    assert "TD110" in f.cause


def test_graph_that_reaches_no_parameter():
    e = _event(grad_fn="MseLossBackward0", leaves=[[8, 1]], is_leaf=False)
    f = assert_fires("TD101", _tl(e))
    assert "reaches no parameter" in f.title
    assert f.evidence["graph_leaves"] == [[8, 1]]
    assert f.evidence["grad_fn"] == "MseLossBackward0"
    assert "(8, 1)" in f.cause


def test_logged_loss_says_doc_log():
    f = assert_fires("TD101", _tl(_event(via="log")))
    assert "doc.log()" in f.title


def test_leaf_without_model_output():
    f = assert_fires("TD101", _tl(_event(model_output=None)))
    assert "leaf tensor" in f.cause


def test_detached_copy_passed_to_doc_log_is_silent_once_backward_ran():
    # doc.log(loss=loss.detach()) while backward() runs on the real loss: fine.
    tl = make_timeline(
        params=PARAMS,
        steps={1: {"backward.count": 1}, 2: {"backward.count": 1}},
        events=[_event(via="log")],
    )
    assert_silent("TD101", tl)


def test_backward_event_wins_over_logged_copies():
    tl = make_timeline(
        params=PARAMS,
        steps={1: {"backward.count": 1}},
        events=[_event(step=1, via="log", source="log.py:1"), _event(step=2, source="bw.py:2")],
    )
    f = assert_fires("TD101", tl)
    assert (f.step, f.where.source) == (2, "bw.py:2")
    assert "backward()" in f.title
