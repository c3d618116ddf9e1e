"""Losses: values of backward roots and logged losses, their graph, and constant scale factors."""

from __future__ import annotations

import math
import sys
from typing import Any, ClassVar

import torch

from .._graph import graph_nodes
from .._source import is_user_file, relpath, user_source_with_code
from ..timeline import signal
from .base import Probe, Recorder
from .parts import LOSS_PARTS_GRAD, PartsMeter

LOSS_BACKWARD = signal("loss.backward", "per step: list of backward-root values, scaler removed")
LOSS_FACTOR = signal(
    "loss.factor", "per step: list of constant factors (e.g. 1/accum) applied just before backward"
)
LOSS_SITE = signal(
    "loss.site", "per step: list of call-site ids (event backward_site) of each backward pass"
)
LOSS_TRAIN = signal("loss.train", "per step: list of losses logged with doc.log(loss=...)")
LOSS_VAL = signal("loss.val", "per step: list of losses logged inside doc.validating()")
BACKWARD_COUNT = signal("backward.count", "backward passes in the step")
LOSS_PARTS = signal("loss.parts", "per step: {part name: value} of doc.log(parts=...)")
METRIC = "metric"  # metric.<name>: per step list of logged metric values
signal(METRIC, "prefix: metric.<name> holds values logged with doc.log(<name>=...)")

_SCALE_OPS = ("MulBackward0", "DivBackward0")
# Wrapped Python numbers (`loss / 4`, `loss * 0.25`) are saved as 0-d CPU tensors of these dtypes.
_WRAPPED_DTYPES = (torch.int64, torch.float64)


