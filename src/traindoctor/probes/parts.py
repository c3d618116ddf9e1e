"""Loss parts: the gradient norm each part of the loss puts on the parameters the parts share.

Measured when `doc.log(parts=...)` is called with parts that still carry their graph (before
the user's backward), on the structural steps and then on sampled steps spaced so that the
extra backward passes stay a small share of the run: `torch.autograd.grad(part, params,
retain_graph=True, allow_unused=True)` returns the gradients without touching `.grad`, and
their norms are taken with one fused `torch._foreach_norm` per part and read back in batches.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..distributed.dtensor import local_all
from ..timeline import signal
from .base import AttachContext, Recorder, by_device

LOSS_PARTS_GRAD = signal(
    "loss.parts_grad",
    "per step: {part name: ||d part / d shared params||} on measured steps (sampled)",
)
# Measured steps after the structural ones: every `PARTS_EVERY` sampled intervals.
PARTS_EVERY = 5


class PartsMeter:
    """Owned by the loss probe; measures at most once per step."""

    def __init__(self) -> None:
        self._last_step = 0
        self.disabled = False

    def due(self, ctx: AttachContext, step: int) -> bool:
        if self.disabled or step == self._last_step:
            return False
        budget = ctx.budget
        if step <= budget.structural_steps:
            return True
        return budget.sampled(step) and step % (budget.interval * PARTS_EVERY) == 0

    def measure(self, ctx: AttachContext, step: int, parts: dict[str, Any], rec: Recorder) -> None:
        graphs = {
            n: v
            for n, v in parts.items()
            if isinstance(v, torch.Tensor) and v.grad_fn is not None and v.numel() == 1
        }
        if len(graphs) < 2 or not self.due(ctx, step):
            return
        self._last_step = step
        t0 = time.perf_counter()
        try:
            self._measure(ctx, step, graphs, rec)
        finally:
            ctx.budget.spend(time.perf_counter() - t0)

    def _measure(
        self, ctx: AttachContext, step: int, graphs: dict[str, torch.Tensor], rec: Recorder
    ) -> None:
        named = [(n, p) for n, p in ctx.named_params() if p.requires_grad]
        if not named:
            return
        hooked = _backward_hooks(ctx)
        if hooked:
            # Extra backward passes would call the user's module backward hooks again.
            self.disabled = True
            rec.event(step, "parts_not_measured", reason=f"backward hooks on {hooked}")
            return
        params = [p for _, p in named]
        buffers = [b for m in ctx.models.values() for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]  # buffers are small (BatchNorm stats)
        grads: dict[str, tuple[torch.Tensor | None, ...]] = {}
        try:
            for pname, part in graphs.items():
                grads[pname] = torch.autograd.grad(
                    part, params, retain_graph=True, allow_unused=True
                )
        except RuntimeError as exc:
            # The graph was freed (doc.log() after backward()): say so once, stop trying.
            self.disabled = True
            rec.event(step, "parts_graph_unavailable", error=str(exc).split("\n")[0][:200])
            return
        finally:
            # Activation checkpointing recomputes the forward inside autograd.grad, which would
            # update BatchNorm statistics a second time: put the buffers back exactly, and stop.
            # (Compared by value: batch_norm updates its statistics without a version bump.)
            changed = [i for i, b in enumerate(buffers) if not torch.equal(b, saved[i])]
            if changed:
                with torch.no_grad():
                    for i in changed:
                        buffers[i].copy_(saved[i])
                self.disabled = True
                rec.event(
                    step, "parts_not_measured", reason="the forward is recomputed in backward"
                )
        reached = [sum(g[i] is not None for g in grads.values()) for i in range(len(params))]
        shared = [i for i, r in enumerate(reached) if r >= 2]
        # Parts that share no parameter (separate heads): each is measured on what it reaches.
        index = shared or [i for i, r in enumerate(reached) if r >= 1]
        if not shared:
            rec.event(step, "parts_no_shared_params", parts=sorted(graphs))
        for pname, g in grads.items():
            present = [(named[i][0], g[i]) for i in index if g[i] is not None]
            if not present:
                rec.record(step, LOSS_PARTS_GRAD, 0.0, key=pname)
                continue
            with torch.no_grad():
                norms = torch._foreach_norm(local_all([t for _, t in present]))
            for ns, ts in by_device([n for n, _ in present], list(norms)).values():
                del ns
                total = torch.linalg.vector_norm(torch.stack(ts).float()).reshape(1)
                rec.defer(step, LOSS_PARTS_GRAD, total, keys=[pname], reduce=math.hypot)
        if step <= ctx.budget.structural_steps and shared:
            rec.timeline.facts["parts_shared_params"] = len(shared)


def _backward_hooks(ctx: AttachContext) -> str | None:
    """Where module backward hooks are registered (they would fire on our extra passes)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks:
        return "all modules (global)"
    for prefix, model in ctx.models.items():
        for name, m in model.named_modules():
            if m._backward_hooks or m._backward_pre_hooks:
                return f"`{prefix}{name}`" if (prefix or name) else "the model"
    return None
