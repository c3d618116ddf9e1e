"""A frozen feature extractor with Dropout, and a trained head. `bug=True`: the extractor is
left in train mode with the rest of the model, so its dropout keeps dropping features of a
module that never trains (noisy features, and the head learns on a distribution it will not
see in eval)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=31)
    model = Net()
    model.features.requires_grad_(False)  # frozen: the head alone trains
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=31)
    for _ in range(steps):
        model.train()  # BUG unless followed by features.eval(): its dropout stays on
        if not bug:
            model.features.eval()  # frozen on purpose: a fixed feature extractor
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    # A frozen feature extractor left in train mode: its dropout keeps dropping features.
    Scenario(
        name="frozen_dropout_train_mode",
        bug="feature extractor frozen with requires_grad_(False) but kept in train mode: dropout on",
        train=partial(train, bug=True),
        steps=40,
        expect=("TD516",),
        top="TD516",
        where={"module": "features"},
        twin="frozen_dropout_eval",
    ),
    # The frozen feature extractor is put in eval mode after model.train().
    Scenario(name="frozen_dropout_eval", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
