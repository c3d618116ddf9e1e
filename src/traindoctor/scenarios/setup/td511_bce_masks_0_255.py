"""TD511: binary masks stored as 0/255 images fed to BCEWithLogitsLoss as they are: a target of
255 has no minimum, so the loss goes negative and falls without end as the logits grow (real
reports: MontaEllis/Pytorch-Medical-Segmentation#8, milesial/Pytorch-UNet#65)."""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, batches, line_in, log


def train(steps: int = 30, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(31)
    images = torch.rand(256, 1, 8, 8, generator=g)
    masks = (images > 0.5).float() * 255  # the mask files: 0 and 255
    targets = masks if bug else masks / 255  # BUG: not scaled to 0/1
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.BCEWithLogitsLoss()
    doc = watch(model, optimizer) if watch else None
    data = batches(images, targets, batch=16, seed=31)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="bce_masks_0_255",
        bug="0/255 masks as BCEWithLogitsLoss targets: the loss goes negative without a floor",
        train=partial(train, bug=True),
        expect=("TD511",),
        top="TD511",
        where={"source": line_in(__file__, "loss = criterion(model(xb), yb)")},
        twin="bce_masks_0_1",
        steps=30,
    ),
    # The same masks divided by 255: 0/1 targets.
    Scenario(name="bce_masks_0_1", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
