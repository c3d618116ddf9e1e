"""TD504: the batch iterator runs dry after one epoch and `except StopIteration: pass` keeps
the last batch, so every later step trains on that same batch."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=11)
    x_val, y_val = classification_data(n=128, seed=12)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=11)  # endless, reshuffled every epoch
    if bug:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(11))[:160]
        data = iter([(x[perm[i : i + 32]], y[perm[i : i + 32]]) for i in range(0, 160, 32)])
    for step in range(steps):
        try:
            xb, yb = next(data)
        except StopIteration:
            pass  # BUG (if bug): one epoch of 5 batches, then the last batch forever
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if step % 10 == 9:
            # The same fixed validation batch every time: not training data, never judged.
            with validating(doc, model):
                log(doc, val_loss=F.cross_entropy(model(x_val), y_val))
    return model


SCENARIOS = (
    Scenario(
        name="data_same_batch",
        bug="`except StopIteration: pass` after a 5-batch epoch: steps 5-40 train on one batch",
        train=partial(train, bug=True),
        expect=("TD504",),
        top="TD504",
        twin="data_fresh_batches",
        steps=40,
    ),
    # A fresh batch every step, and the same fixed validation batch evaluated repeatedly
    # (validation is not training data).
    Scenario(name="data_fresh_batches", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
