"""TD507: a binary task with one output unit trained with nn.CrossEntropyLoss on float targets
of shape (B, 1): log-softmax over one logit is 0, so the loss is 0 and no gradient flows."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, line_in, log
from .._nets import Classifier


def binary_data(n: int = 512, dim: int = 16, seed: int = 13):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return x, (x @ w > 0).float()


def train(steps: int = 30, watch=None, bug: bool = False):
    x, y = binary_data()
    model = Classifier(classes=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    criterion = nn.CrossEntropyLoss()
    data = batches(x, y, batch=32, seed=13)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logit = model(xb)  # (B, 1)
        if not bug:
            loss = F.binary_cross_entropy_with_logits(logit.squeeze(1), yb)
        else:
            loss = criterion(logit, yb.unsqueeze(1))  # BUG: softmax over a single logit
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_ce_single_logit",
        bug="CrossEntropyLoss over a (B, 1) output: log-softmax of one logit is 0, zero gradient",
        train=partial(train, bug=True),
        expect=("TD507",),
        top="TD507",
        where={"source": line_in(__file__, "# BUG: softmax over a single logit")},
        twin="loss_bce_single_logit",
        steps=30,
    ),
    # One logit with binary_cross_entropy_with_logits.
    Scenario(name="loss_bce_single_logit", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
