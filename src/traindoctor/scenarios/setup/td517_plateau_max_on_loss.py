"""ReduceLROnPlateau and the direction of its metric: an MLP validated every 4 steps on a held-out
split, the scheduler stepped with the validation loss (FunctionLab/selene#115).

- bug=True:  `ReduceLROnPlateau(optimizer, 'max', ...)` with a loss (bug: every `patience + 1`
  validations without a rise, that is while the loss falls, the lr is cut);
- bug=False: `mode='min'`, the default, for the same validation loss.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating


def train(steps: int = 80, watch=None, bug: bool = False):
    x, y = classification_data(n=640, seed=17)
    x_val, y_val, x, y = x[:128], y[:128], x[128:], y[128:]
    torch.manual_seed(17)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mode = "max" if bug else "min"  # BUG (bug=True): 'max' for a loss
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode, patience=1, factor=0.5)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=17)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if step % 4 == 3:
            with validating(doc, model):
                val_loss = F.cross_entropy(model(x_val), y_val).item()
            scheduler.step(val_loss)  # PLATEAU
    return model


SCENARIOS = (
    # mode='max' with the validation loss: the lr is cut every 2 validations while it falls.
    Scenario(
        name="plateau_max_on_loss",
        bug="ReduceLROnPlateau(mode='max') stepped with the validation loss",
        train=partial(train, bug=True),
        expect=("TD517",),
        top="TD517",
        where={"source": "td517_plateau_max_on_loss.py"},
        twin="plateau_min_on_loss",
        steps=80,
    ),
    # The same run with mode='min' for the validation loss.
    Scenario(name="plateau_min_on_loss", bug="", train=train, steps=80),
)
