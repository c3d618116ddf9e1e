"""TD521: an MLP classifier whose nn.Sequential ends with nn.ReLU() after the last Linear, fed
to nn.CrossEntropyLoss (pytorch/tutorials#1526, the Quickstart's NeuralNetwork): every negative
logit is 0 and passes no gradient; with Adam whole rows go to 0 and stop training.

`bug=True` keeps the final ReLU; the healthy twin `mlp_raw_logits` ends with the Linear."""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(21)
    torch.manual_seed(21)
    protos = torch.randn(10, 32, generator=g)
    layers = [nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)]
    model = nn.Sequential(*layers, *([nn.ReLU()] if bug else []))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        y = torch.randint(0, 10, (64,), generator=g)
        x = protos[y] + torch.randn(64, 32, generator=g)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="mlp_relu_on_logits",
        bug="nn.ReLU() after the last Linear, fed to nn.CrossEntropyLoss",
        train=partial(train, bug=True),
        expect=("TD521",),
        top="TD521",
        where={"module": "2"},
        twin="mlp_raw_logits",
        steps=30,
    ),
    Scenario(name="mlp_raw_logits", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)
