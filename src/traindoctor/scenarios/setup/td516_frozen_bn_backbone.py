"""TD516: a pretrained backbone is frozen with requires_grad=False but left in train mode, so
its BatchNorm running statistics drift with every training batch."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32)
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.backbone(x)))


def pretrain(model: Net, x: torch.Tensor) -> None:
    """Stand-in for loading pretrained weights: running statistics from another data source."""
    model.train()
    with torch.no_grad():
        for i in range(0, 256, 64):
            model.backbone(x[i : i + 64] * 2.0 + 0.5)


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=9)
    model = Net()
    pretrain(model, x)
    for p in model.backbone.parameters():
        p.requires_grad = False  # frozen: the head alone trains
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=9)
    for step in range(steps):
        model.train()  # BUG unless followed by backbone.eval(): BatchNorm stats keep updating
        if not bug:
            model.backbone.eval()  # frozen on purpose: running statistics stay as loaded
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % 20 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIOS = (
    Scenario(
        name="frozen_bn_backbone_train_mode",
        bug="backbone frozen with requires_grad=False but kept in train mode: BatchNorm stats drift",
        train=partial(train, bug=True),
        expect=("TD516",),
        top="TD516",
        where={"module": "backbone"},
        twin="frozen_bn_backbone_eval",
        steps=40,
    ),
    # `model.backbone.eval()` after every `model.train()`, so the frozen BatchNorm keeps its
    # loaded running statistics.
    Scenario(name="frozen_bn_backbone_eval", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
