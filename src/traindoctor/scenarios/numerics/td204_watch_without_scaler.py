"""TD204 under the one-line watch: td.watch(model, optimizer), the GradScaler not passed.

A small regression net trained on CPU under float16 autocast with a `torch.amp.GradScaler("cpu")`
that the script never hands to traindoctor (most scripts do not). `bug="clip_before_unscale"`
clips with clip_grad_norm_ while the gradients are still multiplied by the scale; the healthy
twin (`amp_fp16_unpassed_scaler_healthy`) unscale_s first. The twin also keeps float16 autocast
*with* a scaler: no TD211 (float16 without a GradScaler) on it.
"""

from __future__ import annotations

import inspect
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


def _data(n: int = 512, dim: int = 12, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def train(steps: int = 40, watch=None, bug: str | None = None):
    torch.manual_seed(11)
    x, y = _data()
    model = nn.Sequential(nn.Linear(12, 48), nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    doc = watch(model, optimizer) if watch else None  # the scaler is not passed
    for step in range(steps):
        i = (step * 32) % len(x)
        xb, yb = x[i : i + 32], y[i : i + 32]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(xb)
        loss = F.mse_loss(pred.float(), yb)
        log(doc, loss=loss)
        scaler.scale(loss).backward()
        if bug == "clip_before_unscale":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # BUG: still scaled
        else:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(optimizer)
        scaler.update()
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
        name="amp_fp16_unpassed_scaler_clip_before_unscale",
        bug="td.watch(model, optimizer) without scaler=; clip_grad_norm_(params, 0.5) before "
        "scaler.unscale_()",
        train=partial(train, bug="clip_before_unscale"),
        expect=("TD204",),
        top="TD204",
        where={"source": line_of("BUG: still scaled"), "params_prefix": ""},
        twin="amp_fp16_unpassed_scaler_healthy",
        steps=40,
    ),
    Scenario(name="amp_fp16_unpassed_scaler_healthy", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug="clip_before_unscale")
