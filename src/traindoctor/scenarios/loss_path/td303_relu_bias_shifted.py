"""TD303: most of a hidden layer's biases start at -5, so those ReLU units never fire or train."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class MLP(nn.Module):
    def __init__(self, bias_shift: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 4)
        if bias_shift:
            with torch.no_grad():  # BUG: a large negative bias shift on 3/4 of fc2's units
                self.fc2.bias[:24] = bias_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.head(x)


def train(steps: int = 60, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=5)
    model = MLP(-5.0 if bug else 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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
        name="relu_bias_shifted",
        bug="3/4 of fc2's biases initialized to -5: those ReLU units are never active",
        train=partial(train, bug=True),
        expect=("TD303",),
        top="TD303",
        where={"module": "fc2"},
        twin="relu_bias_default",
        steps=60,
    ),
    # The same MLP with PyTorch's default bias init.
    Scenario(name="relu_bias_default", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
