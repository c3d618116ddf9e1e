"""TD204 and TD205: mixed precision on CPU (seed 003): autocast to bfloat16 with a `torch.amp.GradScaler("cpu")`.

`bug` plants one GradScaler misuse:
- "clip_before_unscale": clip_grad_norm_ runs on gradients still multiplied by the scale;
- "step_bypass":         optimizer.step() instead of scaler.step(optimizer) (and no update());
- "unscale_first_micro": under accumulation, unscale_ runs after the first micro-batch of the
                         window (off by one: `i % accum == 0`) instead of after the last;
- "nan_gate":            a gate computed as `where(h > 0, h.sqrt(), 0)`: its gradient is NaN for
                         h <= 0 in `stem`, at every scale, so the scaler skips every step and its
                         scale collapses (growth_interval=1).
None trains correctly (`amp_healthy`; `amp_accumulation_healthy` with accum=4):
scale(loss).backward() per micro-batch, then once unscale_, clip, scaler.step, scaler.update,
zero_grad; "safe_gate" (`amp_sqrt_safe`) is healthy too: the sqrt of a clamped input under the
same growth_interval=1 as "nan_gate".
"""

from __future__ import annotations

import inspect
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class GatedNet(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 4, nan_gate: bool = False):
        super().__init__()
        self.stem = nn.Linear(dim, hidden)
        self.body = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)
        self.nan_gate = nan_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        # where(): sqrt of h <= 0 is NaN in the unselected branch, and so is its gradient.
        # The safe form takes the sqrt of a clamped input.
        h = torch.where(h > 0, h.sqrt(), 0.0) if self.nan_gate else h.clamp(min=1e-6).sqrt()
        return self.head(self.body(h))


def train(steps: int = 40, watch=None, bug: str | None = None, accum: int = 1):
    x, y = classification_data(n=256, seed=7)
    model = GatedNet(nan_gate=bug == "nan_gate")
    if bug in ("clip_before_unscale", None) and accum == 1:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    growth = 1 if bug in ("nan_gate", "safe_gate") else 2000
    scaler = torch.amp.GradScaler("cpu", growth_interval=growth)
    doc = watch(model, optimizer, scaler) if watch else None
    data = batches(x, y, batch=16, seed=7)
    for i in range(steps * accum):
        xb, yb = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb).float(), yb)
        log(doc, loss=loss)
        scaler.scale(loss / accum).backward()
        if bug == "unscale_first_micro" and i % accum == 0:
            scaler.unscale_(optimizer)  # BUG: unscale_ after the first micro-batch
        if (i + 1) % accum:
            continue
        if bug == "step_bypass":
            optimizer.step()  # BUG: optimizer.step() bypasses the scaler
            optimizer.zero_grad(set_to_none=True)
            continue
        if bug == "clip_before_unscale":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # BUG: clip still scaled
        elif bug != "unscale_first_micro":
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)  # the scaler's step
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return model


def line_of(marker: str) -> str:
    """`FILE:LINE` of the line of train() holding `marker`: where a finding must point."""
    lines, start = inspect.getsourcelines(train)
    for k, text in enumerate(lines):
        if marker in text:
            return f"{os.path.basename(__file__)}:{start + k}"
    raise LookupError(marker)


SCENARIOS = (
    Scenario(
        name="amp_clip_before_unscale",
        bug="clip_grad_norm_(params, 1.0) runs before scaler.unscale_(): clipped while 65536x "
        "scaled",
        train=partial(train, bug="clip_before_unscale"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG: clip still scaled"), "params_prefix": ""},
        twin="amp_healthy",
        steps=40,
    ),
    Scenario(
        name="amp_step_bypasses_scaler",
        bug="scaler.scale(loss).backward() then optimizer.step(): gradients applied still scaled",
        train=partial(train, bug="step_bypass"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG: optimizer.step() bypasses")},
        twin="amp_healthy",
        steps=40,
    ),
    Scenario(name="amp_healthy", bug="", train=train, steps=40),
    # Off by one under accumulation: the next micro-batches add scaled gradients into unscaled.
    Scenario(
        name="amp_unscale_inside_accumulation",
        bug="unscale_ after the first of 4 micro-batches: scaled and unscaled gradients are summed",
        train=partial(train, bug="unscale_first_micro", accum=4),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("scaler.scale(loss / accum).backward()"), "params_prefix": ""},
        twin="amp_accumulation_healthy",
        steps=30,
    ),
    Scenario(name="amp_accumulation_healthy", bug="", train=partial(train, accum=4), steps=30),
    # The GradScaler skips every step and its scale halves each time, toward 0.
    Scenario(
        name="amp_scaler_collapse",
        bug="NaN gradient in `stem` (sqrt in the unselected branch of torch.where): every step "
        "skipped",
        train=partial(train, bug="nan_gate"),
        expect=("TD205",),
        top="TD205",
        where={
            "module": "stem",
            "params_prefix": "stem.",
            "source": f"{os.path.basename(__file__)}:",
        },
        twin="amp_sqrt_safe",
        steps=40,
    ),
    Scenario(name="amp_sqrt_safe", bug="", train=partial(train, bug="safe_gate"), steps=40),
)

if __name__ == "__main__":
    train(bug="clip_before_unscale")
