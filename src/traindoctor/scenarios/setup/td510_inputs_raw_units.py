"""TD510: sensor readings in raw units (around 200 +- 50) go straight into an MLP regressor:
the first layer's outputs start ~100x too large and Adam spends the run undoing it."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


def readings(n: int = 512, dim: int = 8, seed: int = 3):
    """Raw readings in physical units and a target that depends on their deviations."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g) / dim**0.5
    return z * 50.0 + 200.0, torch.tanh(z @ w)


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = readings()
    if not bug:
        x = (x - x.mean(0)) / x.std(0)  # per-feature statistics of the training set
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    doc = watch(model, optimizer) if watch else None
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x[idx]), y[idx])  # BUG (if bug): raw units
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model, loss.item()


SCENARIOS = (
    Scenario(
        name="inputs_raw_units",
        bug="features in raw units (200 +- 50) fed unscaled into Linear -> ReLU: MSE after 40 "
        "steps 4.4 vs 0.23 when standardized (0.65 vs 0.036 after 200)",
        train=partial(train, bug=True),
        expect=("TD510",),
        top="TD510",
        where={"module": "0"},
        twin="inputs_standardized",
        steps=40,
    ),
    # Each feature standardized with the training set's mean and std.
    Scenario(name="inputs_standardized", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
