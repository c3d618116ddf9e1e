"""Gradients: which params got one, their norms, and gradients carried over from the last step."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..timeline import signal
from .base import Cost, Probe, Recorder

GRADS_NONE = signal("grads.none", "trainable params whose .grad is None when step() runs")
GRADS_CLEARED = signal(
    "grads.cleared", "params that received a gradient in backward but had none at step()"
)
GRADS_NORM = signal("grads.norm", "per param: ||grad|| when step() runs (after unscale)")
GRADS_CARRIED = signal(
    "grads.carried", "per param: ||grad|| already present before the step's first backward"
)
GRADS_OBSERVED = signal("grads.observed", "1 on steps where the gradient probe looked")


class GradsProbe(Probe):
    name = "grads"
    provides: ClassVar[tuple[str, ...]] = (
        GRADS_NONE,
        GRADS_CLEARED,
        GRADS_NORM,
        GRADS_CARRIED,
        GRADS_OBSERVED,
    )
    cost = Cost.MODERATE

    def __init__(self) -> None:
        super().__init__()
        self._step_handles: list = []
        self._received: set[str] = set()
        self._carried_names: list[str] = []
        self._carried_norms: list[torch.Tensor] = []
        self._seen_this_step: set[str] = set()
        self._armed_step: int | None = None

    def prepare(self, step: int, sampled: bool, rec: Recorder) -> None:
        """On sampled steps, hook every trainable param for the step's backward passes."""
        self._remove_step_hooks()
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        self._armed_step = step
        for name, p in ctx.named_params():
            if not p.requires_grad:
                continue
            self._step_handles.append(
                p.register_hook(ctx.hook("probe grads", self._make_pre_hook(name, p)))
            )
            self._step_handles.append(
                p.register_post_accumulate_grad_hook(
                    ctx.hook("probe grads", self._make_post_hook(name))
                )
            )

    def _make_pre_hook(self, name: str, param: torch.Tensor):
        def pre(_incoming: torch.Tensor) -> None:
            # Runs before the incoming gradient is added to param.grad: what is there now
            # was left by earlier steps unless the user zeroed it.
            if name in self._seen_this_step:
                return
            self._seen_this_step.add(name)
            old = param.grad
            if old is not None:
                self._carried_names.append(name)
                self._carried_norms.append(torch.linalg.vector_norm(old.detach()).float())

        return pre

    def _make_post_hook(self, name: str):
        def post(_param: torch.Tensor) -> None:
            self._received.add(name)

        return post

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if not sampled:
            return
        ctx = self.ctx
        assert ctx is not None
        rec.record(step, GRADS_OBSERVED, 1)
        none, cleared, names, grads = [], [], [], []
        for name, p in ctx.named_params():
            if not p.requires_grad:
                continue
            if p.grad is None:
                none.append(name)
                if name in self._received:
                    cleared.append(name)
            else:
                names.append(name)
                grads.append(p.grad.detach())
        rec.record(step, GRADS_NONE, none)
        if cleared:
            rec.record(step, GRADS_CLEARED, cleared)
        if grads:
            with torch.no_grad():
                norms = torch._foreach_norm(grads)
            by_device: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
            for n, t in zip(names, norms):
                ns, ts = by_device.setdefault(t.device, ([], []))
                ns.append(n)
                ts.append(t)
            for ns, ts in by_device.values():
                rec.defer(step, GRADS_NORM, torch.stack(ts).float(), keys=ns)
        if self._carried_names:
            by_device2: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
            for n, t in zip(self._carried_names, self._carried_norms):
                ns, ts = by_device2.setdefault(t.device, ([], []))
                ns.append(n)
                ts.append(t)
            for ns, ts in by_device2.values():
                rec.defer(step, GRADS_CARRIED, torch.stack(ts), keys=ns)
        elif self._seen_this_step:
            rec.record(step, GRADS_CARRIED, {})

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        self._remove_step_hooks()

    def _remove_step_hooks(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()
        self._received.clear()
        self._carried_names, self._carried_norms = [], []
        self._seen_this_step = set()
        self._armed_step = None

    def detach(self) -> None:
        self._remove_step_hooks()
        super().detach()
