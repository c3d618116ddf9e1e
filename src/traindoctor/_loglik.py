"""Whether the loss is a log-likelihood of labels, minimized: `score - logsumexp` with a plus.

A class's (or a tag sequence's) log-probability is a selected score minus the log of the
normalizer, `s[y] - logsumexp(s)` (a CRF's `numerator - denominator`, `log_softmax(x)[y]`):
it is <= 0, and the loss that trains it is its negative (`nll_loss`, pytorch-crf's `-crf(...)`).
Minimized with a plus sign, it makes the labels as unlikely as possible and falls towards -inf.

`signed_terms(root)` follows the loss's graph from its root through the nodes that pass a term
on linearly with a known sign (adds, subtractions, negation, sums, means, views, a product with
a Python number, selections by index) and says, on what it reached: the normalizers
(`LogsumexpBackward0`, or `log(sum(exp(x)))` written out, inside an add of the max as the
stable form does) with their sign, label selections (index, gather, select) of a live tensor
with theirs, and `log_softmax` outputs (or `log(softmax(x))`) selected by label. A product with a tensor (a mask, an
advantage), a power or any other op stops the walk there: past it the sign is not known.
Reads host metadata only (node types, Python numbers saved on the node); no device sync.
"""

from __future__ import annotations

from typing import Any

from ._graph import node_source

LIMIT = 4000  # nodes visited at most (a CRF's loop over time makes a few per position)

