"""TD522: a regression head ending in nn.ReLU() trained with nn.MSELoss on standard-scaled
(zero-mean) targets (ratschlab/DeepSpot2Cell#3): the negative half of the targets cannot be
reached, a floor under the loss that no training removes.

`bug=True` keeps the final ReLU; the healthy twin `mlp_regression_linear_out` ends with the
Linear."""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(22)
    torch.manual_seed(22)
    w = torch.randn(16, 4, generator=g) / 4
    layers = [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)]
    model = nn.Sequential(*layers, *([nn.ReLU()] if bug else []))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        x = torch.randn(64, 16, generator=g)
        y = torch.tanh(x @ w) * 2
        y = (y - y.mean(0)) / y.std(0)  # standard-scaled targets: zero mean
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="mlp_regression_relu_out",
        bug="nn.ReLU() after the last Linear, with standard-scaled targets in nn.MSELoss",
        train=partial(train, bug=True),
        expect=("TD522",),
        top="TD522",
        where={"op": "ReluBackward0"},
        twin="mlp_regression_linear_out",
        steps=30,
    ),
    Scenario(name="mlp_regression_linear_out", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)
