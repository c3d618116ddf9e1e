"""TD503: gradient accumulation over 4 micro-batches, and an ExponentialLR(gamma=0.9) meant per
epoch stepped inside the micro-batch loop: the schedule runs 4 x (optimizer steps per epoch)
times too fast, the lr falls below 1% of its start within the first epoch (after 44 micro-
batches, 11 optimizer steps) and the rest of the run trains with almost nothing.

Healthy twin: the same accumulation loop, the scheduler stepped once per epoch."""

from functools import partial

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 48, watch=None, bug: bool = False, accum: int = 4, epochs: int = 4):
    x, y = classification_data(n=512, seed=21)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = lr_scheduler.ExponentialLR(optimizer, gamma=0.9)  # sized per epoch
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=21)
    steps_per_epoch = max(1, steps // epochs)
    for _epoch in range(epochs):
        for _ in range(steps_per_epoch):
            for _micro in range(accum):
                xb, yb = next(data)
                loss = F.cross_entropy(model(xb), yb)
                (loss / accum).backward()
                log(doc, loss=loss)
                if bug:
                    scheduler.step()  # BUG: per micro-batch, the schedule is per epoch
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not bug:
            scheduler.step()
    return model


SCENARIOS = (
    Scenario(
        name="lr_epoch_sched_per_micro_batch",
        bug="ExponentialLR(gamma=0.9) meant per epoch, stepped per micro-batch under 4-step "
        "accumulation: the lr is below 1% of its start after 11 optimizer steps",
        train=partial(train, bug=True),
        expect=("TD503",),
        top="TD503",
        where={"source": line_in(__file__, "# BUG: per micro-batch")},
        twin="lr_epoch_sched_per_epoch",
        steps=48,
    ),
    # The same 4-step accumulation, the ExponentialLR stepped once per epoch as it is sized.
    Scenario(name="lr_epoch_sched_per_epoch", bug="", train=train, steps=48),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
