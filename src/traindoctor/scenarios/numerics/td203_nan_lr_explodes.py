"""TD203: an MLP trained with a learning rate far too large: the weights blow up and turn NaN
within a few steps; traindoctor names the layer where the first non-finite value appears.

`bug=True` sets lr=1e4; the healthy twin `nan_lr_sane` trains the same MLP with lr=0.05."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log
from .._nets import Classifier


def train(steps: int = 30, watch=None, bug: bool = False):
    lr = 1e4 if bug else 0.05
    x, y = classification_data(n=512, seed=7)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)  # BUG: lr=1e4
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=7)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="nan_lr_explodes",
        bug="SGD(lr=1e4): the weights overflow and the run turns NaN after a few steps",
        train=partial(train, bug=True),
        expect=("TD203",),
        top="TD203",
        where={"module": "backbone.2", "source": "_nets.py"},
        twin="nan_lr_sane",
        steps=30,
    ),
    Scenario(name="nan_lr_sane", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    train(bug=True)
