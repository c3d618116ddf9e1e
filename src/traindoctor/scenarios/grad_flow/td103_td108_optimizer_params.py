"""TD103 and TD108: what the optimizer is built from.

- `bug="backbone_only"` (TD103): the optimizer holds the backbone's parameters only; the head
  never trains;
- `bug="lr_too_small"` (TD108): SGD with lr=1e-7: every update is far below the weights' scale,
  the loss stays flat.
The healthy twin `optimizer_all_params` runs SGD over every parameter.
"""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: str | None = None):
    x, y = classification_data(n=512, seed=2)
    model = Classifier()
    if bug == "backbone_only":
        optimizer = torch.optim.SGD(model.backbone.parameters(), lr=0.05, momentum=0.9)  # BUG
    elif bug == "lr_too_small":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-7, momentum=0.9)  # BUG: far too small
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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


SCENARIOS = (
    Scenario(
        name="optimizer_backbone_only",
        bug="optimizer = SGD(model.backbone.parameters()): the head is in no param group",
        train=partial(train, bug="backbone_only"),
        expect=("TD103",),
        top="TD103",
        where={
            "module": "head",
            "params_prefix": "head.",
            "source": "td103_td108_optimizer_params.py",
        },
        twin="optimizer_all_params",
        steps=30,
    ),
    Scenario(
        name="lr_too_small",
        bug="SGD(model.parameters(), lr=1e-7): updates ~1e-8 of the weights, nothing moves in "
        "60 steps",
        train=partial(train, bug="lr_too_small"),
        expect=("TD108",),
        top="TD108",
        where={"source": "td103_td108_optimizer_params.py"},
        twin="optimizer_all_params",
        steps=60,
    ),
    Scenario(name="optimizer_all_params", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug="backbone_only")
