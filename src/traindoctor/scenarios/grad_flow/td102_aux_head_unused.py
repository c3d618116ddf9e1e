"""TD102: an auxiliary head is computed in forward but its loss is never added to the total.

`bug=True` leaves the aux loss out (loss = main only); the healthy twin `aux_head_in_loss`
weights it into the total."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import AuxClassifier


def train(steps: int = 60, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=1)
    model = AuxClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=1)
    for step in range(steps):
        xb, yb = next(data)
        logits, aux_logits = model(xb)
        if bug:
            loss = F.cross_entropy(logits, yb)
            aux_loss = F.cross_entropy(aux_logits, yb)  # BUG: computed, never added to the loss
            parts = {"main": loss, "aux": aux_loss}
        else:
            main = F.cross_entropy(logits, yb)
            aux = F.cross_entropy(aux_logits, yb)
            loss = main + 0.4 * aux
            parts = {"main": main, "aux": aux}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss, parts=parts)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:])[0], y[448:]))
    return model


SCENARIOS = (
    Scenario(
        name="aux_head_unused",
        bug="aux head computed in forward, its loss left out of the total (loss = main only)",
        train=partial(train, bug=True),
        expect=("TD102",),
        top="TD102",
        where={"module": "aux_head", "params_prefix": "aux_head.", "source": "_nets.py"},
        twin="aux_head_in_loss",
        steps=30,
    ),
    Scenario(name="aux_head_in_loss", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
