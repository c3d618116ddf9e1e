"""TD302: a z-loss regularizer computed under torch.no_grad(), logged as a loss part: it is in
the loss but trains nothing.

The same loop holds a healthy use that must stay silent: a detached EMA teacher's output as a
target. The healthy twin computes the regularizer with its graph.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier

CLASSES = 4


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, classes=CLASSES, seed=12)
    model = Classifier(classes=CLASSES)
    teacher = copy.deepcopy(model).requires_grad_(False).eval()  # an EMA teacher
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=12)
    for _ in range(steps):
        xb, yb = next(data)
        logits = model(xb)
        with torch.no_grad():
            target = teacher(xb).softmax(-1)  # a teacher's output as a target: healthy
        ce = F.cross_entropy(logits, yb)
        kd = 0.5 * F.mse_loss(logits.softmax(-1), target.detach())
        if bug:
            with torch.no_grad():  # BUG: the regularizer computed without gradients
                z = 0.2 * torch.logsumexp(logits, -1).pow(2).mean()  # z-loss, no graph
        else:
            z = 0.2 * torch.logsumexp(logits, -1).pow(2).mean()
        loss = ce + kd + z
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), model.parameters()):
                pt.mul_(0.9).add_(ps.detach(), alpha=0.1)
        log(doc, loss=loss, parts={"ce": ce, "kd": kd, "z": z})
    return model


SCENARIOS = (
    Scenario(
        name="aux_loss_no_grad",
        bug="the z-loss regularizer is computed under torch.no_grad(): it is in the loss (and "
        "logged as part 'z') but trains nothing",
        train=partial(train, bug=True),
        expect=("TD302",),
        top="TD302",
        where={"source": line_in(__file__, "loss = ce + kd + z")},
        twin="aux_loss_with_grad",
        steps=40,
    ),
    Scenario(name="aux_loss_with_grad", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
