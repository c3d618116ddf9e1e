"""`traindoctor.accelerate.watch(accelerator, model, optimizer)`: `td.watch` for Accelerate loops.

    model, optimizer = accelerator.prepare(model, optimizer)
    doc = traindoctor.accelerate.watch(accelerator, model, optimizer)

It hooks the torch optimizer inside Accelerate's `AcceleratedOptimizer` and watches the
accelerator's GradScaler. Nothing here imports accelerate.
"""

from __future__ import annotations

from traindoctor.integrations.accelerate import unwrap_model, unwrap_optimizer, watch

__all__ = ["watch", "unwrap_model", "unwrap_optimizer"]
