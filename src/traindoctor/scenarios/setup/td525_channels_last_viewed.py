"""TD525: channels-last images (N, H, W, 3) reshaped to (N, 3, H, W) for the first conv
instead of permuted (PaddlePaddle/Paddle#29716): each plane the conv reads interleaves the
colours of neighbouring pixels and the image's rows.

`bug=True` reshapes; the healthy twin `conv_channels_last_permuted` permutes."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(25)
    torch.manual_seed(25)
    protos = torch.rand(4, 16, 16, 3, generator=g)  # one colour pattern per class, HWC
    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    for _ in range(steps):
        y = torch.randint(0, 4, (32,), generator=g)
        images = protos[y] + 0.3 * torch.rand(32, 16, 16, 3, generator=g)  # (N, H, W, C)
        x = images.reshape(-1, 3, 16, 16) if bug else images.permute(0, 3, 1, 2)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="conv_channels_last_reshaped",
        bug="(N, H, W, C) images reshaped to (N, C, H, W) for the first conv, not permuted",
        train=partial(train, bug=True),
        expect=("TD525",),
        top="TD525",
        where={"module": "0"},
        twin="conv_channels_last_permuted",
        steps=30,
    ),
    Scenario(name="conv_channels_last_permuted", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)
