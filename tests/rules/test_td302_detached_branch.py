"""TD302 detached-branch on hand-built timelines: detached parts of the loss and the line of their
cut; argmax cuts and `.item()` alone are left to TD301 or to nothing."""

from __future__ import annotations

from tests.rules._loss_path import cut_event, path_node, run_code, walk_tl, with_cuts
from traindoctor.timeline import Timeline


def test_td302_names_the_part():
    tl = walk_tl([{**path_node("add", 0.0), "detached_input": True}])
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    (f,) = run_code("TD302", tl)
    assert "'poly'" in f.title and f.where.source == "train.py:10"


def test_td302_item_part_found_from_parts_summing_to_loss():
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    tl.record(1, "loss.parts", {"box": 0.25, "poly": 0.5})
    tl.append(1, "loss.train", 0.75)
    (f,) = run_code("TD302", tl)
    assert "'poly'" in f.title


def test_td302_silent_when_all_parts_logged_detached():
    tl = walk_tl([path_node("add", 0.0)])
    tl.record(1, "gradpath.parts_detached", {"detached": ["a", "b"], "with_graph": []})
    assert run_code("TD302", tl) == []


def test_td302_names_the_part_and_the_line_of_the_detach():
    tl = with_cuts(
        cut_event("detach", numpy=True),
        cut_event("detach", found="part", part="aux"),
        nodes=[{**path_node("add", 0.0, "train.py:20"), "detached_input": True}],
    )
    (f,) = run_code("TD302", tl)
    assert f.title == (
        "Part 'aux' (logged via doc.log parts), added to the loss at train.py:20, comes from "
        "`.detach()` at train.py:18 and a numpy round-trip: it trains nothing"
    )
    assert f.where.source == "train.py:20" and f.evidence["cut_at"] == "train.py:18"
    assert f.evidence["numpy_round_trip"] is True


def test_td302_term_without_part_and_under_no_grad():
    tl = with_cuts(cut_event("no_grad", op="logsumexp"))
    (f,) = run_code("TD302", tl)
    assert f.title.startswith("The term added to the loss at train.py:20 comes from `logsumexp`")
    assert "no_grad" in f.title and "no_grad" in f.fix


def test_td302_leaves_argmax_terms_to_td301():
    node = {**path_node("add", 0.0, "train.py:20"), "detached_input": True}
    tl = with_cuts(cut_event("argmax", at="train.py:17"), nodes=[node])
    assert run_code("TD302", tl) == []
    (f,) = run_code("TD301", tl)
    assert f.where.source == "train.py:17" and f.where.op == "argmax"
    assert "added at train.py:20" in f.title and "gather" in f.fix


def test_td302_skips_a_line_that_adds_a_python_number():
    """`(inter + eps) / (sets_sum + eps)`: adding a constant leaves an add node with a None
    input, as a detached term does; the cut tracker reports such lines as `constant`."""
    node = {**path_node("add", 0.0, "train.py:20"), "detached_input": True}
    constant = cut_event("constant", found="constant", at=None, op="add", code="")
    assert run_code("TD302", with_cuts(constant, nodes=[node])) == []
    # The same node on another line is still a detached term.
    elsewhere = cut_event("constant", found="constant", added="train.py:9", at=None, code="")
    (f,) = run_code("TD302", with_cuts(elsewhere, nodes=[node]))
    assert f.where.source == "train.py:20"


def test_item_alone_is_never_a_finding():
    tl = with_cuts(cut_event("item", at="train.py:30"), cut_event("item", found="part", part="aux"))
    assert run_code("TD302", tl) == []
    assert run_code("TD301", tl) == []


def test_item_hint_enriches_a_finding_measured_otherwise():
    node = {**path_node("add", 0.0, "train.py:20"), "detached_input": True}
    tl = with_cuts(cut_event("item", at="train.py:19"), nodes=[node])
    (f,) = run_code("TD302", tl)
    assert "`.item()` taken at train.py:19" in f.cause and f.evidence["item_at"] == "train.py:19"


def test_td302_parts_fallback_names_the_cut_of_each_part():
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.record(1, "gradpath.parts_detached", {"detached": ["poly"], "with_graph": ["box"]})
    tl.record(1, "loss.parts", {"box": 0.25, "poly": 0.5})
    tl.append(1, "loss.train", 0.75)
    tl.event(1, "gradient_cut", **cut_event("data", found="part", part="poly", added=None))
    (f,) = run_code("TD302", tl)
    assert "'poly' comes from `.data` at train.py:18" in f.cause
    assert f.evidence["cuts"] == {"poly": {"cut": "data", "cut_at": "train.py:18"}}


def test_cut_rules_pass_the_offline_round_trip():
    from traindoctor.testing import assert_fires

    tl = with_cuts(cut_event("detach"), cut_event("argmax", at="b.py:1", added="b.py:2"))
    assert assert_fires("TD302", tl).evidence["cut"] == "detach"
    assert assert_fires("TD301", tl).evidence["cut"] == "argmax"


def test_td302_add_without_a_line_is_only_info():
    """`model.forward(x)` called directly: no window, no lines, no cut tracker. A scalar add
    with a None input may be `total = 0; total += loss`: TD302 says it cannot tell."""
    node = {**path_node("add", 0.0, None), "detached_input": True}
    (f,) = run_code("TD302", walk_tl([node], lines=False))
    assert f.severity.value == "info" and f.evidence["lines_known"] is False
