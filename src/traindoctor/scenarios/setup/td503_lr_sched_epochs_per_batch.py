"""Learning-rate schedules over an epoch loop: a classifier trained for `epochs` epochs of
`per_epoch` batches, with a scheduler stepped after every batch (`scheduler.step()` in the
batch loop). Whether that is right depends on how the scheduler was sized (`bug` picks a
wrongly sized one, `schedule` a healthy one):

- "multistep_epochs": MultiStepLR(milestones=[2, 3]) sized in epochs, stepped per batch: the
                      lr is divided by 100 after the third batch (bug);
- "cosine_epochs":    CosineAnnealingLR(T_max=epochs) stepped per batch: the cosine ends after
                      4 batches and restarts, so the lr cycles every 8 batches (bug);
- "onecycle":         OneCycleLR(total_steps=epochs * per_epoch), meant per batch (healthy);
- "warmup_cosine":    linear warmup then CosineAnnealingLR(T_max in batches) (healthy).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from .._base import Scenario, batches, classification_data, log
from .._nets import Classifier


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


def train(
    steps: int = 64,
    watch=None,
    bug: str | None = None,
    schedule: str = "onecycle",
    epochs: int = 4,
):
    kind = bug or schedule
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


SCENARIOS = (
    # MultiStepLR(milestones=[2, 3]) sized in epochs but stepped after every batch: the learning
    # rate is 100x smaller from the third batch on, for the rest of the run.
    Scenario(
        name="lr_multistep_epochs_per_batch",
        bug="MultiStepLR(milestones=[2, 3]) meant per epoch, stepped per batch: lr /100 by batch 3",
        train=partial(train, bug="multistep_epochs"),
        expect=("TD503",),
        top="TD503",
        where={"source": "td503_lr_sched_epochs_per_batch.py"},
        twin="lr_onecycle_per_batch",
        steps=64,
    ),
    # OneCycleLR sized in batches, stepped per batch as it is meant to be.
    Scenario(name="lr_onecycle_per_batch", bug="", train=train, steps=64),
    # CosineAnnealingLR(T_max=epochs) stepped after every batch: the cosine ends after 4 batches
    # and restarts, so the learning rate cycles every 8 batches instead of decaying once.
    Scenario(
        name="lr_cosine_epochs_per_batch",
        bug="CosineAnnealingLR(T_max=epochs) stepped per batch: the lr cycles every 2*T_max batches",
        train=partial(train, bug="cosine_epochs"),
        expect=("TD503",),
        top="TD503",
        where={"source": "td503_lr_sched_epochs_per_batch.py"},
        twin="lr_warmup_cosine_per_batch",
        steps=64,
    ),
    # A linear warmup then a cosine sized in batches (SequentialLR), stepped per batch as it is
    # meant to be.
    Scenario(
        name="lr_warmup_cosine_per_batch",
        bug="",
        train=partial(train, schedule="warmup_cosine"),
        steps=64,
    ),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
