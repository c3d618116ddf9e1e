"""Logits that are cosines times a constant, told from the autograd graph at the loss call.

`s * cos` (a cosine classifier, NormFace), CosFace's `s * (cos - m * onehot)`, ArcFace's
`s * where(onehot, cos(acos(cos) + m), cos)` and `s * relu(cos)` give logits bounded by `s`
whatever the weights: the cosines are invariant to the scale of the params, so no init changes
them, and a cross-entropy far above ln C at init comes from `s` and the geometry of the
embeddings, by design (TD209 does not judge it). Told on the graph, then measured: walking
down from the logits through elementwise ops (constants multiplied, divided or added, relu,
clamp, cos/acos, where, views, ...) every path must end at a contraction (mm, bmm, or the sum
of a product: F.cosine_similarity) whose operands are normalized: each operand that carries
a gradient is made by a division (F.normalize's `x / norm`), and the saved operands' norms
along the contracted dim are measured at most 1 (so each entry of the product is a cosine,
at most 1 in size). Anything else (a Linear's addmm with its bias, a conv, a param used as
logits) and the logits are not a scaled cosine.
"""

from __future__ import annotations

from typing import Any

import torch

from .._graph import VIEW_NODES, below_views

# Views and copies: the same values, rearranged.
_VIEWS = VIEW_NODES
# Elementwise ops and views that keep "a function of cosines and constants".
_PASS = _VIEWS | frozenset(
    {
        "ReluBackward0",
        "ClampBackward1",
        "ClampMinBackward0",
        "ClampMaxBackward0",
        "HardtanhBackward0",
        "CosBackward0",
        "SinBackward0",
        "AcosBackward0",
        "AsinBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
        "SqrtBackward0",
        "PowBackward0",
        "NegBackward0",
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "RsubBackward0",
        "RsubBackward1",
        "WhereBackward0",
        "MaskedFillBackward0",
        "CopySlices",
        "IndexPutBackward0",
        "ScatterBackward0",
        "ScatterBackward1",
        "IndexBackward0",
        "GatherBackward0",
        "CatBackward0",
        "StackBackward0",
    }
)
MAX_NODES = 200
TOLERANCE = 1e-3  # a norm at most 1 + this counts as normalized (float32 rounding)


def scaled_cosine(logits: torch.Tensor) -> tuple[float, list[Any]] | None:
    """(the first constant scalar factor met from the logits down, `s`, else 1; the leaves
    under the normalized operands) when `logits` are a function of cosines and constants;
    None otherwise."""
    root = logits.grad_fn
    if root is None:
        return None
    scale: float | None = None
    leaves: list[Any] = []
    stack, seen, contractions = [root], set(), 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > MAX_NODES:
            return None
        kind = type(node).__name__
        children = [c for c, _ in node.next_functions]
        if kind in ("MmBackward0", "BmmBackward0"):
            if not _normalized_mm(node, children, leaves):
                return None
            contractions += 1
            continue
        if kind == "SumBackward1" and _cosine_sum(node, children, leaves):
            contractions += 1
            continue
        if kind in ("MulBackward0", "DivBackward0"):
            factor = _constant_factor(node, kind, children)
            if factor is None:
                return None
            if factor is not True and scale is None:
                scale = factor if kind == "MulBackward0" else 1.0 / factor
        elif kind not in _PASS:
            return None
        stack.extend(c for c in children if c is not None)
    if not contractions:
        return None
    return abs(scale if scale is not None else 1.0), leaves


def _constant_factor(node: Any, kind: str, children: list[Any]) -> float | bool | None:
    """A product (quotient) by a constant: its value if a scalar, True if a constant tensor (a
    0/1 mask), True for a product of two live values (both walked); None for a division by a
    live value (a learned temperature: not a constant)."""
    live = [c is not None for c in children]
    if kind == "DivBackward0":
        if len(live) < 2 or live[1]:
            return None
        other = getattr(node, "_saved_other", None)
    else:
        if all(live):
            return True
        other = getattr(node, "_saved_other" if live[0] else "_saved_self", None)
    if isinstance(other, torch.Tensor) and other.numel() == 1:
        value = float(other.detach().reshape(()))
        return value if value != 0 else None
    return True if isinstance(other, torch.Tensor) else None


def _below_views(node: Any) -> Any:
    return below_views(node, 16)


def _made_by_division(child: Any, leaves: list[Any]) -> bool:
    """An operand carrying a gradient must be made by a division (x / norm); its dividend's
    leaf (a param) is kept. A constant operand is judged by its measured norms only."""
    if child is None:
        return True
    made = _below_views(child)
    if made is None or type(made).__name__ != "DivBackward0":
        return False
    top = _below_views(made.next_functions[0][0])
    var = getattr(top, "variable", None)
    if var is not None:
        leaves.append(var)
    return True


def _at_most_one(t: Any, dim: int) -> bool:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return False
    with torch.no_grad():
        norms = torch.linalg.vector_norm(t.detach().float(), dim=dim)
        return bool((norms <= 1 + TOLERANCE).all())


def _normalized_mm(node: Any, children: list[Any], leaves: list[Any]) -> bool:
    """mm/bmm of row-normalized by column-normalized operands: every entry a cosine."""
    if len(children) != 2 or not all(_made_by_division(c, leaves) for c in children):
        return False
    a, b = getattr(node, "_saved_self", None), getattr(node, "_saved_mat2", None)
    return _at_most_one(a, -1) and _at_most_one(b, -2)


def _cosine_sum(node: Any, children: list[Any], leaves: list[Any]) -> bool:
    """sum over a dim of a product of two operands normalized along it (cosine_similarity)."""
    dims = getattr(node, "_saved_dim", None)
    if not dims or len(dims) != 1 or len(children) != 1 or children[0] is None:
        return False
    dim = int(dims[0])
    dim = dim - (1 << 64) if dim >= 1 << 63 else dim
    mul = children[0]
    if type(mul).__name__ != "MulBackward0":
        return False
    parts = [c for c, _ in mul.next_functions]
    if len(parts) != 2 or not all(_made_by_division(c, leaves) for c in parts):
        return False
    a, b = getattr(mul, "_saved_self", None), getattr(mul, "_saved_other", None)
    return _at_most_one(a, dim) and _at_most_one(b, dim)
