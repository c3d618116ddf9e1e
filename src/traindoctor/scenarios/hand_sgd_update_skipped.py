"""TD105 in a loop without a torch optimizer: the hand-written update sits under a condition
that is never true, so nothing ever applies the gradients."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, line_in, log
from ._nets import Classifier


def train(steps: int = 40, watch=None, lr: float = 0.1, warmup: int = 1000):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    doc = watch(model, None) if watch else None
    data = batches(x, y, batch=32, seed=6)
    for i in range(steps):
        xb, yb = next(data)
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        log(doc, loss=loss)
        if i > warmup:  # BUG: the update is skipped for the whole (shorter) run
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
    return model


SCENARIO = Scenario(
    name="hand_sgd_update_skipped",
    bug="hand-written update (no torch optimizer) under a condition that is never true",
    train=train,
    expect=("TD105",),
    top="TD105",
    where={"source": line_in(__file__, "loss.backward()")},
    twin="hand_sgd",
    steps=40,
)

if __name__ == "__main__":
    train()
