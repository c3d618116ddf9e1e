"""TD301 / TD302 on hand-built timelines."""

from __future__ import annotations

from traindoctor.findings import Severity
from traindoctor.rules._registry import get_rule
from traindoctor.timeline import Timeline


def _walk(nodes, step=1, lines=True):
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.event(step, "gradient_path", nodes=nodes, reference_grad=1.0, lines_known=lines)
    return tl


def _node(op, zeroed, source="train.py:10", **kw):
    return {
        "op": op,
        "zeroed": zeroed,
        "grad_in": 0.5,
        "grad_out": 0.01,
        "source": source,
        "elements": 100,
        **kw,
    }


def _run(code, tl):
    return get_rule(code).run(tl.view(get_rule(code)))


def test_td301_names_the_clamp_and_clears_nan_to_num_and_mask():
    tl = _walk(
        [
            _node("clamp", 0.97, "loss.py:80"),
            _node("mul", 0.3, "loss.py:81", mask=True),
            {**_node("nan_to_num", 0.0, "loss.py:77"), "grad_out": 0.5},
        ]
    )
    findings = _run("TD301", tl)
    top = findings[0]
    assert top.severity is Severity.ERROR and top.where.source == "loss.py:80"
    assert "97.0%" in top.cause and "nan_to_num" in top.cause and "mask" in top.cause
    assert "not the problem" in top.cause
    infos = [f for f in findings if f.severity is Severity.INFO]
    assert infos and infos[0].where.op == "mul"


def test_td301_silent_on_passing_ops_and_model_relus():
    tl = _walk([_node("clamp", 0.02), _node("relu", 0.95, None), _node("nan_to_num", 0.0)])
    assert _run("TD301", tl) == []


def test_td301_second_blocker_is_a_warning():
    tl = _walk([_node("clamp", 0.9, "a.py:1"), _node("clamp_min", 0.6, "a.py:2")])
    f = _run("TD301", tl)
    assert [x.severity for x in f] == [Severity.ERROR, Severity.WARNING]


def test_td302_names_the_part():
    tl = _walk([{**_node("add", 0.0), "detached_input": True}])
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    (f,) = _run("TD302", tl)
    assert "'poly'" in f.title and f.where.source == "train.py:10"


def test_td302_item_part_found_from_parts_summing_to_loss():
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    tl.record(1, "loss.parts", {"box": 0.25, "poly": 0.5})
    tl.append(1, "loss.train", 0.75)
    (f,) = _run("TD302", tl)
    assert "'poly'" in f.title


def test_td302_silent_when_all_parts_logged_detached():
    tl = _walk([_node("add", 0.0)])
    tl.record(1, "gradpath.parts_detached", {"detached": ["a", "b"], "with_graph": []})
    assert _run("TD302", tl) == []


def test_td301_clamp_of_the_scalar_loss_is_a_warning():
    tl = _walk([{**_node("clamp", 1.0), "elements": 1}])
    (f,) = _run("TD301", tl)
    assert f.severity is Severity.WARNING and "TD107" in f.cause


def test_td301_skips_model_ops_when_lines_are_known():
    tl = _walk([_node("clamp_min", 0.9, None)], lines=True)
    assert _run("TD301", tl) == []


# -- cut lineage (`gradient_cut` events of the cut tracker) --------------------------------
def _cut(cut, found="term", part=None, added="train.py:20", at="train.py:18", step=1, **kw):
    return {
        "cut": cut,
        "cut_op": kw.pop("op", {"detach": "detach", "argmax": "argmax"}.get(cut, cut)),
        "cut_at": at,
        "cut_code": kw.pop("code", "aux = pred.detach().pow(2).mean()"),
        "numpy": kw.pop("numpy", False),
        "found": found,
        "added_at": added,
        "part": part,
        **kw,
    }


def _with_cuts(*cuts, nodes=()):
    tl = _walk(list(nodes))
    for c in cuts:
        tl.event(1, "gradient_cut", **c)
    return tl


def test_td302_names_the_part_and_the_line_of_the_detach():
    tl = _with_cuts(
        _cut("detach", numpy=True),
        _cut("detach", found="part", part="aux"),
        nodes=[{**_node("add", 0.0, "train.py:20"), "detached_input": True}],
    )
    (f,) = _run("TD302", tl)
    assert f.title == (
        "Part 'aux' (logged via doc.log parts), added to the loss at train.py:20, comes from "
        "`.detach()` at train.py:18 and a numpy round-trip: it trains nothing"
    )
    assert f.where.source == "train.py:20" and f.evidence["cut_at"] == "train.py:18"
    assert f.evidence["numpy_round_trip"] is True


