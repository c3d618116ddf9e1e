"""TD105: gradient accumulation whose step condition can never be true (i % accum == accum)."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 20, watch=None, accum_steps: int = 4):
    x, y = classification_data(n=512, seed=4)
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=4)
    for i in range(steps * accum_steps):
        xb, yb = next(data)
        loss = F.cross_entropy(model(xb), yb) / accum_steps
        loss.backward()
        log(doc, loss=loss * accum_steps)
        if i % accum_steps == accum_steps:  # BUG: a remainder is always < accum_steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


SCENARIO = Scenario(
    name="accum_step_never_reached",
    bug="`if i % accum_steps == accum_steps: optimizer.step()` is never true",
    train=train,
    expect=("TD105",),
    top="TD105",
    where={"source": "accum_step_never_reached.py"},
    twin="grad_accumulation",
    steps=20,
)

if __name__ == "__main__":
    train()
