"""TD703: the input-independent baseline.

- `per_sample_norm`: a one-feature regressor standardizes each example over its feature dim
  (`x - x.mean(1)` of a (B, 1) input is 0): the forward never sees the input; the loss plateaus
  at the target's variance (confirms: the output does not change when the input is zeroed);
- `noisy_labels`: a classifier on labels with 40% noise: the loss plateaus high, which looks
  like a model that ignores its input; zeroing the input does much worse than the real one
  (refutes it: the plateau is the labels' noise);
- the healthy twin: fixed normalization constants, clean labels.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class Net(nn.Module):
    def __init__(self, dim: int, out: int, per_sample_norm: bool) -> None:
        super().__init__()
        self.per_sample_norm = per_sample_norm
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, x):
        if self.per_sample_norm:
            x = (x - x.mean(dim=1, keepdim=True)) / (
                x.std(dim=1, keepdim=True, unbiased=False) + 1e-5
            )  # BUG
        else:
            x = (x - 0.1) / 1.2
        return self.net(x)


def train(steps: int = 20, watch=None, bug: str | None = None):
    if bug == "per_sample_norm":
        g = torch.Generator().manual_seed(5)
        x = torch.randn(256, 1, generator=g)
        y = torch.randint(0, 2, (256,), generator=g) * 0 + (x[:, 0] > 0).long()
        model = Net(1, 2, per_sample_norm=True)
    else:
        x, y = classification_data(n=256, dim=16, classes=4, seed=5)
        if bug == "noisy_labels":
            g = torch.Generator().manual_seed(6)
            flip = torch.rand(256, generator=g) < 0.4
            y = torch.where(flip, torch.randint(0, 4, (256,), generator=g), y)
        model = Net(16, 4, per_sample_norm=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=5)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="exp_input_per_sample_norm",
        bug="per-example standardization over a feature dim of size 1: the input is zeroed",
        train=partial(train, bug="per_sample_norm"),
        expect=("TD703", "TD702"),  # TD702 warns: one batch cannot be fit, no better than zeros
        top="TD703",
        twin="exp_input_healthy",
        steps=20,
        experiments=True,
    ),
    Scenario(
        name="exp_input_noisy_labels",
        bug="40% label noise: the loss plateaus high, but the model uses its input (refuted)",
        train=partial(train, bug="noisy_labels"),
        expect=("TD703",),
        top="TD703",
        twin="exp_input_healthy",
        steps=20,
        experiments=True,
    ),
    Scenario(name="exp_input_healthy", bug="", train=train, steps=20, experiments=True),
)