def constant_factor(root: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Peel `x * c` / `x / c` nodes with a constant Python number c off the top of the graph.

    Returns the product of those constants and the tensor-like node below. A data-dependent
    tensor divisor (e.g. `loss / mask.sum()`) stops the walk: it is not a constant factor.
    """
    factor = 1.0
    node = root.grad_fn
    for _ in range(8):
        if node is None or type(node).__name__ not in _SCALE_OPS:
            break
        other = getattr(node, "_saved_other", None)
        nxt = node.next_functions
        if (
            not isinstance(other, torch.Tensor)
            or other.dim() != 0
            or other.device.type != "cpu"
            or other.dtype not in _WRAPPED_DTYPES
            or len(nxt) != 2
            or nxt[1][0] is not None
        ):
            break
        value = float(other)  # CPU scalar: no device sync
        if value == 0 or not math.isfinite(value):
            break
        factor = factor * value if type(node).__name__ == "MulBackward0" else factor / value
        node = nxt[0][0]
    return factor, node


def reaches_params(root: torch.Tensor, param_ids: set[int], limit: int = 100_000):
    """None if the graph of `root` reaches a watched parameter; else the shapes of the leaves
    it reaches.

    Breadth-first from the root, stopping at the first watched parameter found, so a healthy
    loss costs a few nodes; only a graph that reaches none is walked whole. A graph that reaches
    an `nn.Parameter` traindoctor does not watch belongs to another model: None too.
    """
    leaves: list[list[int]] = []
    visited = 0
    for node in graph_nodes(root, limit):
        visited += 1
        var = getattr(node, "variable", None)
        if var is not None:
            if id(var) in param_ids or isinstance(var, torch.nn.Parameter):
                return None
            leaves.append(list(var.shape))
    return leaves if visited < limit else None


class LossProbe(Probe):
    name = "loss"
    provides: ClassVar[tuple[str, ...]] = (
        LOSS_BACKWARD,
        LOSS_FACTOR,
        LOSS_SITE,
        LOSS_TRAIN,
        LOSS_VAL,
        BACKWARD_COUNT,
        LOSS_PARTS,
        LOSS_PARTS_GRAD,
        METRIC,  # the family metric.<name>
    )
    provides_events: ClassVar[tuple[str, ...]] = (
        "backward_call",
        "backward_site",
        "log_call",
        "loss_not_differentiable",
        "parts_graph_unavailable",
        "parts_no_shared_params",
        "parts_not_measured",
    )
    provides_facts: ClassVar[tuple[str, ...]] = ("validation_metrics", "parts_shared_params")

    def __init__(self) -> None:
        super().__init__()
        self._parts = PartsMeter()
        self.backward_total = 0
        self._sources_seen: set[str] = set()
        self._backward_seen: set[tuple[str, float]] = set()
        self._factors_seen: set[float] = set()
        self._sites: dict[tuple[str, int] | None, int] = {}
        self._last_site: int | None = None
        # The depth (from on_backward) of the user's frame that called backward() last time,
        # and the sites known by (code object, line) at that depth. Read on every backward
        # (one getframe, no Python call): a new backward() line after the structural steps
        # (a second task's loop) is a new site, dated at its first backward; lines taking
        # turns (a GAN's D and G) are found in the dict without a stack walk.
        self._site_depth: int | None = None
        self._site_frames: dict[tuple[Any, int], int] = {}
        self._last_factor: float | None = None
        self._count_step, self._count = 0, 0  # backward passes in the open step

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        self.backward_total += 1
        if step != self._count_step:
            self._count_step, self._count = step, 0
        self._count += 1
        rec.record(step, BACKWARD_COUNT, self._count)
        if loss.grad_fn is None:
            self._not_differentiable(step, loss, rec, via="backward")
            return
        structural = self.ctx.budget.structural_steps if self.ctx else 0
        if step <= structural and self.ctx is not None:
            leaves = reaches_params(loss, set(self.ctx.param_names))
            if leaves is not None:
                self._not_differentiable(step, loss, rec, via="backward", leaves=leaves)
        factor, _ = constant_factor(loss)
        rec.append(step, LOSS_FACTOR, factor)
        # The call site matters only to tell factors apart (TD109): walk the stack on the
        # structural steps and when the factor changes; otherwise the site is the last one.
        known = None
        if self._site_depth is not None:
            try:
                frame = sys._getframe(self._site_depth)
            except ValueError:
                pass
            else:
                known = self._site_frames.get((frame.f_code, frame.f_lineno))
        if known is None or step <= structural or factor != self._last_factor:
            self._last_site = self._site_id(step, rec)
            self._last_factor = factor
        else:
            self._last_site = known
        rec.append(step, LOSS_SITE, self._last_site)
        if loss.numel() == 1:
            # The loss the user computed: the factor is divided out on the host at read-back.
            rec.defer(step, LOSS_BACKWARD, loss.detach(), append=True, scale=1 / factor)
        # Where backward() is called: on the first steps and whenever a new factor shows up
        # (a stack walk costs microseconds; not every step).
        if step > structural and factor in self._factors_seen:
            return
        self._factors_seen.add(factor)
        src = user_source_with_code(skip=1)
        key = (src["source"], round(factor, 12)) if src else None
        if key and key not in self._backward_seen and len(self._backward_seen) < 16:
            self._backward_seen.add(key)
            rec.event(
                step,
                "backward_call",
                factor=factor,
                backward_index=self.backward_total,
                **src,
            )

    def _site_id(self, step: int, rec: Recorder) -> int:
        """A small id for the line that called backward(), so that rules can compare the
        passes of one call site (micro-batches) without storing a string per backward."""
        where = key = None
        frame, depth = sys._getframe(2), 1  # on_backward's caller, at depth 1 from there
        while frame is not None and depth < 40:
            if is_user_file(frame.f_code.co_filename):
                where = (frame.f_code.co_filename, frame.f_lineno)
                key = (frame.f_code, frame.f_lineno)
                break
            frame, depth = frame.f_back, depth + 1
        if key is None:  # no user frame: the caller's frame stands for the path
            caller = sys._getframe(2)
            depth, key = 1, (caller.f_code, caller.f_lineno)
        if depth != self._site_depth or len(self._site_frames) >= 64:
            self._site_frames.clear()  # another call path: the depths differ
        self._site_depth = depth
        site = self._sites.get(where)
        if site is None:
            site = len(self._sites)
            self._sites[where] = site
            source = f"{relpath(where[0])}:{where[1]}" if where else None
            rec.event(step, "backward_site", site=site, source=source)
        self._site_frames[key] = site
        return site

    def on_log(
        self,
        step: int,
        loss: torch.Tensor | float | None,
        parts: dict[str, Any] | None,
        metrics: dict[str, Any],
        validating: bool,
        rec: Recorder,
    ) -> None:
        kind = "log_val" if validating else "log_train"
        if kind not in self._sources_seen:
            self._sources_seen.add(kind)
            rec.event(step, "log_call", validating=validating, **(user_source_with_code() or {}))
        if loss is not None:
            name = LOSS_VAL if validating else LOSS_TRAIN
            if isinstance(loss, torch.Tensor):
                if not validating and loss.grad_fn is None:
                    self._not_differentiable(step, loss, rec, via="log")
                rec.defer(step, name, _scalar(loss), append=True)
            else:
                rec.append(step, name, float(loss))
        for pname, value in (parts or {}).items():
            if isinstance(value, torch.Tensor):
                rec.defer(step, LOSS_PARTS, _scalar(value).reshape(1), keys=[pname])
            else:
                rec.record(step, LOSS_PARTS, float(value), key=pname)
        if parts and not validating and self.ctx is not None:
            # Each part's gradient on the shared params, before the user's backward frees the
            # graph (sampled steps; .grad is not touched).
            self._parts.measure(self.ctx, step, parts, rec)
        if validating and metrics:
            # Metrics logged inside doc.validating() are validation metrics whatever their
            # names (TD404 judges those).
            seen = rec.timeline.facts.setdefault("validation_metrics", [])
            seen.extend(m for m in metrics if m not in seen)
        for mname, value in metrics.items():
            sig = f"{METRIC}.{mname}"
            if isinstance(value, torch.Tensor):
                rec.defer(step, sig, _scalar(value), append=True)
            else:
                rec.append(step, sig, float(value))

    def _not_differentiable(
        self,
        step: int,
        loss: torch.Tensor,
        rec: Recorder,
        via: str,
        leaves: list[list[int]] | None = None,
    ) -> None:
        # Capped per origin, so that detached copies passed to doc.log() every step cannot use
        # up the cap before a backward() on a loss without graph is recorded.
        seen = rec.timeline.events("loss_not_differentiable")
        if sum(1 for e in seen if e.get("via") == via) >= 8:
            return
        src = user_source_with_code(skip=1) or {}
        rec.event(
            step,
            "loss_not_differentiable",
            via=via,
            requires_grad=bool(loss.requires_grad),
            is_leaf=bool(loss.is_leaf),
            grad_enabled=torch.is_grad_enabled(),
            inference=bool(loss.is_inference()),
            model_output=self.ctx.state.model_output if self.ctx else None,
            grad_fn=type(loss.grad_fn).__name__ if loss.grad_fn is not None else None,
            leaves=leaves,
            **src,
        )


def _scalar(value: torch.Tensor) -> torch.Tensor:
    """A 0-d view of a logged value; only a non-scalar one costs a (mean) kernel."""
    value = value.detach()
    if value.dim() == 0:
        return value  # the usual case: a reshape would cost a dispatch (~3 µs) for nothing
    return value.reshape(()) if value.numel() == 1 else value.float().mean()
