"""TD104: a LambdaLR schedule with integer division: lr = base * (step // 1000) = 0 all run.

`bug=True` plants the division; the healthy twin `lambda_lr_warmup` is a linear warmup that
starts at lr 0 and rises."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=3)
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    if bug:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: s // 1000
        )  # BUG: 0 until 1000
    else:
        warmup = 10
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / warmup))
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=3)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        scheduler.step()
        log(doc, loss=loss)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIOS = (
    Scenario(
        name="lambda_lr_int_division",
        bug="LambdaLR(opt, lambda s: s // 1000): the learning rate is 0 for the first 1000 steps",
        train=partial(train, bug=True),
        expect=("TD104",),
        top="TD104",
        where={"source": "td104_lambda_lr_int_division.py"},
        twin="lambda_lr_warmup",
        steps=30,
    ),
    Scenario(name="lambda_lr_warmup", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
