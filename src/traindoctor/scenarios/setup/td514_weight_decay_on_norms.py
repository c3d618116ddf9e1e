"""Weight decay and normalization layers: an MLP with LayerNorm trained with SGD + momentum and
weight_decay=5e-3.

- bug=True:  `SGD(model.parameters(), weight_decay=...)` decays every tensor, LayerNorm gains
  and biases included (bug: the gains shrink toward 0, scaling the normalized features down);
- bug=False: two param groups, decay on the weight matrices only (norm gains and biases in a
  group with weight_decay=0), as nanoGPT and the Hugging Face Trainer do.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class NormMLP(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.fc1(x)))
        x = F.relu(self.norm2(self.fc2(x)))
        return self.head(x)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices only: norm gains/biases and all biases get weight_decay=0."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(steps: int = 60, watch=None, bug: bool = False, weight_decay: float = 5e-3):
    x, y = classification_data(n=512, seed=13)
    torch.manual_seed(13)
    model = NormMLP()
    # BUG (bug=True): model.parameters() decays the LayerNorm gains and biases too
    params = param_groups(model, weight_decay) if not bug else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=weight_decay)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=13)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    # SGD(model.parameters(), weight_decay=5e-3) decays the LayerNorm gains and biases too; the
    # gains lose a third of their norm or more in 60 steps.
    Scenario(
        name="weight_decay_on_norms",
        bug="weight_decay applied to every param, LayerNorm gains and biases included",
        train=partial(train, bug=True),
        expect=("TD514",),
        top="TD514",
        where={"params_prefix": "norm", "source": "td514_weight_decay_on_norms.py"},
        twin="weight_decay_split",
        steps=60,
    ),
    # The same run with weight decay on the weight matrices only (norm gains and biases in a group
    # with weight_decay=0).
    Scenario(name="weight_decay_split", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
