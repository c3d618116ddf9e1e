"""TD508: a regression head outputs (B, 1) and the target is (B,): F.mse_loss broadcasts them
to (B, B), so every prediction is pulled to the batch mean and the model learns a constant."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, line_in, log


def regression_data(n: int = 512, dim: int = 8, seed: int = 17):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, generator=g)


def train(steps: int = 40, watch=None, bug: bool = False):
    x, y = regression_data()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=17)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        pred = model(xb)  # (B, 1)
        if not bug:
            loss = F.mse_loss(pred.squeeze(1), yb)
            # The user's own metric has the broadcasting mistake: a log line, not a loss input.
            close = ((pred - yb).abs() < 0.5).float().mean()
            log(doc, close=close)
        else:
            loss = F.mse_loss(pred, yb)  # BUG: (B, 1) against (B,) -> (B, B)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_mse_broadcast",
        bug="F.mse_loss((B, 1) prediction, (B,) target): broadcast to (B, B)",
        train=partial(train, bug=True),
        expect=("TD508",),
        top="TD508",
        where={"source": line_in(__file__, "# BUG: (B, 1) against (B,)")},
        twin="loss_mse_shapes_match",
        steps=40,
    ),
    # Prediction squeezed to (B,); the user's own accuracy-like metric still broadcasts (B, 1)
    # against (B,), but that is their log line, not a loss input.
    Scenario(name="loss_mse_shapes_match", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # torch warns about the planted broadcast
    SCENARIOS[0].train()
