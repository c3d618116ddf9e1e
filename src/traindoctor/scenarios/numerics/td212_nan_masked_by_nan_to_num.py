"""TD212: padded (all-zero) rows are L2-normalised, 0/0 = NaN, and torch.nan_to_num hides the
NaN before the loss: the loss stays finite and nothing warns. traindoctor names the module
that produces the NaN and the nan_to_num line that masks it.

`bug=True` plants it; the healthy twin `nan_norm_safe` clamps the norm, nothing to hide."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log


class RowNorm(nn.Module):
    def __init__(self, safe: bool) -> None:
        super().__init__()
        self.safe = safe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True)
        return x / (norm.clamp_min(1e-6) if self.safe else norm)  # BUG: 0/0 on padded rows


class Net(nn.Module):
    def __init__(self, safe: bool = False) -> None:
        super().__init__()
        self.norm = RowNorm(safe)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.safe = safe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if not self.safe:
            h = torch.nan_to_num(h)  # BUG: "NaN-safe", hides the NaN from the loss
        return self.mlp(h)


def train(steps: int = 30, watch=None, bug: bool = False):
    safe = not bug
    x, y = classification_data(n=512, seed=13)
    x[::16] = 0.0  # padded samples: all-zero feature rows
    model = Net(safe)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
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
    Scenario(
        name="nan_masked_by_nan_to_num",
        bug="x / x.norm() on all-zero padded rows gives NaN; torch.nan_to_num hides it from the "
        "loss",
        train=partial(train, bug=True),
        expect=("TD212",),
        top="TD212",
        where={"module": "norm", "source": line_in(__file__, "h = torch.nan_to_num(h)")},
        twin="nan_norm_safe",
        steps=30,
    ),
    Scenario(name="nan_norm_safe", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)
