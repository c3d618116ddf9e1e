"""TD519 softmax-over-batch on hand-built timelines (the softmax_call events)."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.testing import assert_fires, assert_silent, make_timeline


def _call(step, shape, rank, lead, grad):
    return {
        "kind": "softmax_call",
        "step": step,
        "module": "3",
        "cls": "Softmax",
        "dim": 0,
        "shape": shape,
        "model_input_rank": rank,
        "model_input_lead": lead,
        "grad": grad,
    }


def _tl(*events):
    return make_timeline(params=["0.weight"], steps={1: {}, 2: {}}, events=events)


def test_a_policy_softmax_written_for_one_state_and_trained_on_a_batch():
    f = assert_fires("TD519", _tl(_call(1, [2], 1, 4, False), _call(1, [17, 2], 2, 17, True)))
    assert f.severity is Severity.WARNING
    assert f.where.module == "3"
    assert "the batch of 17 examples (17, 2)" in f.title
    assert "dim=-1" in f.fix


def test_batched_calls_only_are_not_judged():
    # Always batched: dim 0 may be a set of candidates by design (a listwise softmax).
    assert_silent("TD519", _tl(_call(1, [17, 2], 2, 17, True)))


def test_a_sequence_first_model_is_silent():
    # Unbatched input (T, E): its softmax over dim 0 of (T,) and (T, B) is over time both times.
    assert_silent("TD519", _tl(_call(1, [9], 2, 9, True), _call(2, [9, 4], 3, 9, True)))


def test_a_batched_call_without_gradient_is_silent():
    assert_silent("TD519", _tl(_call(1, [2], 1, 4, False), _call(1, [17, 2], 2, 17, False)))


def test_a_time_first_model_over_token_ids_is_silent():
    # Tokens (T,) unbatched, (T, B) batched: the softmax of (12,) and (12, 16) is over time both
    # times; the batched last dim is the batch, not the unbatched vector's length.
    assert_silent("TD519", _tl(_call(1, [12], 1, 12, False), _call(2, [12, 16], 2, 12, True)))
