"""TD702: overfit one batch, at the user's lr, x10 and x0.1.

- `broadcast`: a regressor's (B, 1) prediction against a (B,) target in `mse_loss`: the loss
  broadcasts to (B, B) and its floor is the target's variance. The lr is high (Adam 0.05) and
  the loss is noisy, so "the lr is too high" is the plausible cause; one batch cannot be fit at
  any lr of the grid, and no better than a constant prediction (the zeroed inputs do as well):
  the bug is in the loss (refutes the lr, TD706 "not the lr"; confirms the loss: TD702 warns);
- `lr_low`: a healthy model with SGD at lr 1e-3: the loss barely moves; one batch is fit only
  at 10x: the lr is the cause (confirms);
- the healthy twin: `pred.squeeze(1)`, Adam 0.01: fits at the user's lr.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, log


def regression_data(n: int = 256, dim: int = 8, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return x, torch.sin(x @ w) + 0.5 * (x @ w)


def train(steps: int = 20, watch=None, bug: str | None = None):
    x, y = regression_data()
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    if bug == "lr_low":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05 if bug == "broadcast" else 0.01)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=4)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        pred = model(xb)  # (B, 1)
        if bug != "broadcast":
            pred = pred.squeeze(1)
        loss = F.mse_loss(pred, yb)  # BUG if broadcast: (B, 1) against (B,) is (B, B)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="exp_overfit_broadcast_not_lr",
        bug="mse_loss((B,1), (B,)) with a high lr: cannot fit one batch at any lr",
        train=partial(train, bug="broadcast"),
        expect=("TD702", "TD706"),
        top="TD702",
        twin="exp_overfit_healthy",
        steps=20,
        experiments=True,
    ),
    Scenario(
        name="exp_overfit_lr_too_low",
        bug="SGD at lr 1e-3: one batch is fit only at 10x the lr",
        train=partial(train, bug="lr_low"),
        expect=("TD702",),
        top="TD702",
        twin="exp_overfit_healthy",
        steps=20,
        experiments=True,
    ),
    Scenario(name="exp_overfit_healthy", bug="", train=train, steps=20, experiments=True),
)
