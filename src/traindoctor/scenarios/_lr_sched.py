"""Learning-rate schedules over an epoch loop: a classifier trained for `epochs` epochs of
`per_epoch` batches, with a scheduler stepped after every batch (`scheduler.step()` in the
batch loop). Whether that is right depends on how the scheduler was sized:

- "multistep_epochs": MultiStepLR(milestones=[2, 3]) sized in epochs, stepped per batch: the
                      lr is divided by 100 after the third batch (bug);
- "cosine_epochs":    CosineAnnealingLR(T_max=epochs) stepped per batch: the cosine ends after
                      4 batches and restarts, so the lr cycles every 8 batches (bug);
- "onecycle":         OneCycleLR(total_steps=epochs * per_epoch), meant per batch (healthy);
- "warmup_cosine":    linear warmup then CosineAnnealingLR(T_max in batches) (healthy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from ._base import batches, classification_data, log
from ._nets import Classifier


def make_scheduler(kind: str, optimizer: torch.optim.Optimizer, epochs: int, per_epoch: int):
    total = epochs * per_epoch
    if kind == "multistep_epochs":
        return lr_scheduler.MultiStepLR(optimizer, milestones=[2, 3], gamma=0.1)  # in epochs
    if kind == "cosine_epochs":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)  # in epochs
    if kind == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=total)
    if kind == "warmup_cosine":
        warmup = 6
        return lr_scheduler.SequentialLR(
            optimizer,
            [
                lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
                lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup),
            ],
            milestones=[warmup],
        )
    raise ValueError(kind)


def train(steps: int = 64, watch=None, kind: str = "onecycle", epochs: int = 4):
    x, y = classification_data(n=512, seed=11)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per_epoch = max(1, steps // epochs)
    scheduler = make_scheduler(kind, optimizer, epochs, per_epoch)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=11)
    for _epoch in range(epochs):
        for _ in range(per_epoch):
            xb, yb = next(data)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()  # per batch
            log(doc, loss=loss)
    return model
