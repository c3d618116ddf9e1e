"""Gradient accumulation over `accum` micro-batches with gradient clipping (max_norm=1.0), the
usual large-batch recipe on a small GPU.

- bug=True:  each micro-batch loss is backpropagated as is (bug): the accumulated gradient is
  the sum of `accum` mean gradients, `accum` times the mean, so clip_grad_norm_ clips at every
  step and the effective step size is set by the clip, not by the gradient;
- bug=False: `loss / accum` before backward(): the gradient is the mean over the micro-batches.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log
from .._nets import Classifier


def train(steps: int = 40, watch=None, bug: bool = False, accum: int = 4):
    x, y = classification_data(n=512, seed=17)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=16, seed=17)
    for i in range(steps * accum):
        xb, yb = next(data)
        loss = F.cross_entropy(model(xb), yb)
        log(doc, loss=loss)
        if not bug:
            loss = loss / accum
        loss.backward()  # BUG if bug: the micro-batch losses add up
        if (i + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


SCENARIOS = (
    # Gradient accumulation over 4 micro-batches without `loss / accum`: the gradient is 4x the
    # mean and clip_grad_norm_(max_norm=1.0) clips at every step.
    Scenario(
        name="accum_loss_not_divided",
        bug="accumulated micro-batch losses not divided by the number of micro-batches",
        train=partial(train, bug=True),
        expect=("TD515",),
        top="TD515",
        where={"source": "td515_accum_loss_not_divided.py"},
        twin="accum_loss_divided",
        steps=40,
    ),
    # `loss / accum` before each micro-batch's backward, so the accumulated gradient is the mean
    # and clipping acts only on the rare large gradient.
    Scenario(name="accum_loss_divided", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