_PASS = frozenset(
    {"AddBackward0", "AddBackward1", "SumBackward0", "SumBackward1", "MeanBackward0"}
    | {"MeanBackward1", "ViewBackward0", "ReshapeAliasBackward0", "UnsqueezeBackward0"}
    | {"SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "CloneBackward0"}
    | {"ToCopyBackward0", "StackBackward0", "CatBackward0", "ExpandBackward0"}
    | {"PermuteBackward0", "TransposeBackward0", "TransposeBackward1", "SliceBackward0"}
)
_SELECT = frozenset({"IndexBackward0", "GatherBackward0", "SelectBackward0"})
_SCALAR = frozenset({"MulBackward1", "DivBackward1"})


def signed_terms(root: Any, limit: int = LIMIT) -> dict[str, Any]:
    """What the loss `root` (a tensor) is made of, with signs: see the module doc."""
    out: dict[str, Any] = {
        "normalizers": {},  # sign -> first source line (or None)
        "selections": {},
        "log_softmax_selected": {},
        "visited": 0,
    }
    fn = getattr(root, "grad_fn", None)
    if fn is None:
        return out
    stack: list[tuple[Any, int, bool]] = [(fn, 1, False)]
    seen: set[tuple[int, int, bool]] = set()
    while stack:
        node, sign, selected = stack.pop()
        key = (id(node), sign, selected)
        if node is None or key in seen:
            continue
        if len(seen) >= limit:
            out["truncated"] = True
            break
        seen.add(key)
        kind = type(node).__name__
        nexts = node.next_functions
        if kind == "LogsumexpBackward0" or _written_lse(node, kind):
            _note(out["normalizers"], sign, node)
            continue
        if kind == "LogSoftmaxBackward0" or (
            kind == "LogBackward0" and type(_first(node)).__name__ == "SoftmaxBackward0"
        ):
            if selected:
                _note(out["log_softmax_selected"], sign, node)
            continue
        if kind in _SELECT:
            if nexts and nexts[0][0] is not None:
                _note(out["selections"], sign, node)
                stack.append((nexts[0][0], sign, True))
            continue
        if kind == "AddBackward0" and _stable_lse(node):
            _note(out["normalizers"], sign, node)
            continue
        signs: tuple[int, ...]
        if kind in _PASS:
            signs = (sign,) * len(nexts)
        elif kind == "SubBackward0":
            signs = (sign, -sign * _alpha(node))
        elif kind == "SubBackward1":
            signs = (sign,)
        elif kind == "RsubBackward1":
            signs = (-sign,)
        elif kind == "RsubBackward0":  # torch.rsub(a, b) = b - a: self negated
            signs = (-sign, sign)
        elif kind == "NegBackward0":
            signs = (-sign,)
        elif kind in _SCALAR or kind in ("MulBackward0", "DivBackward0"):
            factor = _scalar(node, kind)
            if not factor:
                continue
            signs = (sign if factor > 0 else -sign,)
        else:
            continue
        for (nxt, _), s in zip(nexts, signs, strict=False):
            if nxt is not None and s:
                stack.append((nxt, s, selected))
    out["visited"] = len(seen)
    return out


def log_likelihood(root: Any) -> dict[str, Any] | None:
    """The loss is `+ (selected score - normalizer)`: a normalizer subtracted while a label's
    score (or a label's log_softmax) is added. None when it is not (or not known)."""
    terms = signed_terms(root)
    soft = terms["log_softmax_selected"]
    if 1 in soft and -1 not in soft:
        return {
            "form": "log_softmax",
            "at": terms["log_softmax_selected"].get(1),
            "visited": terms["visited"],
        }
    norm, sel = terms["normalizers"], terms["selections"]
    if -1 in norm and 1 not in norm and 1 in sel and -1 not in sel:
        return {
            "form": "score_minus_logsumexp",
            "at": terms["normalizers"][-1],
            "score_at": terms["selections"][1],
            "visited": terms["visited"],
        }
    return None


def _note(where: dict[int, Any], sign: int, node: Any) -> None:
    if sign not in where or where[sign] is None:
        where[sign] = node_source(node)


def _alpha(node: Any) -> int:
    """The sign of a subtraction's `alpha` (1 unless given)."""
    try:
        alpha = node._saved_alpha
    except (AttributeError, RuntimeError):
        return 1
    return -1 if isinstance(alpha, int | float) and alpha < 0 else 1


def _scalar(node: Any, kind: str) -> float:
    """The number a product or quotient with one live operand scales it by: a Python number
    (saved as such, or wrapped as a 0-dim CPU tensor); 0 when unknown (a tensor of several
    values, a device tensor: not read) or when both operands are live."""
    nexts = node.next_functions
    if kind in ("MulBackward0", "DivBackward0"):
        live = [nxt is not None for nxt, _ in nexts]
        if live.count(True) != 1 or (kind == "DivBackward0" and not live[0]):
            return 0.0
    try:
        other = node._saved_other
        if other is None and kind == "MulBackward0":
            other = node._saved_self
    except (AttributeError, RuntimeError):
        return 0.0
    if isinstance(other, bool):
        return 0.0
    if isinstance(other, int | float):
        return float(other)
    try:
        if other.numel() != 1 or other.device.type != "cpu" or other.requires_grad:
            return 0.0
        value = float(other)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return 0.0
    return 1.0 / value if kind.startswith("Div") and value else value


def _written_lse(node: Any, kind: str) -> bool:
    """`log(sum(exp(x)))` written out: a log of a sum of an exp."""
    if kind != "LogBackward0":
        return False
    inner = _first(node)
    if inner is None or not type(inner).__name__.startswith("SumBackward"):
        return False
    inner = _first(inner)
    return inner is not None and type(inner).__name__ == "ExpBackward0"


def _stable_lse(node: Any) -> bool:
    """`m + log(sum(exp(x - m)))`, the stable form (PyTorch's BiLSTM-CRF tutorial's
    log_sum_exp): an add one of whose inputs is a written-out log-sum-exp (through views)."""
    for nxt, _ in node.next_functions:
        seen = 0
        while nxt is not None and seen < 4 and type(nxt).__name__ in _PASS - {"AddBackward0"}:
            nxt = _first(nxt)
            seen += 1
        if nxt is not None and _written_lse(nxt, type(nxt).__name__):
            return True
    return False


def _first(node: Any) -> Any:
    nexts = node.next_functions
    return nexts[0][0] if nexts else None
