"""Timelines of the gradient walk (`gradient_path`) and the cut tracker (`gradient_cut`), shared
by the TD301 and TD302 tests."""

from __future__ import annotations

from traindoctor.rules import get_rule
from traindoctor.timeline import Timeline


def walk_tl(nodes, step=1, lines=True):
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    tl.event(step, "gradient_path", nodes=nodes, reference_grad=1.0, lines_known=lines)
    return tl


def path_node(op, zeroed, source="train.py:10", **kw):
    return {
        "op": op,
        "zeroed": zeroed,
        "grad_in": 0.5,
        "grad_out": 0.01,
        "source": source,
        "elements": 100,
        **kw,
    }


def run_code(code, tl):
    return get_rule(code).run(tl.view(get_rule(code)))


# -- cut lineage (`gradient_cut` events of the cut tracker) --------------------------------
def cut_event(cut, found="term", part=None, added="train.py:20", at="train.py:18", step=1, **kw):
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


def with_cuts(*cuts, nodes=()):
    tl = walk_tl(list(nodes))
    for c in cuts:
        tl.event(1, "gradient_cut", **c)
    return tl


def walks_tl(*walks, lines=False):
    tl = Timeline()
    tl.facts["models"] = {"<model>": "M"}
    for step, nodes in walks:
        tl.event(step, "gradient_path", nodes=nodes, reference_grad=1.0, lines_known=lines)
    return tl
