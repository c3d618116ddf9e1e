"""Where the gradient of a loss goes: a measured walk of its own backward, node by node.

`explain_gradients(loss)` runs the backward with a hook on every autograd node of the loss
graph (`Node.register_hook`, which sees the gradient flowing in and the gradients flowing out)
and returns a `GradientPath`: per node the op, the user's source line, the gradient norm in and
out, the fraction of the elements that carried a gradient in and carry none out, and a verdict.
The hooks return None (gradients are never changed) and are removed afterwards.

Source lines come from anomaly-mode metadata (`node.metadata["traceback_"]`), recorded only
while the forward runs under anomaly mode: compute the loss inside `with
traindoctor.trace_lines():` (or let `watch()` do it on its sampled steps) to get them; nodes
created outside have no line.

Per-node statistics stay on the device until the walk ends; they are read back in one
transfer per device.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from operator import mul as _mul
from typing import Any

import torch

from ._graph import node_source

# A walk visits at most this many nodes (a small transformer's backward has ~10^4).
MAX_NODES = 200_000

# Ops whose local derivative is exactly 0 on part of their domain: where they zero most of the
# gradient passing through, the elements behind them stop learning. Name -> what passes
# gradient instead.
BLOCKING_OPS: dict[str, str] = {
    "clamp": "remove the clamp, or clamp only the values that are really out of range; a "
    "smooth bound (e.g. tanh scaling) passes gradient everywhere",
    "clamp_min": "use softplus / a smooth floor, or clamp a denominator instead of the value",
    "clamp_max": "remove the upper clamp or use a smooth bound",
    "hardtanh": "use tanh, which passes a (smaller) gradient when saturated",
    "where": "make both branches depend on the prediction (a constant branch has gradient 0)",
    "masked_fill": "fill with a function of the prediction, not a constant",
    "relu": "use leaky_relu / softplus / GELU, or fix the input scale so it is not mostly < 0",
    "threshold": "use leaky_relu / softplus",
    "round": "use a straight-through estimator: x + (x.round() - x).detach()",
    "sign": "use tanh(x / t) or a straight-through estimator",
    "floor": "use a straight-through estimator: x + (x.floor() - x).detach()",
    "ceil": "use a straight-through estimator: x + (x.ceil() - x).detach()",
    "trunc": "use a straight-through estimator",
    "mul": "multiply by a soft weight, or check that the zeros are meant",
}
_ELEMENTWISE = set(BLOCKING_OPS) | {"nan_to_num", "div", "add", "sub", "neg", "abs"}
_OP_NAMES = {
    "ClampBackward1": "clamp",
    "ClampBackward0": "clamp",
    "ClampMinBackward0": "clamp_min",
    "ClampMaxBackward0": "clamp_max",
    "HardtanhBackward0": "hardtanh",
    "WhereBackward0": "where",
    "MaskedFillBackward0": "masked_fill",
    "MulBackward0": "mul",
    "ReluBackward0": "relu",
    "ThresholdBackward0": "threshold",
    "RoundBackward0": "round",
    "SignBackward0": "sign",
    "FloorBackward0": "floor",
    "CeilBackward0": "ceil",
    "TruncBackward0": "trunc",
    "NanToNumBackward0": "nan_to_num",
}
_BACKWARD = re.compile(r"Backward\d*$")

# Verdicts.
BLOCKS = "blocks"  # zeroes >= BLOCK_FRACTION of the gradient passing through
PARTLY = "partly blocks"
MASK = "mask (by design)"  # a multiply by a 0/1 tensor: zeroes exactly the masked entries
# A multiply whose zeros come from the VALUE of its other operand, itself trained: `r * h0` with
# a zero-initialised learnable state, ReZero's `alpha * f(x)` with alpha = 0, adaLN-zero gates.
# The zero operand receives the gradient (it moves at the first update), so the zeros last
# only as long as its value stays 0: nothing is blocked.
ZERO_OPERAND = "zero operand (trained)"
ATTENUATES = "attenuates"  # elementwise op cutting the norm by orders of magnitude
# A multiply by a constant (no grad) whose zeros the op that made its other operand fills in
# again: every gradient that op passes on is as dense as the one the multiply received (a
# soft-target cross-entropy `-(t * log_softmax(z)).sum(-1)`: the softmax's normalisation gives
# every logit a gradient, zero target entries included). No element behind it loses its gradient.
REFILLED = "zeros refilled upstream"
NO_GRAD_IN = "no gradient in"
PASSES = "passes"
DETACHED = "adds a detached tensor"  # scalar add/sub of a tensor without graph
BLOCK_FRACTION = 0.5
PARTLY_FRACTION = 0.1
ATTENUATION = 1e-2


def op_name(node: Any) -> str:
    kind = type(node).__name__
    name = _OP_NAMES.get(kind)
    if name is None:
        base = _BACKWARD.sub("", kind)
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower() if base else kind
        _OP_NAMES[kind] = name  # cached per node class: a walk visits tens of thousands
    return name


@contextlib.contextmanager
def trace_lines() -> Iterator[None]:
    """Record, for every autograd node created inside, the source line that created it, so that
    `explain_gradients` can name the lines of the loss code. Anomaly mode without NaN checks:
    nothing is computed differently, each node keeps its creation traceback (slower forward)."""
    prev = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
    torch.set_anomaly_enabled(True, False)
    try:
        yield
    finally:
        torch.set_anomaly_enabled(*prev)


@dataclass
class NodeFacts:
    index: int  # breadth-first order from the loss (0 = the node that made the loss)
    op: str
    node: str  # the autograd node's class name
    source: str | None
    grad_in: float | None  # norm of the gradient flowing into the node (None: never reached)
    grad_out: float | None  # norm of the gradients it passes to its inputs
    zeroed: float | None  # fraction of the gradient-carrying elements it sets to exactly 0
    elements: int
    verdict: str
    detached_input: bool = False  # a tensor input that does not require grad (scalar add/sub)
    mask: bool = False  # a multiply by a tensor of 0s and 1s
    # A multiply whose zeroed side is zeroed by the value of the other operand, which requires
    # grad and receives gradient through this op (a trained operand that is 0 for now).
    trained_operand: bool = False
    # An op whose derivative is 0 everywhere (sign, round, floor, ...) on a value that also
    # reaches the loss another way (`sign(x) * sqrt(abs(x))`): x still gets its gradient.
    bypassed: bool = False
    # A multiply by a constant whose zeros the op making its other operand fills in (REFILLED).
    refilled: bool = False

    @property
    def ratio(self) -> float | None:
        if not self.grad_in or self.grad_out is None:
            return None
        return self.grad_out / self.grad_in


@dataclass
class GradientPath:
    """The measured gradient path of one backward. Print it for a table."""

    nodes: list[NodeFacts] = field(default_factory=list)
    seconds: float = 0.0
    truncated: bool = False
    visited: int = 0  # nodes of the graph seen; `nodes` holds those hooked (all, unless focused)

    def blocking(self) -> list[NodeFacts]:
        """Nodes that zero or cut the gradient (masks by design excluded), nearest the loss first."""
        return [n for n in self.nodes if n.verdict in (BLOCKS, PARTLY, ATTENUATES)]

    def find(self, op: str) -> list[NodeFacts]:
        return [n for n in self.nodes if n.op == op]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [asdict(n) for n in self.nodes],
            "seconds": self.seconds,
            "truncated": self.truncated,
            "visited": self.visited,
        }

    def rows(self, limit: int = 40) -> list[NodeFacts]:
        """The rows worth showing: nodes with a source line or a verdict other than `passes`."""
        picked = [n for n in self.nodes if n.source or n.verdict not in (PASSES, NO_GRAD_IN)]
        return (picked or self.nodes)[:limit]

    def __str__(self) -> str:
        head = ("#", "op", "source", "grad in", "grad out", "zeroed", "verdict")
        body = [
            (
                str(n.index),
                n.op,
                n.source or "-",
                _fmt(n.grad_in),
                _fmt(n.grad_out),
                "-" if n.zeroed is None else f"{n.zeroed:.1%}",
                n.verdict,
            )
            for n in self.rows()
        ]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        shown = len(body)
        tail = f"{len(self.nodes)} nodes walked in {self.seconds * 1000:.1f} ms"
        if self.visited > len(self.nodes):
            tail = (
                f"{self.visited} nodes walked, {len(self.nodes)} that can block measured, in "
                f"{self.seconds * 1000:.1f} ms"
            )
        if shown < len(self.nodes):
            tail += f"; {shown} shown (source lines and non-passing nodes)"
        if not any(n.source for n in self.nodes):
            tail += "; no source lines: compute the loss inside `with traindoctor.trace_lines():`"
        return "\n".join([*lines, tail])

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="Gradient path", caption=f"{len(self.nodes)} nodes")
        for col in ("#", "op", "source", "grad in", "grad out", "zeroed", "verdict"):
            table.add_column(col, justify="right" if col.startswith(("grad", "zer")) else "left")
        for n in self.rows():
            style = "red" if n.verdict == BLOCKS else "yellow" if n.verdict != PASSES else None
            table.add_row(
                str(n.index),
                n.op,
                n.source or "-",
                _fmt(n.grad_in),
                _fmt(n.grad_out),
                "-" if n.zeroed is None else f"{n.zeroed:.1%}",
                n.verdict,
                style=style,
            )
        return table


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


# Batched statistics: gradients wait (referenced, never copied) until this many, or this many
# bytes, are pending, then one fused norm reads them all. Holding a reference also keeps the
# engine from reusing a gradient buffer in place, so the values read are the ones that flowed.
# Ops whose derivative is exactly 0 wherever it is defined: all they pass is 0, by definition.
ZERO_DERIVATIVE = frozenset({"sign", "round", "floor", "ceil", "trunc"})
FLUSH_TENSORS = 2048
FLUSH_BYTES = 64 << 20


def _scales_by_nonzero(node: Any, nexts: tuple[tuple[Any, int], ...]) -> bool:
    """A multiply of a live operand by a constant non-zero number (`0.1 * x`, `x * scale`
    with a Python float): read only where the constant is a host scalar (a Python number is
    wrapped as a CPU 0-d tensor), so no device read; a tensor constant, a 0 or a NaN is not."""
    if len(nexts) != 2 or (nexts[0][0] is None) == (nexts[1][0] is None):
        return False
    try:
        c = node._saved_other if nexts[1][0] is None else node._saved_self
    except Exception:  # noqa: BLE001 - not saved (another derivative formula): hook it
        return False
    if isinstance(c, torch.Tensor):
        if c.dim() != 0 or c.device.type != "cpu" or c.is_complex():
            return False
        c = c.item()
    return isinstance(c, (int, float)) and c != 0 and math.isfinite(c)


class _NodeHook:
    """One hooked node's hook: a slotted object rather than a closure (its function, cells and
    tuple: ~7 objects a node, 5,000 nodes on some models, all kept until the graph is freed)."""

    __slots__ = ("walk", "index", "node", "elementwise", "mul")

    def __init__(self, walk: Walk, index: int, node: Any, elementwise: bool, mul: bool) -> None:
        self.walk = walk
        self.index = index
        self.node = node
        self.elementwise = elementwise
        self.mul = mul

    def __call__(self, grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        try:
            self.walk._collect(
                self.index, self.node, grad_inputs, grad_outputs, self.elementwise, self.mul
            )
        except Exception:  # noqa: BLE001 - a statistic is lost, never the backward
            pass
        return None


class _ProducerHook:
    """The hook on the node that made a multiply's trained operand (the other one a constant):
    records the share of exact zeros in each gradient that node passes on."""

    __slots__ = ("walk", "key")

    def __init__(self, walk: Walk, key: int) -> None:
        self.walk = walk
        self.key = key

    def __call__(self, grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        try:
            zeros = self.walk._producer_zeros.get(self.key)
            if zeros is not None:
                for g in grad_inputs:
                    if isinstance(g, torch.Tensor) and g.numel():
                        zeros.append(1.0 - torch.count_nonzero(g) / g.numel())
        except Exception:  # noqa: BLE001 - a statistic is lost, never the backward
            pass
        return None


class Walk:
    """Hooks on the nodes of one loss graph for one backward; `finish()` reads them back.

    `focus=True` hooks only the nodes that can carry a verdict: ops that can zero a gradient
    (clamp, where, relu, mul, ...), `nan_to_num`, scalar adds of a detached tensor, and every
    node created by traced loss code (anomaly-mode metadata). That is what the sampled walks of
    `watch()` need, at a fraction of the cost of hooking a whole model's backward."""

    def __init__(self, root: torch.Tensor, limit: int = MAX_NODES, focus: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.nodes: list[Any] = []
        self.handles: list[Any] = []
        self.visited = 0
        self.truncated = False
        # Per hooked node that ran: (first L2 slot, #grad outputs, #grad inputs, first L0 slot
        # or -1, [(numel, same shape as the output grad) per grad input], elements, mask slot,
        # both operands of a multiply require grad).
        self.rows: dict[int, tuple[int, int, int, int, list[tuple[int, bool]], int, int, bool]] = {}
        self.detached: dict[int, bool] = {}  # add/sub with an operand without graph
        self._pending_l2: list[torch.Tensor] = []
        self._pending_l0: list[torch.Tensor] = []
        self._pending_bytes = 0
        self._l2 = _Scalars()  # device scalars, in slot order
        self._l0 = _Scalars()
        self._masks: list[torch.Tensor] = []
        # A multiply by a constant -> the node that made its other operand; per such producer,
        # the zero fraction of each gradient it passes on (device scalars, read at the end).
        self._producer_of: dict[int, int] = {}
        self._producer_zeros: dict[int, list[torch.Tensor]] = {}
        self._gc_was_enabled = False
        self.bypassed: dict[int, bool] = {}
        # ids of the nodes whose output is a term of the loss (the loss itself, and what a
        # sum, a mean or a scaling by a constant passes on): set below, read by the cut
        # tracker to keep only the detached terms that are added into the loss.
        self.on_term: set[int] = set()
        if root.grad_fn is None:
            return
        consumers: dict[int, int] = {}  # id(node) -> nodes of the graph that take its output
        zero_derivative: dict[int, Any] = {}  # hooked index -> the node feeding it
        # The same elements taken twice (`x[..., 2:4]` written twice): view nodes with the same
        # input and arguments, counted per key.
        views: dict[tuple[Any, ...], int] = {}
        # The walk creates a few Python objects per node (node wrappers, hooks, handles): with
        # the collector on, its full passes over a heap growing by 10^4 objects made the walk
        # superlinear (13k nodes: 1.2 s with, 0.76 s without). Off until remove(), which every
        # path calls (explain_gradients in `finally`, the probe after the backward or on the
        # next step / detach if that backward raised).
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        # Nodes whose output reaches the loss linearly (sums, means, scaling by a constant):
        # their additive inputs are terms of the loss. An add with a None input deeper, under
        # a product or a division of two live values (a Dice loss's `(inter + eps) / (union +
        # eps)`, `input.sum() + target.sum()`), adds a constant inside a term, not a term.
        on_term: set[int] = {id(root.grad_fn)}
        self.on_term = on_term
        # View nodes, keyed (a dir() of the node) only where a zero-derivative op needs to know
        # whether the value it is fed is taken twice: rare, and 5,000 keys on a model of 5,000
        # layers otherwise.
        view_nodes: list[tuple[Any, str]] = []
        # Breadth-first from the loss, each node once (_graph.graph_nodes written out: each
        # node's next_functions built once, not once for the walk and once for the frontier).
        seen: set[int] = set()
        frontier = deque([root.grad_fn])
        while frontier:
            node = frontier.popleft()
            if node is None or id(node) in seen:
                continue
            if self.visited == limit:
                self.truncated = True
                break
            seen.add(id(node))
            self.visited += 1
            kind = type(node).__name__
            term = id(node) in on_term
            nexts = node.next_functions
            linear = term and _passes_terms(kind, nexts)
            # One loop over the inputs (a generator for the frontier cost a Python call per
            # input: 155,000 a walk of a 5,000-layer model); None is queued and skipped, as before.
            for fn, _ in nexts:
                frontier.append(fn)
                if fn is not None:
                    consumers[id(fn)] = consumers.get(id(fn), 0) + 1
                    if linear:
                        on_term.add(id(fn))
            if kind in _VIEWS:
                view_nodes.append((node, kind))
            if kind == "AccumulateGrad":
                continue
            op = _OP_NAMES.get(kind) or op_name(node)  # op_name's cache, read inline
            detached = (
                term
                and kind in ("AddBackward0", "SubBackward0")
                and any(fn is None for fn, _ in nexts)
            )
            verdict_possible = op in BLOCKING_OPS or op == "nan_to_num" or detached
            if verdict_possible and focus and op == "mul" and _scales_by_nonzero(node, nexts):
                # Its gradient has the zeros of the one it receives, no more: no verdict to
                # measure (0.1 * tanh(h) in each of 5,000 residual blocks: 10,000 hooks a walk).
                verdict_possible = False
            if focus and not verdict_possible:
                try:  # _traced written out: one call less per node of a focused walk
                    traced = "traceback_" in node.metadata
                except Exception:  # noqa: BLE001
                    traced = False
                if not traced:
                    continue
            index = len(self.nodes)
            self.nodes.append(node)
            self.detached[index] = detached
            if op in ZERO_DERIVATIVE and nexts and nexts[0][0]:
                zero_derivative[index] = nexts[0][0]
            try:
                hook = self._hook(index, node, op in _ELEMENTWISE, kind == "MulBackward0")
                self.handles.append(node.register_hook(hook))
            except (RuntimeError, AttributeError):
                pass
            if kind == "MulBackward0" and len(nexts) == 2:
                self._watch_producer(index, nexts[0][0], nexts[1][0])
        if zero_derivative:
            for node, kind in view_nodes:
                vkey = _view_key(node, kind)
                if vkey is not None:
                    views[vkey] = views.get(vkey, 0) + 1
        # While the graph is alive (ids are not reused): the value fed to the op reaches the
        # loss another way, through another consumer of its node or the same view taken again.
        self.bypassed = {
            i: consumers.get(id(fed), 0) > 1 or views.get(_view_key(fed, type(fed).__name__), 0) > 1  # type: ignore[arg-type]
            for i, fed in zero_derivative.items()
        }

    def _watch_producer(self, index: int, a: Any, b: Any) -> None:
        """A multiply with one operand without graph (a constant): hook the node that made the
        other operand, to measure whether the zeros the multiply passes it survive it."""
        producer = b if a is None else a if b is None else None
        if producer is None or type(producer).__name__ == "AccumulateGrad":
            return  # both operands live, or a leaf: its zeros are the parameter's own
        key = id(producer)
        self._producer_of[index] = key
        if key in self._producer_zeros:
            return
        self._producer_zeros[key] = []
        try:
            self.handles.append(producer.register_hook(_ProducerHook(self, key)))
        except (RuntimeError, AttributeError):
            pass

    def _producer_zero_fractions(self) -> dict[int, list[float]]:
        """Per watched producer that ran: the zero fraction of each gradient it passed on."""
        keys = [k for k, v in self._producer_zeros.items() if v]
        values = _read_back([t for k in keys for t in self._producer_zeros[k]])
        out: dict[int, list[float]] = {}
        at = 0
        for k in keys:
            n = len(self._producer_zeros[k])
            out[k] = values[at : at + n]
            at += n
        return out

    def _hook(self, index: int, node: Any, elementwise: bool, mul: bool) -> _NodeHook:
        return _NodeHook(self, index, node, elementwise, mul)

    def _collect(
        self,
        index: int,
        node: Any,
        grad_inputs: tuple[Any, ...],
        grad_outputs: tuple[Any, ...],
        elementwise: bool,
        mul: bool,
    ) -> None:
        # Loops, not comprehensions and generators: this runs once per hooked node (each a
        # Python call less; thousands a walk on models of many layers).
        gos: list[torch.Tensor] = []
        gis: list[torch.Tensor] = []
        nbytes = 0
        for g in grad_outputs:
            if isinstance(g, torch.Tensor):
                gos.append(g)
                nbytes += g.numel() * g.element_size()
        for g in grad_inputs:
            if isinstance(g, torch.Tensor):
                gis.append(g)
                nbytes += g.numel() * g.element_size()
        go = gos[0] if gos else None
        l2_at = self._l2.n + len(self._pending_l2)
        self._pending_l2 += gos
        self._pending_l2 += gis
        l0_at = -1
        shapes: list[tuple[int, bool]] = []
        if elementwise and go is not None and gis:
            # Nonzero counts (L0 norms) of the gradient in and out: an elementwise op's input
            # gradient is (gradient out) x (local derivative), nonzero only where the gradient
            # out is, so the count lost is the count this op zeroed.
            l0_at = self._l0.n + len(self._pending_l0)
            self._pending_l0.append(go)
            self._pending_l0 += gis
            shapes = [(g.numel(), g.shape == go.shape) for g in gis]
        mask_at = -1
        # A multiply passes each operand (gradient out) x (the other operand's value): with both
        # operands requiring grad, a zeroed side is zeroed by the VALUE of a trained operand.
        both = mul and len(grad_inputs) == 2 and len(gis) == 2
        if mul and len(grad_inputs) == 2:
            other = None
            if grad_inputs[1] is None:
                other = node._saved_other
            elif grad_inputs[0] is None:
                other = node._saved_self
            if isinstance(other, torch.Tensor) and other.numel() > 1:
                mask_at = len(self._masks)
                self._masks.append(((other == 0) | (other == 1)).all())
        elements = go.numel() if go is not None else 0
        self.rows[index] = (l2_at, len(gos), len(gis), l0_at, shapes, elements, mask_at, both)
        self._pending_bytes += nbytes
        if len(self._pending_l2) >= FLUSH_TENSORS or self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending_l2:
            self._l2.extend(_norms(self._pending_l2, 2))
        if self._pending_l0:
            self._l0.extend(_norms(self._pending_l0, 0))
        self._pending_l2, self._pending_l0, self._pending_bytes = [], [], 0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self._gc_was_enabled:
            self._gc_was_enabled = False
            gc.enable()

    def finish(self, names: bool = True) -> GradientPath:
        """Remove the hooks, read the statistics back (one transfer per device) and judge."""
        # The collector stays paused through the read-back and the judging (_gc.py): their
        # ~10^4 short-lived objects a walk are garbage at its end.
        paused, self._gc_was_enabled = self._gc_was_enabled, False
        self.remove()
        try:
            return self._finish(names)
        finally:
            if paused:
                gc.enable()

    def _finish(self, names: bool) -> GradientPath:
        self._flush()
        l2, l0, masks = self._l2.read(), self._l0.read(), _read_back(self._masks)
        produced = self._producer_zero_fractions()
        host: dict[int, list[float]] = {}
        for i, (l2_at, n_out, n_in, l0_at, shapes, elements, mask_at, both) in self.rows.items():
            # sum(v * v for v in ...) in C: the same products summed in the same order
            a = l2[l2_at : l2_at + n_out]
            b = l2[l2_at + n_out : l2_at + n_out + n_in]
            in_sq = sum(map(_mul, a, a))
            out_sq = sum(map(_mul, b, b))
            zeroed = -1.0
            fracs: list[float] = []
            if l0_at >= 0:
                nnz_go, go_numel = l0[l0_at], max(elements, 1)
                for (numel, same), nnz in zip(shapes, l0[l0_at + 1 : l0_at + 1 + len(shapes)]):
                    if same:
                        fracs.append(max(0.0, (nnz_go - nnz) / max(nnz_go, 1.0)))
                    else:  # broadcast: compare the shares of zeros instead
                        zero_in = (go_numel - nnz_go) / go_numel
                        fracs.append(max(0.0, (numel - nnz) / max(numel, 1) - zero_in))
                zeroed = max(fracs)
                if (
                    len(shapes) == 2
                    and shapes[0][1]
                    and shapes[1][1]
                    and type(self.nodes[i]).__name__ == "WhereBackward0"
                ):
                    # where(c, a, b) routes each element's gradient to one branch: with both
                    # branches requiring grad, an element is zeroed only when neither gets it.
                    nnz = l0[l0_at + 1] + l0[l0_at + 2]
                    zeroed = max(0.0, (nnz_go - nnz) / max(nnz_go, 1.0))
            mask = masks[mask_at] if mask_at >= 0 else 0.0
            # A scalar add/sub whose other operand is a tensor without graph: a loss part
            # added without its graph.
            detached = float(self.detached[i] and elements == 1)
            # Zeros passed to one operand of a multiply where the other (the zero one) is
            # trained and itself gets its gradient: transient, gone once it moves. Both sides
            # zeroed (0 x 0, a fixed point that never moves) stays a block.
            trained = float(both and len(fracs) == 2 and min(fracs) < BLOCK_FRACTION)
            # The multiply's zeros filled in again by the op that made its trained operand:
            # no gradient it passes on has a larger share of zeros than the multiply received.
            refilled = 0.0
            made = produced.get(self._producer_of.get(i, -1))
            if made and l0_at >= 0 and zeroed > 0:
                zero_in = (max(elements, 1) - l0[l0_at]) / max(elements, 1)
                refilled = float(max(made) <= zero_in)
            host[i] = [in_sq, out_sq, zeroed, float(elements), detached, mask, trained, refilled]
        facts = [_judge(i, node, host.get(i), names) for i, node in enumerate(self.nodes)]
        for i, bypassed in self.bypassed.items():
            facts[i].bypassed = bypassed
        path = GradientPath(
            facts, time.perf_counter() - self.t0, self.truncated, visited=self.visited
        )
        self.nodes.clear()
        self.rows.clear()
        self._l2, self._l0, self._masks = _Scalars(), _Scalars(), []
        self._producer_of, self._producer_zeros = {}, {}
        return path


# Views whose arguments are plain numbers: two with the same input and arguments select the
# same elements.
_VIEWS = frozenset(
    {
        "SliceBackward0",
        "SelectBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "TBackward0",
        "ExpandBackward0",
        "AliasBackward0",
    }
)


# Nodes through which a loss term stays a term: the gradient passes unchanged or scaled by a
# constant (sums, means, negation, reshapes; a product or quotient with one live input).
_LINEAR_NODES = frozenset(
    {"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward0"}
    | {"RsubBackward1", "NegBackward0", "MeanBackward0", "MeanBackward1", "SumBackward0"}
    | {"SumBackward1", "CloneBackward0", "ViewBackward0", "ReshapeAliasBackward0"}
    | {"UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "MulBackward1"}
    | {"DivBackward1", "ToCopyBackward0", "StackBackward0", "CatBackward0"}
)


def _passes_terms(kind: str, nexts: Any) -> bool:
    if kind in _LINEAR_NODES:
        return True
    if kind in ("MulBackward0", "DivBackward0"):
        return sum(fn is not None for fn, _ in nexts) == 1
    return False


def _view_key(node: Any, kind: str) -> tuple[Any, ...] | None:
    if kind not in _VIEWS or not node.next_functions or node.next_functions[0][0] is None:
        return None
    args = []
    for name in dir(node):
        if name.startswith("_saved_"):
            try:
                value = getattr(node, name)
            except Exception:  # noqa: BLE001 - a freed buffer: not a plain argument
                continue
            if isinstance(value, int | tuple | list):
                args.append((name, tuple(value) if isinstance(value, list) else value))
    return (id(node.next_functions[0][0]), kind, tuple(args))


def _traced(node: Any) -> bool:
    """Whether the node was created under anomaly mode (by traced loss code)."""
    try:
        return "traceback_" in node.metadata
    except Exception:  # noqa: BLE001
        return False


def _norms(tensors: list[torch.Tensor], order: int) -> list[torch.Tensor]:
    """Fused norms; one at a time for what the fused kernel refuses (sparse, odd layouts)."""
    try:
        return list(torch._foreach_norm(tensors, order))
    except (RuntimeError, TypeError):
        out = []
        for t in tensors:
            try:
                t = t.to_dense() if t.is_sparse else t
                out.append(torch.linalg.vector_norm(t.float(), order))
            except (RuntimeError, TypeError):
                out.append(torch.tensor(float("nan")))
        return out


def _read_back(scalars: list[torch.Tensor]) -> list[float]:
    """Device scalars to floats: one stack and one transfer per device, order kept."""
    return _Scalars(scalars).read()


class _Scalars:
    """Device scalars in slot order, stacked a batch at a time (each as float32, as read): a
    walk holds one tensor per batch, not one Python object per statistic (20,000 on a model
    of 5,000 layers, each an object for the collector to walk), and `read()` takes them to the
    host in one transfer per device."""

    __slots__ = ("chunks", "n")

    def __init__(self, scalars: list[torch.Tensor] | None = None) -> None:
        self.chunks: list[torch.Tensor] = []
        self.n = 0
        if scalars:
            self.extend(scalars)

    def __len__(self) -> int:
        return self.n

    def extend(self, scalars: list[torch.Tensor]) -> None:
        if not scalars:
            return
        self.n += len(scalars)
        device = scalars[0].device
        with torch.no_grad():
            if all(t.device == device for t in scalars):
                try:
                    # 0-d tensors of any dtype: promoted by the stack, then float32 (what a
                    # per-scalar .float() gives: float64 and int values round once either way)
                    self.chunks.append(torch.stack(scalars).float())
                    return
                except RuntimeError:
                    pass  # not all 0-d: one at a time below
            self.chunks += [t.reshape(1).float() for t in scalars]

    def read(self) -> list[float]:
        if not self.chunks:
            return []
        by_dev: dict[torch.device, list[torch.Tensor]] = {}
        for c in self.chunks:
            by_dev.setdefault(c.device, []).append(c)
        if len(by_dev) == 1:
            return torch.cat(self.chunks).cpu().tolist()
        read = {dev: iter(torch.cat(cs).cpu().tolist()) for dev, cs in by_dev.items()}
        out: list[float] = []
        for c in self.chunks:
            values = read[c.device]
            out += [next(values) for _ in range(c.numel())]
        return out


def _judge(index: int, node: Any, row: list[float] | None, names: bool) -> NodeFacts:
    op = op_name(node)
    source = node_source(node) if names else None
    if row is None:
        return NodeFacts(index, op, type(node).__name__, source, None, None, None, 0, NO_GRAD_IN)
    in_sq, out_sq, zeroed, elements, detached, mask, trained, refilled = row
    g_in, g_out = in_sq**0.5, out_sq**0.5
    is_mask = bool(mask)
    measured = zeroed >= 0
    zeroed = max(zeroed, 0.0)
    if g_in == 0:
        verdict = NO_GRAD_IN
    elif op == "mul" and refilled and zeroed > 0:
        verdict = REFILLED
    elif op == "mul" and is_mask and zeroed > 0:
        verdict = MASK
    elif op == "mul" and trained and zeroed >= PARTLY_FRACTION:
        verdict = ZERO_OPERAND
    elif zeroed >= BLOCK_FRACTION and op in BLOCKING_OPS:
        verdict = BLOCKS
    elif zeroed >= PARTLY_FRACTION and op in BLOCKING_OPS:
        verdict = PARTLY
    elif op in _ELEMENTWISE and elements > 1 and g_out < ATTENUATION * g_in:
        verdict = ATTENUATES
    elif detached:
        verdict = DETACHED
    else:
        verdict = PASSES
    return NodeFacts(
        index,
        op,
        type(node).__name__,
        source,
        g_in,
        g_out,
        zeroed if measured else None,
        int(elements),
        verdict,
        detached_input=bool(detached),
        mask=is_mask,
        trained_operand=bool(trained) and zeroed >= PARTLY_FRACTION,
        refilled=verdict == REFILLED,
    )


def explain_gradients(
    loss: torch.Tensor, params: Iterable[torch.Tensor] | None = None, *, limit: int = MAX_NODES
) -> GradientPath:
    """Run `loss.backward()` with a hook on every autograd node of its graph and return where
    the gradient goes (call it instead of `loss.backward()`; `.grad` ends up exactly as a plain
    backward leaves it). `params`: accumulate only into these (as `backward(inputs=...)`).

    Source lines are named only for nodes created under anomaly mode: compute the loss inside
    `with traindoctor.trace_lines():` (watch() does so on its sampled steps).
    """
    if not isinstance(loss, torch.Tensor):
        from .errors import UsageError

        raise UsageError(
            f"explain_gradients(loss) takes the loss tensor, got {type(loss).__name__}"
        )
    if loss.grad_fn is None:
        from .errors import UsageError

        raise UsageError(
            "explain_gradients(loss): the loss has no grad_fn (computed under no_grad, from "
            ".detach()/.item()/.data or numpy): no gradient flows at all"
        )
    walk = Walk(loss, limit)
    try:
        inputs = list(params) if params is not None else None
        torch.autograd.backward(loss, inputs=inputs)
    finally:
        walk.remove()
    return walk.finish()
