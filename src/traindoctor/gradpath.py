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
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ._graph import graph_nodes, node_source

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
ATTENUATES = "attenuates"  # elementwise op cutting the norm by orders of magnitude
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


class Walk:
    """Hooks on every node of one loss graph for one backward; `finish()` reads them back."""

    def __init__(self, root: torch.Tensor, limit: int = MAX_NODES) -> None:
        self.t0 = time.perf_counter()
        self.nodes: list[Any] = []
        self.handles: list[Any] = []
        self.stats: dict[int, tuple[Any, list[torch.Tensor]]] = {}
        self.truncated = False
        if root.grad_fn is None:
            return
        for i, node in enumerate(graph_nodes(root, limit + 1)):
            if i == limit:
                self.truncated = True
                break
            if type(node).__name__ == "AccumulateGrad":
                continue
            self.nodes.append(node)
            try:
                self.handles.append(node.register_hook(self._hook(len(self.nodes) - 1, node)))
            except (RuntimeError, AttributeError):
                pass

    def _hook(self, index: int, node: Any):
        mul = type(node).__name__ == "MulBackward0"
        elementwise = op_name(node) in _ELEMENTWISE

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            with contextlib.suppress(Exception):
                self.stats[index] = _node_stats(node, grad_inputs, grad_outputs, mul, elementwise)
            return None

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def finish(self, names: bool = True) -> GradientPath:
        """Remove the hooks, read the statistics back (one transfer per device) and judge."""
        self.remove()
        by_dev: dict[torch.device, list[torch.Tensor]] = {}
        for _, device_vals in self.stats.values():
            for t in device_vals:
                by_dev.setdefault(t.device, []).append(t)
        values: dict[torch.device, Iterator[float]] = {}
        for dev, ts in by_dev.items():
            flat = torch.stack([t.float() for t in ts]).cpu().tolist()
            values[dev] = iter(flat)
        host: dict[int, list[float]] = {}
        for i, (info, device_vals) in self.stats.items():
            n_in, n_out, elements, detached, has_zeroed, has_mask = info
            vals = [next(values[t.device]) for t in device_vals]
            in_sq = sum(v * v for v in vals[:n_in])
            out_sq = sum(v * v for v in vals[n_in : n_in + n_out])
            rest = vals[n_in + n_out :]
            zeroed = rest.pop(0) if has_zeroed else -1.0
            mask = rest.pop(0) if has_mask else 0.0
            host[i] = [in_sq, out_sq, zeroed, elements, detached, mask]
        facts = [_judge(i, node, host.get(i), names) for i, node in enumerate(self.nodes)]
        path = GradientPath(facts, time.perf_counter() - self.t0, self.truncated)
        self.nodes.clear()
        self.stats.clear()
        return path


def _node_stats(
    node: Any,
    grad_inputs: tuple[Any, ...],
    grad_outputs: tuple[Any, ...],
    mul: bool,
    elementwise: bool,
) -> tuple[tuple[int, int, float, float, bool, bool], list[torch.Tensor]]:
    """(host facts, device scalars): the norms of the gradients in and out (one fused
    `_foreach_norm`), then the zeroed fraction (elementwise ops) and the 0/1-mask flag (mul)."""
    gos = [g for g in grad_outputs if isinstance(g, torch.Tensor)]
    gis = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
    go = gos[0] if gos else None
    device_vals = list(torch._foreach_norm(gos + gis)) if gos or gis else []
    has_zeroed = False
    if elementwise and go is not None and gis:
        carried = go != 0
        n_carried = carried.sum().clamp_min(1)
        fracs = []
        for g in gis:
            if g.shape == go.shape:
                fracs.append((carried & (g == 0)).sum() / n_carried)
            else:
                fracs.append(((g == 0).float().mean() - (~carried).float().mean()).clamp_min(0))
        device_vals.append(torch.stack(fracs).max() if len(fracs) > 1 else fracs[0])
        has_zeroed = True
    # A scalar add/sub whose other operand is a tensor that does not require grad: a loss part
    # added without its graph.
    detached = float(
        type(node).__name__ in ("AddBackward0", "SubBackward0")
        and go is not None
        and go.numel() == 1
        and any(fn is None for fn, _ in node.next_functions)
    )
    has_mask = False
    if mul and len(grad_inputs) == 2:
        other = None
        with contextlib.suppress(Exception):
            if grad_inputs[1] is None:
                other = node._saved_other
            elif grad_inputs[0] is None:
                other = node._saved_self
        if isinstance(other, torch.Tensor) and other.numel() > 1:
            device_vals.append(((other == 0) | (other == 1)).all())
            has_mask = True
    elements = float(go.numel()) if go is not None else 0.0
    info = (len(gos), len(gis), elements, detached, has_zeroed, has_mask)
    return info, device_vals


def _judge(index: int, node: Any, row: list[float] | None, names: bool) -> NodeFacts:
    op = op_name(node)
    source = node_source(node) if names else None
    if row is None:
        return NodeFacts(index, op, type(node).__name__, source, None, None, None, 0, NO_GRAD_IN)
    in_sq, out_sq, zeroed, elements, detached, mask = row
    g_in, g_out = in_sq**0.5, out_sq**0.5
    is_mask = bool(mask)
    measured = zeroed >= 0
    zeroed = max(zeroed, 0.0)
    if g_in == 0:
        verdict = NO_GRAD_IN
    elif op == "mul" and is_mask and zeroed > 0:
        verdict = MASK
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
