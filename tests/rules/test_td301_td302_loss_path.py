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
