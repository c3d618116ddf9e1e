"""TD108: SGD with lr=1e-7: every update is far below the weights' scale, the loss stays flat."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 60, watch=None):
    x, y = classification_data(n=512, seed=2)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-7, momentum=0.9)  # BUG: lr far too small
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=2)
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


SCENARIO = Scenario(
    name="lr_too_small",
    bug="SGD(model.parameters(), lr=1e-7): updates ~1e-8 of the weights, nothing moves in 60 steps",
    train=train,
    expect=("TD108",),
    top="TD108",
    where={"source": "lr_too_small.py"},
    twin="optimizer_all_params",
    steps=60,
)

if __name__ == "__main__":
    train()
