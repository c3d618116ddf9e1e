"""Healthy twin of hand_sgd_no_zero_grad and hand_sgd_update_skipped: no torch optimizer, the
loop updates the weights itself (`p.data.add_(p.grad, alpha=-lr)`, as pytorch/examples'
word_language_model does) after `model.zero_grad()`."""

import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 40, watch=None, lr: float = 0.1):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    doc = watch(model, None) if watch else None
    data = batches(x, y, batch=32, seed=6)
    for _ in range(steps):
        xb, yb = next(data)
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        log(doc, loss=loss)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
    return model


SCENARIO = Scenario(name="hand_sgd", bug="", train=train, steps=40)

if __name__ == "__main__":
    train()
