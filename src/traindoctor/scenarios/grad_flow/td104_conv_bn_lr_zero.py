"""TD104: a small CNN in the classic style: Conv2d layers with their default bias=True, each followed by
a BatchNorm2d, trained with plain SGD. The BatchNorm subtracts the per-channel batch mean, so
the conv biases cancel: their gradient is 0 up to rounding and SGD leaves them unchanged.

`bug="lr_zero"`: a LambdaLR with integer division keeps the learning rate at 0.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def train(steps: int = 30, watch=None, bug: str | None = None):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    x[torch.arange(512), 0, y, y] += 3.0  # a learnable signal: a bright pixel per class
    model = ConvBN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = None
    if bug == "lr_zero":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s // 1000)  # BUG
    doc = watch(model, optimizer) if watch else None
    for step in range(steps):
        i = torch.arange(step * 32, step * 32 + 32) % 512
        loss = F.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="conv_bn_lr_zero",
        bug="LambdaLR(opt, lambda s: s // 1000) on a Conv+BatchNorm CNN: lr 0 for 1000 steps",
        train=partial(train, bug="lr_zero"),
        expect=("TD104",),
        top="TD104",
        twin="conv_bias_before_bn",
        steps=30,
    ),
    # Conv biases before BatchNorm do not move under plain SGD: info, not an error.
    Scenario(name="conv_bias_before_bn", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug="lr_zero")
