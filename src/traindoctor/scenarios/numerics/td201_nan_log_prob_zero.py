"""TD201: binary cross-entropy written by hand on sigmoid probabilities. Once the model is
confident, sigmoid rounds to exactly 1.0 in float32, log(1 - p) = log(0) = -inf and the loss
turns NaN (0 * -inf); traindoctor names the log and its source line.

`bug=True` writes it by hand; the healthy twin `nan_log_prob_stable` uses
binary_cross_entropy_with_logits."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, line_in, log


def binary_data(n: int = 512, dim: int = 16, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return x, (x @ w > 0).float()


def train(steps: int = 40, watch=None, bug: bool = False):
    stable = not bug
    x, y = binary_data()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=64, seed=11)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb).squeeze(1)
        if stable:
            loss = F.binary_cross_entropy_with_logits(logits, yb)
        else:
            p = torch.sigmoid(logits)
            loss = -(yb * torch.log(p) + (1 - yb) * torch.log(1 - p)).mean()  # BUG: log(0)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="nan_log_prob_zero",
        bug="-(y*log(p) + (1-y)*log(1-p)) on sigmoid outputs: p rounds to 1.0, log(0) = -inf",
        train=partial(train, bug=True),
        expect=("TD201",),
        top="TD201",
        where={"source": line_in(__file__, "# BUG: log(0)")},
        twin="nan_log_prob_stable",
        steps=40,
    ),
    Scenario(name="nan_log_prob_stable", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug=True)