def test_td302_term_without_part_and_under_no_grad():
    tl = _with_cuts(_cut("no_grad", op="logsumexp"))
    (f,) = _run("TD302", tl)
    assert f.title.startswith("The term added to the loss at train.py:20 comes from `logsumexp`")
    assert "no_grad" in f.title and "no_grad" in f.fix


def test_td302_leaves_argmax_terms_to_td301():
    node = {**_node("add", 0.0, "train.py:20"), "detached_input": True}
    tl = _with_cuts(_cut("argmax", at="train.py:17"), nodes=[node])
    assert _run("TD302", tl) == []
    (f,) = _run("TD301", tl)
    assert f.where.source == "train.py:17" and f.where.op == "argmax"
    assert "added at train.py:20" in f.title and "gather" in f.fix


def test_td301_no_graph_kinds_and_parts():
    tl = _with_cuts(
        _cut("int_cast", op="long", at="a.py:3", added="a.py:5"),
        _cut("int_cast", op="long", at="a.py:3", found="part", part="rank", added="a.py:5"),
        _cut("compare", op="gt", at="a.py:8", found="part", part="hits", added=None),
    )
    (f,) = _run("TD301", tl)  # 'hits' is only logged, never seen added: no loss term
    assert f.where.op == "long" and f.where.source == "a.py:3"
    assert "'rank'" in f.title and "integer" in f.cause
    tl = _with_cuts(_cut("compare", op="gt", at="a.py:8"))
    (f,) = _run("TD301", tl)
    assert f.where.op == "gt" and "sigmoid" in f.fix


def test_item_alone_is_never_a_finding():
    tl = _with_cuts(_cut("item", at="train.py:30"), _cut("item", found="part", part="aux"))
    assert _run("TD302", tl) == []
    assert _run("TD301", tl) == []


def test_item_hint_enriches_a_finding_measured_otherwise():
    node = {**_node("add", 0.0, "train.py:20"), "detached_input": True}
    tl = _with_cuts(_cut("item", at="train.py:19"), nodes=[node])
    (f,) = _run("TD302", tl)
    assert "`.item()` taken at train.py:19" in f.cause and f.evidence["item_at"] == "train.py:19"


def test_td302_parts_fallback_names_the_cut_of_each_part():
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    tl.record(1, "loss.parts", {"box": 0.25, "poly": 0.5})
    tl.append(1, "loss.train", 0.75)
    tl.event(1, "gradient_cut", **_cut("data", found="part", part="poly", added=None))
    (f,) = _run("TD302", tl)
    assert "'poly' comes from `.data` at train.py:18" in f.cause
    assert f.evidence["cuts"] == {"poly": {"cut": "data", "cut_at": "train.py:18"}}


def test_cut_rules_pass_the_offline_round_trip():
    from traindoctor.testing import assert_fires

    tl = _with_cuts(_cut("detach"), _cut("argmax", at="b.py:1", added="b.py:2"))
    assert assert_fires("TD302", tl).evidence["cut"] == "detach"
    assert assert_fires("TD301", tl).evidence["cut"] == "argmax"


def _walks(*walks, lines=False):
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    for step, nodes in walks:
        tl.event(step, "gradient_path", nodes=nodes, reference_grad=1.0, lines_known=lines)
    return tl


def test_td301_mul_zeroed_by_a_trained_operand_is_not_a_block():
    # `r * h0` with a zero-initialised learnable h0 (makemore's GRU), ReZero's alpha * f(x)
    node = {**_node("mul", 1.0, None), "trained_operand": True, "verdict": "zero operand (trained)"}
    assert _run("TD301", _walks((1, [node]))) == []


def test_td301_unnamed_block_gone_on_the_next_walk_was_transient():
    # measured on step 1 only, no line, and the walk of step 2 saw no such block: silent
    assert _run("TD301", _walks((1, [_node("mul", 1.0, None)]), (2, []))) == []


def test_td301_unnamed_block_on_one_walk_only_is_a_warning():
    (f,) = _run("TD301", _walks((1, [_node("clamp", 0.95, None)])))
    assert f.severity is Severity.WARNING and "one step only" in f.cause


def test_td301_block_confirmed_on_a_later_walk_is_an_error():
    node = _node("clamp", 0.95, None)
    (f,) = _run("TD301", _walks((1, [node]), (2, [node])))
    assert f.severity is Severity.ERROR and "again on step 2" in f.cause


def test_td301_named_op_measured_passing_later_is_transient_and_absent_is_unknown():
    blocks, passes = _node("clamp", 0.95, "loss.py:3"), _node("clamp", 0.01, "loss.py:3")
    assert _run("TD301", _walks((1, [blocks]), (1000, [passes]), lines=True)) == []
    (f,) = _run("TD301", _walks((1, [blocks]), (1000, []), lines=True))
    assert f.severity is Severity.ERROR and f.where.source == "loss.py:3"
