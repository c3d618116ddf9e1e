"""TD206/TD210: SGD with a learning rate far too large for the head: its gradient explodes
(x1.4 per step) and the loss diverges, without reaching Inf/NaN in 60 steps.

`bug=True` sets lr=0.8; the healthy twin `lr_well_chosen` has the same model and data with lr
below 2/λmax."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


class Regressor(nn.Module):
    """A frozen (pretrained-like) feature extractor and a trainable linear head."""

    def __init__(self, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.features.requires_grad_(False)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def regression_data(n: int = 256, dim: int = 16, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    return x, torch.sin(x @ w) + 0.1 * (x @ w)


def train(steps: int = 60, watch=None, bug: bool = False):
    lr = 0.8 if bug else 0.2
    x, y = regression_data()
    model = Regressor()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)  # BUG: lr=0.8 is above 2/λmax ≈ 0.68 of this problem
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="lr_too_large",
        bug="SGD(lr=0.8) where 2/λmax ≈ 0.68: the head's gradient grows x1.4 per step, loss "
        "diverges",
        train=partial(train, bug=True),
        expect=("TD206", "TD210"),
        top="TD206",
        where={"module": "head", "params_prefix": "head."},
        twin="lr_well_chosen",
        steps=60,
    ),
    Scenario(name="lr_well_chosen", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
