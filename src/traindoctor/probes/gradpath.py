"""Gradient path: on sampled steps, walk the user's own backward node by node.

On step 1, every `GRADPATH_EVERY` steps after it, and on the step after TD107/TD108 first
fires, hooks go on the autograd nodes of the loss graph that can carry a verdict (every node
the loss code created, and anywhere an op that can zero a gradient: clamp, where, relu, mul,
round, ...) just before the user's backward runs (`on_backward`), and come off right after it
(`on_after_backward`); they return None, so no gradient changes. The rest of the model's
backward runs unhooked: a walk costs a fraction of a backward, not several. The loss code of those steps runs under anomaly mode (metadata only, no NaN
checks) from the model's forward to the backward, so each node knows its source line. The
per-node norms stay on the device and are read back in one transfer per device; the facts go
into the timeline as a `gradient_path` event (host values only).

Also records which `doc.log(parts=...)` parts carry no graph (`gradpath.parts_detached`).

In the same window a `CutTracker` (probes/cuts.py, a TorchFunctionMode) follows the loss code's
torch calls: where a gradient is cut (`.detach()`, `.data`, no_grad, argmax, integer casts) and
whether the cut tensor ends up added to the loss or logged as a part (`gradient_cut` events,
host values only). It is pushed only on walk steps: other steps pay nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _loglik, _reach
from .._anomaly_window import close_window, open_window
from ..gradpath import BLOCKS, MASK, PARTLY, ZERO_OPERAND, Walk
from ..timeline import signal
from .base import AttachContext, Probe, Recorder
from .cuts import CutTracker

GRADPATH_EVERY = 1000  # a walk costs up to about one extra backward: rare after step 1
SYMPTOMS = ("TD107", "TD108")  # a stuck loss: walk the next step to say where the gradient goes
MAX_WALKS = 8
MAX_EVENT_NODES = 120

PARTS_DETACHED = signal(
    "gradpath.parts_detached",
    "per step: {'detached': [part names without graph], 'with_graph': [names]} from doc.log",
)


class GradPathProbe(Probe):
    name = "gradpath"
    provides = (PARTS_DETACHED,)  # and the `gradient_path` event
    provides_events = ("gradient_path", "gradient_cut")

    def __init__(self) -> None:
        super().__init__()
        self._due: set[int] = {1}
        self._symptoms_seen: set[str] = set()
        self._walk: Walk | None = None
        self._walk_step = 0
        self._walked: set[int] = set()
        self._window: bool | None = None  # True while our anomaly window is open
        self._window_hooks: list[Any] = []
        self._walks = 0
        self._parts_steps = 0
        self._retried = False
        self._rec: Recorder | None = None
        self._window_step = 0
        self._cuts = CutTracker(self._on_cut)
        self._cut_step = 0  # the step `gradient_cut` events are recorded at
        self._cuts_failed = False
        self._findings: list[Any] = []  # the last diagnosis pass's findings
        # The walk step's loss read as `+ (score - logsumexp)` (_loglik), before its backward
        # frees the numbers saved on the nodes; recorded with the walk.
        self._loglik: dict[str, Any] | None = None
        self._unreached: list[dict[str, Any]] = []  # loss terms reaching no trained param

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        self._rec = rec

    # -- scheduling -----------------------------------------------------------------------
    def _is_due(self, step: int) -> bool:
        if self._walks >= MAX_WALKS or step in self._walked:
            return False
        return step in self._due or step % GRADPATH_EVERY == 0

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._remove_window_hooks()
        self._close_window()
        if self._walk is not None:  # its backward raised: drop the walk, hooks and all
            self._walk.remove()
            self._walk = None
        ctx = self.ctx
        if ctx is None or not self._is_due(step):
            return
        self._window_step = step
        for model in ctx.eager_models().values():
            self._window_hooks.append(
                model.register_forward_hook(ctx.hook("probe gradpath", self._open_window))
            )

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        for f in self._findings:
            if f.code in SYMPTOMS and f.code not in self._symptoms_seen:
                self._symptoms_seen.add(f.code)
                self._due.add(step + 1)

    # -- source lines of the loss code ----------------------------------------------------
    def _open_window(self, module: torch.nn.Module, _args: Any, _output: Any) -> None:
        assert self.ctx is not None
        if not module.training or not torch.is_grad_enabled() or self.ctx.state.validating:
            return
        if not self._cuts.active and not self._cuts_failed:
            self._cut_step = self._window_step
            self._cuts.start()
        if self._window is not None or not open_window():
            return  # already on (the numerics probe's window, or the user's): lines recorded
        self._window = True

    def _close_window(self) -> None:
        opened, self._window = self._window, None
        if opened:
            close_window()
        self._cuts.stop()
        err, self._cuts.error = self._cuts.error, None
        if err is not None and self.ctx is not None:
            # Lineage facts are lost from here on, never the user's calls: switch it off.
            self._cuts_failed = True
            self.ctx.guard.record("probe gradpath cuts", err)

    def _on_cut(self, fact: dict[str, Any]) -> None:
        if self._rec is not None:
            self._rec.event(self._cut_step, "gradient_cut", **fact)

    def _remove_window_hooks(self) -> None:
        for h in self._window_hooks:
            h.remove()
        self._window_hooks.clear()

    # -- the walk -------------------------------------------------------------------------
    def on_evaluation(self, step: int, rec: Recorder) -> None:
        """A closure re-evaluation's backward (steps.py): the loss code's window closes."""
        self._close_window()

    def on_backward(self, step: int, root: torch.Tensor, loss: torch.Tensor, rec: Recorder) -> None:
        self._close_window()
        self._remove_window_hooks()
        if self._walk is not None or not self._is_due(step) or root.grad_fn is None:
            self._cuts.confirm(None)
            return
        self._walked.add(step)
        self._walks += 1
        self._walk_step = step
        self._walk = Walk(root, focus=True)
        self._loglik = None
        self._unreached = []
        if self._walks <= 2:
            try:
                if not self._maximizes():
                    self._loglik = _loglik.log_likelihood(root)
                if self.ctx is not None and self.ctx.optimizers:
                    self._unreached = _reach.unreached_terms(root, self._trainable())
            except Exception as exc:  # noqa: BLE001 - a fact is lost, never the user's step
                if self.ctx is not None:
                    self.ctx.guard.record("probe gradpath loglik", exc)
        # Cut tensors added to a live scalar count as loss terms only where the loss sums
        # that scalar in (not a solver's `t1 = t0 + dt` run after the model's forward).
        self._cuts.confirm(self._walk.on_term)

    def _trainable(self) -> set[int]:
        """Ids of the tensors an optimizer holds or the watched models name."""
        ctx = self.ctx
        assert ctx is not None
        ids = set(ctx.param_names)
        for opt in ctx.optimizers:
            for g in getattr(opt, "param_groups", ()):
                ids.update(id(p) for p in g["params"])
        return ids

    def _maximizes(self) -> bool:
        """An optimizer built with `maximize=True`: a log-likelihood as the loss is right."""
        ctx = self.ctx
        return ctx is not None and any(
            g.get("maximize") for opt in ctx.optimizers for g in getattr(opt, "param_groups", ())
        )

    def on_after_backward(self, step: int, rec: Recorder) -> None:
        walk, self._walk = self._walk, None
        if walk is None:
            return
        path = walk.finish()
        self._record(self._walk_step, path, rec)
        if not self._retried and not any(n.source for n in path.nodes):
            # No source lines: the forward ran before the window could open (zero-code mode
            # attaches at the first backward). Walk the next step once more, with lines.
            self._retried = True
            self._due.add(self._walk_step + 1)

    def _record(self, step: int, path: Any, rec: Recorder) -> None:
        in_loss = [n for n in path.nodes if n.source]
        ref = max((n.grad_in or 0.0 for n in (in_loss or path.nodes)), default=0.0)
        keep = [
            n
            for n in path.nodes
            if n.source or n.verdict in (BLOCKS, PARTLY, MASK, ZERO_OPERAND) or n.detached_input
        ][:MAX_EVENT_NODES]
        rec.event(
            step,
            "gradient_path",
            nodes_walked=path.visited,
            nodes_measured=len(path.nodes),
            truncated=path.truncated,
            seconds=round(path.seconds, 5),
            reference_grad=ref,
            lines_known=bool(in_loss),
            log_likelihood=self._loglik,
            unreached_terms=self._unreached,
            nodes=[
                {
                    "index": n.index,
                    "op": n.op,
                    "source": n.source,
                    "grad_in": n.grad_in,
                    "grad_out": n.grad_out,
                    "zeroed": n.zeroed,
                    "elements": n.elements,
                    "verdict": n.verdict,
                    "detached_input": n.detached_input,
                    "mask": n.mask,
                    "trained_operand": n.trained_operand,
                    "bypassed": n.bypassed,
                    "refilled": n.refilled,
                }
                for n in keep
            ],
        )

    def on_diagnosis(self, findings: list[Any]) -> None:
        self._findings = findings  # read at the next step's end, as they stood then

    # -- loss parts without graph ---------------------------------------------------------
    def on_log(
        self,
        step: int,
        loss: Any,
        parts: dict[str, Any] | None,
        metrics: dict[str, Any],
        validating: bool,
        rec: Recorder,
    ) -> None:
        if parts and not validating:
            self.note_parts(step, parts, rec)

    def note_parts(self, step: int, parts: dict[str, Any] | None, rec: Recorder) -> None:
        if not parts or self._parts_steps >= 16:
            return
        detached = []
        with_graph = []
        for name, value in parts.items():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                with_graph.append(name)
            else:
                detached.append(name)
        self._parts_steps += 1
        rec.record(step, PARTS_DETACHED, {"detached": detached, "with_graph": with_graph})
        if detached and not self._cuts_failed:
            # Where each part without graph was cut, if the last walk's window saw it.
            self._cut_step = step
            try:
                self._cuts.parts({n: parts[n] for n in detached})
            except Exception as exc:  # noqa: BLE001 - the parts facts above are kept
                self._cuts_failed = True
                if self.ctx is not None:
                    self.ctx.guard.record("probe gradpath cuts", exc)

    def detach(self) -> None:
        super().detach()
        self._remove_window_hooks()
        self._close_window()
        self._cuts.reset()
        if self._walk is not None:
            self._walk.remove()
            self._walk = None
