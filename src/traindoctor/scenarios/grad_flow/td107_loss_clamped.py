"""TD107: the loss is clamped "for stability", but with reduction='sum' it is always above the
bound: the clamped loss is constant and its gradient is exactly zero.

`bug=True` clamps; the healthy twin `loss_unclamped` trains the same summed cross-entropy."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=5)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=5)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        if bug:
            loss = F.cross_entropy(model(xb), yb, reduction="sum").clamp(max=15.0)  # BUG: > 15
        else:
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:], reduction="sum"))
    return model


SCENARIOS = (
    Scenario(
        name="loss_clamped",
        bug="loss = cross_entropy(..., reduction='sum').clamp(max=15): always clamped, zero "
        "gradient",
        train=partial(train, bug=True),
        expect=("TD107",),
        top="TD107",
        where={"source": "td107_loss_clamped.py"},
        twin="loss_unclamped",
        steps=30,
    ),
    Scenario(name="loss_unclamped", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
