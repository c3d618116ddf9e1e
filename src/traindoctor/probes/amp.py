"""GradScaler: the loss scale and the steps it skipped."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..timeline import signal
from .base import Probe, Recorder

AMP_SCALE = signal("amp.scale", "GradScaler scale at the end of the step")
AMP_SKIPPED = signal("amp.skipped", "1 when the GradScaler skipped optimizer.step() in this step")


class AmpProbe(Probe):
    name = "amp"
    provides: ClassVar[tuple[str, ...]] = (AMP_SCALE, AMP_SKIPPED)

    def on_step_end(self, step: int, sampled: bool, rec: Recorder) -> None:
        ctx = self.ctx
        assert ctx is not None
        scaler = ctx.scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
            return
        if not rec.timeline.get(step, "optim.step"):
            rec.record(step, AMP_SKIPPED, 1)
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            # clone: update() changes _scale in place before the batched read-back
            rec.defer(step, AMP_SCALE, scale.detach().reshape(()).float().clone())
