"""TD701: the loss at initialization against ln C.

- `large_init`: the classifier's last layer is initialized with std 3 (a "make the logits
  confident" habit): the loss at init is many times ln 10 (confirms a real cause: the
  initialization);
- `sum_reduction`: the loss is `reduction="sum"`, so the logged loss reads ~70 at step 1 and
  looks like a broken initialization; the experiment compares with the same call on uniform
  predictions (32 x ln 10) and finds the init as expected (refutes the wrong cause);
- the healthy twin: default init, mean reduction.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


def train(steps: int = 20, watch=None, bug: str | None = None):
    x, y = classification_data(n=256, dim=16, classes=10, seed=3)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    if bug == "large_init":
        nn.init.normal_(model[2].weight, std=3.0)  # BUG: confident random logits at init
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=3)
    reduction = "sum" if bug == "sum_reduction" else "mean"
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb, reduction=reduction)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="exp_init_logits_too_large",
        bug="last layer initialized with std 3: loss at init far above ln 10",
        train=partial(train, bug="large_init"),
        expect=("TD701",),
        top="TD701",
        twin="exp_init_default",
        steps=20,
        experiments=True,
    ),
    Scenario(
        name="exp_init_sum_reduction",
        bug="reduction='sum' makes the loss look huge; the init is fine (refuted)",
        train=partial(train, bug="sum_reduction"),
        expect=("TD701",),
        top="TD701",
        twin="exp_init_default",
        steps=20,
        experiments=True,
    ),
    Scenario(name="exp_init_default", bug="", train=train, steps=20, experiments=True),
)
