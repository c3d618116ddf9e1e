"""Loss terms whose graph reaches no trained parameter.

The loss is split into its terms through the nodes that pass a term on linearly (adds,
subtractions, sums, means, views, stack/cat, a product or quotient with one live operand:
gradpath's `_passes_terms`); each term's own graph is then searched, depth first, for the
parameters it reaches (`AccumulateGrad` nodes whose leaf an optimizer holds or that is an
`nn.Parameter`). A term whose graph reaches leaves that require grad, but none of them trained
(the inputs a physics model differentiates, `r.requires_grad_()`), while another term reaches
the parameters, is in the loss value and trains nothing: its model side was detached on the way
(functorch's Lennard-Jones example with its network derivatives `.detach()`ed: the force term
still has a graph, to the input radii). A term without any graph is TD302's other case (an add
with a None input), not this one. Host metadata only; bounded by `limit` nodes in all.
"""

from __future__ import annotations

from typing import Any

import torch

from ._graph import node_source
from .gradpath import _passes_terms, op_name

LIMIT = 50_000
MAX_TERMS = 16


def unreached_terms(root: Any, trainable: set[int], limit: int = LIMIT) -> list[dict[str, Any]]:
    """The terms of `root` (a loss tensor) with a graph that reaches no tensor whose id is in
    `trainable` (nor any `nn.Parameter`) while another term does; [] when there are none or
    when it cannot be told (one term, the search cut short)."""
    fn = getattr(root, "grad_fn", None)
    if fn is None:
        return []
    terms: list[Any] = []
    stack = [fn]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kind = type(node).__name__
        nexts = node.next_functions
        if kind != "AccumulateGrad" and _passes_terms(kind, nexts):
            stack.extend(n for n, _ in nexts if n is not None)
        else:
            terms.append(node)
        if len(terms) > MAX_TERMS or len(seen) > limit:
            return []
    if len(terms) < 2:
        return []
    budget = [limit]
    reach = [_reach(t, trainable, budget) for t in terms]
    if None in reach or "trained" not in reach:
        return []
    return [
        {"op": op_name(t), "source": node_source(t)}
        for t, r in zip(terms, reach, strict=True)
        if r == "untrained"
    ]


def _reach(node: Any, trainable: set[int], budget: list[int]) -> str | None:
    """'trained' (a trained leaf reached), 'untrained' (leaves that require grad, none
    trained), 'none' (no leaf), None (the search ran out of budget)."""
    leaves = False
    stack = [node]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if type(n).__name__ == "AccumulateGrad":
            var = getattr(n, "variable", None)
            if var is not None and (id(var) in trainable or _is_parameter(var)):
                return "trained"
            leaves = True
            continue
        stack.extend(x for x, _ in n.next_functions if x is not None)
    return "untrained" if leaves else "none"


def _is_parameter(t: Any) -> bool:
    return isinstance(t, torch.nn.Parameter)
