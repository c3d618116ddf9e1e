"""TD505: `total_loss += loss` keeps every step's autograd graph alive (memory grows each step)."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log


def train(steps: int = 60, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=7)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=7)
    total_loss = 0.0
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if not bug:
            total_loss += loss.detach()  # a running total without the graph
        else:
            total_loss += loss  # BUG: the total keeps each step's graph alive
    return model


SCENARIOS = (
    Scenario(
        name="loss_total_keeps_graph",
        bug="`total_loss += loss` without .item()/.detach(): every step's graph stays alive",
        train=partial(train, bug=True),
        expect=("TD505",),
        top="TD505",
        where={"source": line_in(__file__, "# BUG: the total keeps")},
        twin="loss_total_detached",
        steps=60,
    ),
    # The running total adds `loss.detach()`.
    Scenario(name="loss_total_detached", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
