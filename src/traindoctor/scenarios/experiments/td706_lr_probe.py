"""TD706: whether the learning rate is the cause, probed on one batch at x0.1, x1 and x10.

- `lr_too_high`: SGD with momentum at lr 0.5 on a small regressor: the loss jumps and the run
  diverges; on one batch the loss blows up at the script's lr and falls at x0.1 (confirms: the
  lr is the cause, and by how much to lower it);
- the healthy twin: Adam at 0.01: one batch fits at the script's lr (nothing said).

The refutation (the lr looks too high, but no lr fits one batch: the bug is in the loss) is
td702_overfit_one_batch's `exp_overfit_broadcast_not_lr`, where TD706 says "not the lr".
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, log


def regression_data(n: int = 256, dim: int = 8, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return x, 3.0 * (torch.sin(x @ w) + 0.5 * (x @ w))


def train(steps: int = 20, watch=None, bug: str | None = None):
    x, y = regression_data()
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    if bug == "lr_too_high":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # BUG: lr
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=11)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(xb).squeeze(1), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="exp_lr_probe_too_high",
        bug="SGD lr 0.5 (momentum 0.9): on one batch the loss blows up at the lr, falls at x0.1",
        train=partial(train, bug="lr_too_high"),
        expect=("TD706",),
        top="TD706",
        twin="exp_lr_probe_healthy",
        steps=20,
        experiments=True,
    ),
    Scenario(name="exp_lr_probe_healthy", bug="", train=train, steps=20, experiments=True),
)
