"""Healthy twin of loss_clamped: the same summed cross-entropy, not clamped."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 60, watch=None):
    x, y = classification_data(n=512, seed=5)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=5)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb, reduction="sum")
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:], reduction="sum"))
    return model


SCENARIO = Scenario(name="loss_unclamped", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
