"""TD301 gradient-blocked-by-op on hand-built timelines: the gradient walk's blocking ops and the cut
tracker's no-graph cuts (argmax, integer casts, comparisons)."""

from __future__ import annotations

from tests.rules._loss_path import cut_event, path_node, run_code, walk_tl, walks_tl, with_cuts
from traindoctor.findings import Severity


def test_td301_names_the_clamp_and_clears_nan_to_num_and_mask():
    tl = walk_tl(
        [
            path_node("clamp", 0.97, "loss.py:80"),
            path_node("mul", 0.3, "loss.py:81", mask=True),
            {**path_node("nan_to_num", 0.0, "loss.py:77"), "grad_out": 0.5},
        ]
    )
    findings = run_code("TD301", tl)
    top = findings[0]
    assert top.severity is Severity.ERROR and top.where.source == "loss.py:80"
    assert "97.0%" in top.cause and "nan_to_num" in top.cause and "mask" in top.cause
    assert "not the problem" in top.cause
    infos = [f for f in findings if f.severity is Severity.INFO]
    assert infos and infos[0].where.op == "mul"


def test_td301_silent_on_passing_ops_and_model_relus():
    tl = walk_tl(
        [path_node("clamp", 0.02), path_node("relu", 0.95, None), path_node("nan_to_num", 0.0)]
    )
    assert run_code("TD301", tl) == []


def test_td301_second_blocker_is_a_warning():
    tl = walk_tl([path_node("clamp", 0.9, "a.py:1"), path_node("clamp_min", 0.6, "a.py:2")])
    f = run_code("TD301", tl)
    assert [x.severity for x in f] == [Severity.ERROR, Severity.WARNING]


def test_td301_clamp_of_the_scalar_loss_is_a_warning():
    tl = walk_tl([{**path_node("clamp", 1.0), "elements": 1}])
    (f,) = run_code("TD301", tl)
    assert f.severity is Severity.WARNING and "TD107" in f.cause


def test_td301_scalar_term_zeroed_while_the_rest_trains_is_info():
    # A mean teacher's consistency weight ramped up from 0: `loss = ce + w * cons`, w = 0 on
    # step 1. The parameters still got gradient from ce on that step: one term, not the loss.
    tl = walk_tl([{**path_node("mul", 1.0), "elements": 1, "grad_out": 0.0}])
    tl.record(1, "grads.norm", {"fc.weight": 0.3, "fc.bias": 0.0})
    (f,) = run_code("TD301", tl)
    assert f.severity is Severity.INFO and "one scalar term" in f.title
    assert "TD107" not in f.cause
    # No parameter got gradient: the whole loss is zeroed, a warning as before.
    tl = walk_tl([{**path_node("mul", 1.0), "elements": 1, "grad_out": 0.0}])
    tl.record(1, "grads.norm", {"fc.weight": 0.0, "fc.bias": 0.0})
    (f,) = run_code("TD301", tl)
    assert f.severity is Severity.WARNING and "TD107" in f.cause


def test_td301_skips_model_ops_when_lines_are_known():
    tl = walk_tl([path_node("clamp_min", 0.9, None)], lines=True)
    assert run_code("TD301", tl) == []


def test_td301_no_graph_kinds_and_parts():
    tl = with_cuts(
        cut_event("int_cast", op="long", at="a.py:3", added="a.py:5"),
        cut_event("int_cast", op="long", at="a.py:3", found="part", part="rank", added="a.py:5"),
        cut_event("compare", op="gt", at="a.py:8", found="part", part="hits", added=None),
    )
    (f,) = run_code("TD301", tl)  # 'hits' is only logged, never seen added: no loss term
    assert f.where.op == "long" and f.where.source == "a.py:3"
    assert "'rank'" in f.title and "integer" in f.cause
    tl = with_cuts(cut_event("compare", op="gt", at="a.py:8"))
    (f,) = run_code("TD301", tl)
    assert f.where.op == "gt" and "sigmoid" in f.fix


def test_td301_mul_zeroed_by_a_trained_operand_is_not_a_block():
    # `r * h0` with a zero-initialised learnable h0 (makemore's GRU), ReZero's alpha * f(x)
    node = {
        **path_node("mul", 1.0, None),
        "trained_operand": True,
        "verdict": "zero operand (trained)",
    }
    assert run_code("TD301", walks_tl((1, [node]))) == []


def test_td301_unnamed_block_gone_on_the_next_walk_was_transient():
    # measured on step 1 only, no line, and the walk of step 2 saw no such block: silent
    assert run_code("TD301", walks_tl((1, [path_node("mul", 1.0, None)]), (2, []))) == []


def test_td301_unnamed_block_on_one_walk_only_is_a_warning():
    (f,) = run_code("TD301", walks_tl((1, [path_node("clamp", 0.95, None)])))
    assert f.severity is Severity.WARNING and "one step only" in f.cause


def test_td301_block_confirmed_on_a_later_walk_is_an_error():
    node = path_node("clamp", 0.95, None)
    (f,) = run_code("TD301", walks_tl((1, [node]), (2, [node])))
    assert f.severity is Severity.ERROR and "again on step 2" in f.cause


def test_td301_named_op_measured_passing_later_is_transient_and_absent_is_unknown():
    blocks, passes = path_node("clamp", 0.95, "loss.py:3"), path_node("clamp", 0.01, "loss.py:3")
    assert run_code("TD301", walks_tl((1, [blocks]), (1000, [passes]), lines=True)) == []
    (f,) = run_code("TD301", walks_tl((1, [blocks]), (1000, []), lines=True))
    assert f.severity is Severity.ERROR and f.where.source == "loss.py:3"


def test_td301_a_clamp_at_its_floor_on_a_step_whose_loss_is_exactly_0_is_info():
    # A triplet margin loss already met on separated classes: clamp_min(d_ap - d_an + m, 0)
    # zeroes everything, and the loss is 0 on that step: no block, nothing to reduce.
    tl = walk_tl([path_node("clamp_min", 1.0, "loss.py:5")], step=2)
    tl.record(2, "loss.backward", [0.0])
    (f,) = run_code("TD301", tl)
    assert f.severity is Severity.INFO and "exactly 0 on step 2" in f.cause
    # The same clamp on a step whose loss is not 0 still blocks.
    tl = walk_tl([path_node("clamp_min", 1.0, "loss.py:5")], step=2)
    tl.record(2, "loss.backward", [0.3])
    (f,) = run_code("TD301", tl)
    assert f.severity is Severity.ERROR
