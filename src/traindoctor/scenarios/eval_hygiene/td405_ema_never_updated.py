"""A classifier trained with an EMA copy that is validated each epoch (seed 002's setup).

`bug="never_updated"`: the EMA update is called on a second copy, not the one validated, so
the validated model never changes and the validation loss is bit-constant.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for pe, pm in zip(self.module.parameters(), model.parameters()):
            pe.mul_(self.decay).add_(pm.detach(), alpha=1 - self.decay)


def train(steps: int = 40, watch=None, bug: str | None = None, per_epoch: int = 8):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=7)
    xv, yv = classification_data(n=128, seed=8)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ema = EMA(model)
    shadow = EMA(model)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=7)
    for step in range(1, steps + 1):
        xb, yb = next(data)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if bug == "never_updated":
            shadow.update(model)  # BUG: updates another copy, not the one validated
        else:
            ema.update(model)
        if step % per_epoch == 0:
            with validating(doc, ema.module):  # the validated copy
                log(doc, loss=F.cross_entropy(ema.module(xv), yv))
    return model


SCENARIOS = (
    # The EMA copy that is validated each epoch is never updated (another copy is).
    Scenario(
        name="ema_never_updated",
        bug="The validated EMA copy is never updated: every validation sees the initial weights",
        train=partial(train, bug="never_updated"),
        steps=40,
        expect=("TD405",),
        top="TD405",
        twin="ema_updated",
        # Zero-code mode finds the validated copy by measurement: bit-identical to the model at
        # the first backward, run without gradient every 8 steps, never changing.
        where={"source": "td405_ema_never_updated.py"},
    ),
    # The EMA copy is updated after every optimizer step and validated.
    Scenario(name="ema_updated", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
