"""Multi-label tagging: 8 tags per sample, each present when a fixed random projection of the
input is positive; trained with BCE-with-logits (`bug="sigmoid"`: sigmoid outputs fed to it)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log


def make_data(n: int = 512, dim: int = 16, tags: int = 8, seed: int = 21):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, tags, generator=g)
    return x, (x @ w > 0.5).float()


def line_of(marker: str) -> str:
    """`FILE:LINE` of the first line holding `marker`: where a finding must point."""
    return line_in(__file__, marker)


def train(steps: int = 48, watch=None, bug: str | None = None):
    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    g = torch.Generator().manual_seed(22)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        optimizer.zero_grad()
        out = model(x[idx])
        if bug == "sigmoid":
            out = torch.sigmoid(out)  # BUG: probabilities into a loss that applies its own sigmoid
        loss = F.binary_cross_entropy_with_logits(out, y[idx])  # multi-label: several tags on
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    # Sigmoid outputs fed to BCE-with-logits, which applies its own sigmoid: every tag's
    # probability is squeezed into [0.5, 0.73] and the loss has a floor.
    Scenario(
        name="bce_multilabel_sigmoid",
        bug="sigmoid outputs fed to binary_cross_entropy_with_logits (a second sigmoid inside)",
        train=partial(train, bug="sigmoid"),
        steps=48,
        expect=("TD506",),
        top="TD506",
        where={"source": line_of("multi-label: several tags on")},
        twin="bce_multilabel_logits",
    ),
    # Control for TD506: multi-label tagging with BCE-with-logits on raw logits (several tags per
    # sample, targets that are not one-hot): healthy, must stay silent.
    Scenario(name="bce_multilabel_logits", bug="", train=train, steps=48),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
