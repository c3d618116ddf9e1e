"""Healthy twin of accum_step_never_reached and zero_grad_missing: correct accumulation,
step and zero_grad() once every `accum_steps` micro-batches."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 60, watch=None, accum_steps: int = 4):
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
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


SCENARIO = Scenario(name="grad_accumulation", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
