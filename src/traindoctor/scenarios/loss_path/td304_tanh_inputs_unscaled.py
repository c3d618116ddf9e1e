"""TD304: raw features (x*100) feed tanh and sigmoid layers: most units sit in their flat tails."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.Tanh()
        self.gate = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = h * torch.sigmoid(self.gate(h))
        return self.head(h)


def train(steps: int = 60, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=7)
    x = x * (100.0 if bug else 1.0)  # BUG (x100): features on a raw scale, never standardized
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=7)
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
        name="tanh_inputs_unscaled",
        bug="inputs x*100 never standardized: fc1's tanh units saturate (|tanh| > 0.99)",
        train=partial(train, bug=True),
        expect=("TD304",),
        top="TD304",
        where={"module": "fc1"},
        twin="tanh_inputs_scaled",
        steps=60,
    ),
    # The same net on standardized inputs.
    Scenario(name="tanh_inputs_scaled", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
