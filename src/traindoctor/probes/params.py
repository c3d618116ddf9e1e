"""Parameters: the static inventory, identity changes, and measured updates ||Δθ|| per step."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..timeline import signal
from .base import AttachContext, Cost, Probe, Recorder

PARAMS_UPDATE = signal("params.update", "per param: ||θ_after - θ_before|| over one optimizer step")
PARAMS_NORM = signal("params.norm", "per param: ||θ|| before the step")
PARAMS_REPLACED = signal(
    "params.replaced", "names whose tensor is no longer the one seen at attach"
)

# Bytes of parameters copied on a sampled step to measure the update exactly; bigger models
# measure a subset (the largest tensors first are skipped so that many tensors are covered).
SNAPSHOT_BYTES = 256 * 2**20


class ParamsProbe(Probe):
    name = "params"
    provides: ClassVar[tuple[str, ...]] = (PARAMS_UPDATE, PARAMS_NORM, PARAMS_REPLACED)
    cost = Cost.MODERATE

    def __init__(self) -> None:
        super().__init__()
        self._ids_at_attach: dict[str, int] = {}
        self._snapshot: list[torch.Tensor] | None = None
        self._snap_names: list[str] = []
        self._snap_params: list[torch.Tensor] = []

    def attach(self, ctx: AttachContext, rec: Recorder) -> None:
        super().attach(ctx, rec)
        inventory = {}
        for name, p in ctx.named_params():
            self._ids_at_attach[name] = id(p)
            inventory[name] = {
                "shape": list(p.shape),
                "dtype": str(p.dtype).replace("torch.", ""),
                "numel": p.numel(),
                "requires_grad": bool(p.requires_grad),
            }
        rec.timeline.facts["params"] = inventory
        rec.timeline.facts["modules"] = {
            prefix: sorted(n for n, _ in m.named_modules() if n) for prefix, m in ctx.models.items()
        }

    def on_pre_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        # Identity changes: a module whose params were replaced (e.g. `model.head = Linear(...)`).
        replaced = [
            name
            for name, p in ctx.named_params()
            if name in self._ids_at_attach and self._ids_at_attach[name] != id(p)
        ]
        if replaced:
            rec.record(step, PARAMS_REPLACED, replaced)
        if not sampled:
            return
        inventory = rec.timeline.facts.get("params", {})
        current = ctx.named_params()
        # Names follow the model as it is now: a replaced tensor loses its name.
        ctx.param_names.clear()
        ctx.param_names.update({id(p): name for name, p in current})
        for name, p in current:
            entry = inventory.get(name)
            if entry is not None:
                entry["requires_grad"] = bool(p.requires_grad)
        names, params, budget = [], [], SNAPSHOT_BYTES
        in_opt = ctx.doctor.optimizer_param_ids()
        for name, p in ctx.named_params():
            if id(p) not in in_opt or not p.requires_grad:
                continue
            size = p.numel() * p.element_size()
            if size > budget:
                continue
            budget -= size
            names.append(name)
            params.append(p.detach())
        if not params:
            return
        # A copy of the params on the device, no host sync; freed at on_post_step.
        self._snapshot = torch._foreach_mul(params, 1)
        self._snap_names, self._snap_params = names, params

    def on_post_step(self, step: int, sampled: bool, rec: Recorder) -> None:
        if self._snapshot is None:
            return
        with torch.no_grad():
            delta = torch._foreach_sub(self._snap_params, self._snapshot)
            upd = torch.stack(torch._foreach_norm(delta)).float()
            norms = torch.stack(torch._foreach_norm(self._snapshot)).float()
        rec.defer(step, PARAMS_UPDATE, upd, keys=self._snap_names)
        rec.defer(step, PARAMS_NORM, norms, keys=self._snap_names)
        self._snapshot, self._snap_params = None, []
