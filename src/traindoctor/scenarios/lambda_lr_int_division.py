"""TD104: a LambdaLR schedule with integer division: lr = base * (step // 1000) = 0 all run."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 30, watch=None):
    x, y = classification_data(n=512, seed=3)
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s // 1000
    )  # BUG: 0 until 1000
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


SCENARIO = Scenario(
    name="lambda_lr_int_division",
    bug="LambdaLR(opt, lambda s: s // 1000): the learning rate is 0 for the first 1000 steps",
    train=train,
    expect=("TD104",),
    top="TD104",
    where={"source": "lambda_lr_int_division.py"},
    twin="lambda_lr_warmup",
    steps=30,
)

if __name__ == "__main__":
    train()
