"""TD506: softmax where log_softmax was meant, in front of nll_loss (pytorch/examples' MNIST
net with the last line changed): the loss is -mean(p_target), negative and bounded in [-1, 0]."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 20, watch=None):
    x, y = classification_data(n=512, seed=29)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=29)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        probs = F.softmax(model(xb), dim=1)
        loss = F.nll_loss(probs, yb)  # BUG: nll_loss expects log-probabilities
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIO = Scenario(
    name="loss_nll_softmax",
    bug="F.nll_loss(F.softmax(logits, 1), y): probabilities where log-probabilities belong",
    train=train,
    expect=("TD506",),
    top="TD506",
    where={"source": "loss_nll_softmax.py:21"},
    twin="loss_nll_log_softmax",
    steps=20,
)

if __name__ == "__main__":
    train()
