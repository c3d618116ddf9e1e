"""TD106: gradient accumulation without zero_grad(): every step adds all past gradients."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 30, watch=None, accum_steps: int = 4):
    x, y = classification_data(n=512, seed=4)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=4)
    for i in range(steps * accum_steps):
        xb, yb = next(data)
        loss = F.cross_entropy(model(xb), yb) / accum_steps
        loss.backward()
        log(doc, loss=loss * accum_steps)
        if (i + 1) % accum_steps == 0:
            optimizer.step()  # BUG: no optimizer.zero_grad() anywhere in the loop
    return model


SCENARIO = Scenario(
    name="zero_grad_missing",
    bug="accumulation loop that steps every 4 micro-batches and never calls zero_grad()",
    train=train,
    expect=("TD106",),
    top="TD106",
    where={"source": "zero_grad_missing.py"},
    twin="grad_accumulation",
    steps=30,
)

if __name__ == "__main__":
    train()
