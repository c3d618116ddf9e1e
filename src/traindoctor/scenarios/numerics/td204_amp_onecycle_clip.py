"""TD204 under a schedule: bfloat16 autocast on CPU, a `torch.amp.GradScaler("cpu")`, SGD with
momentum driven by OneCycleLR, clip_grad_norm_ before `scaler.unscale_()`.

Built for TD204's fix trial (experiments/fix_amp.py), which replays the run's lr per step,
its autocast and a fresh GradScaler with its settings:
- `clip_before_unscale` (max_norm 1): the norm compared with max_norm is 65536x the true one,
  every update is cut to a sliver; unscaling first lets the model learn (the fix helps);
- `clip_never_bites` (max_norm 1e9): the same wrong order, but even the scaled norm stays
  below max_norm, so nothing is clipped either way: the fix changes nothing (the trial says
  so, and the finding ranks lower);
- the healthy twin unscales before clipping at max_norm 1.
"""

from __future__ import annotations

import inspect
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


def train(steps: int = 40, watch=None, bug: str | None = None):
    x, y = classification_data(n=256, seed=5)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    max_norm = 1e9 if bug == "clip_never_bites" else 1.0
    doc = watch(model, optimizer, scaler) if watch else None
    data = batches(x, y, batch=32, seed=5)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb), yb)
        log(doc, loss=loss)
        scaler.scale(loss).backward()
        if bug is None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # BUG if bug: still scaled
        scaler.step(optimizer)
        scaler.update()
        sched.step()
    return model


def line_of(marker: str) -> str:
    lines, start = inspect.getsourcelines(train)
    for k, text in enumerate(lines):
        if marker in text:
            return f"{os.path.basename(__file__)}:{start + k}"
    raise LookupError(marker)


SCENARIOS = (
    Scenario(
        name="amp_onecycle_clip_before_unscale",
        bug="clip_grad_norm_(params, 1.0) before scaler.unscale_() under bf16 autocast and "
        "OneCycleLR: every update cut to 1/65536",
        train=partial(train, bug="clip_before_unscale"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG if bug: still scaled")},
        twin="amp_onecycle_healthy",
        steps=40,
    ),
    Scenario(
        name="amp_onecycle_clip_never_bites",
        bug="clip_grad_norm_(params, 1e9) before scaler.unscale_(): the wrong order, but the "
        "clip never bites",
        train=partial(train, bug="clip_never_bites"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG if bug: still scaled")},
        twin="amp_onecycle_healthy",
        steps=40,
    ),
    Scenario(name="amp_onecycle_healthy", bug="", train=train, steps=40),
)
