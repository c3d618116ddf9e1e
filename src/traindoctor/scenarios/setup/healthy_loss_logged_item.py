"""Healthy control for TD505: the loss is logged with `loss.item()` into a Python list."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


def train(steps: int = 60, watch=None):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=8)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=8)
    history: list[float] = []
    prev_loss = None
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        history.append(loss.item())  # a Python number: no graph kept
        prev_loss = loss  # one step's graph held until the next step: bounded, not growth
    return model, history, prev_loss


SCENARIO = Scenario(name="loss_logged_item", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
