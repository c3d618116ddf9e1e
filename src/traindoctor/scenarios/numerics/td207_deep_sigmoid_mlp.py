"""TD207: a deep plain MLP with sigmoid activations: the first layers get ~1e-8 relative gradients.

`bug=True` uses sigmoid; the healthy twin `deep_relu_mlp` has the same depth with ReLU and
Kaiming init."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class DeepMLP(nn.Module):
    def __init__(self, act: str, depth: int = 8, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)
        )
        self.head = nn.Linear(hidden, 4)
        self.act = torch.sigmoid if act == "sigmoid" else torch.relu
        if act == "relu":
            for layer in self.layers:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def train(steps: int = 60, watch=None, bug: bool = False):
    act = "sigmoid" if bug else "relu"
    x, y = classification_data(n=512, seed=3)
    model = DeepMLP(act)  # BUG (sigmoid): 8 saturating layers, no normalization, no residuals
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=3)
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
        name="deep_sigmoid_mlp",
        bug="8 Linear+sigmoid layers: the gradient shrinks ~7x per layer on its way back",
        train=partial(train, bug=True),
        expect=("TD207",),
        top="TD207",
        where={"module": "layers.0", "params_prefix": "layers."},
        twin="deep_relu_mlp",
        steps=60,
    ),
    Scenario(name="deep_relu_mlp", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
