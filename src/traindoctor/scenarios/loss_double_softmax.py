"""TD506: the model ends in a softmax and its probabilities go to nn.CrossEntropyLoss, which
applies log-softmax again: the loss can never go below log(1 + 3/e) = 0.74 over 4 classes."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 40, watch=None, healthy: bool = False):
    x, y = classification_data(n=512, seed=21)
    model = Classifier()
    teacher = Classifier().requires_grad_(False)  # a frozen teacher (healthy twin: distillation)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1 if healthy else 0.0)
    data = batches(x, y, batch=32, seed=21)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        if healthy:
            # Logits to CE with label smoothing, plus distillation on soft *targets*.
            with torch.no_grad():
                soft = F.softmax(teacher(xb) / 2.0, dim=1)
            kd = F.kl_div(F.log_softmax(logits / 2.0, dim=1), soft, reduction="batchmean")
            loss = criterion(logits, yb) + 0.1 * kd
        else:
            loss = criterion(logits.softmax(dim=1), yb)  # BUG: probabilities, not logits
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIO = Scenario(
    name="loss_double_softmax",
    bug="nn.CrossEntropyLoss fed softmax outputs: softmax applied twice, loss floor 0.74",
    train=train,
    expect=("TD506",),
    top="TD506",
    where={"source": "loss_double_softmax.py:31"},
    twin="loss_logits_smoothing_distill",
    steps=40,
)

if __name__ == "__main__":
    train()
