"""Healthy twin of head_replaced_after_optimizer: the head is replaced first, then the
optimizer is built from the final model."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 60, watch=None):
    x, y = classification_data(n=512, classes=6, seed=7)
    model = Classifier(classes=4)
    model.head = nn.Linear(32, 6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=7)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIO = Scenario(name="head_replaced_before_optimizer", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
