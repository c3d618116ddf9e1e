"""TD111: the classification head is replaced (new number of classes) after the optimizer was
built: the optimizer steps the old head's tensors, the new head never trains.

`bug=True` replaces it after; the healthy twin `head_replaced_before_optimizer` replaces the
head first, then builds the optimizer from the final model."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: bool = False):
    x, y = classification_data(n=512, classes=6, seed=7)
    model = Classifier(classes=4)  # e.g. a pretrained 4-class model
    if bug:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.head = nn.Linear(32, 6)  # BUG: replaced after the optimizer was built
    else:
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


SCENARIOS = (
    Scenario(
        name="head_replaced_after_optimizer",
        bug="model.head = nn.Linear(32, 6) after optimizer = AdamW(model.parameters())",
        train=partial(train, bug=True),
        expect=("TD111",),
        top="TD111",
        where={
            "module": "head",
            "params_prefix": "head.",
            "source": "td111_head_replaced_after_optimizer.py",
        },
        twin="head_replaced_before_optimizer",
        steps=30,
    ),
    Scenario(name="head_replaced_before_optimizer", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
