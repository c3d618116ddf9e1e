"""What nll_loss is fed, in pytorch/examples' MNIST loop, small. `bug` plants:
- "log_relu" (TD509): the model ends in a ReLU "to make the outputs positive" and the loss is
  nll_loss(log(out)): ReLU outputs are exactly 0 for about half the units, log(0) = -inf;
- "softmax" (TD506): softmax where log_softmax was meant (the net's last line changed): the loss
  is -mean(p_target), negative and bounded in [-1, 0].
The healthy twin feeds nll_loss the log_softmax of the logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 20, watch=None, bug: str | None = None):
    seed = 29 if bug == "softmax" else 23  # the softmax variant has its own data
    x, y = classification_data(n=512, seed=seed)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=seed)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        if bug == "log_relu":
            loss = F.nll_loss(torch.log(F.relu(out)), yb)  # BUG: log of ReLU outputs
        elif bug == "softmax":
            probs = F.softmax(out, dim=1)
            loss = F.nll_loss(probs, yb)  # BUG: nll_loss expects log-probabilities
        else:
            loss = F.nll_loss(F.log_softmax(out, dim=1), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="loss_nll_log_relu",
        bug="nll_loss(torch.log(relu(out))): log(0) = -inf on the inactive units",
        train=partial(train, bug="log_relu"),
        expect=("TD509",),
        top="TD509",
        where={"source": line_in(__file__, "# BUG: log of ReLU outputs")},
        twin="loss_nll_log_softmax",
        steps=20,
    ),
    Scenario(
        name="loss_nll_softmax",
        bug="F.nll_loss(F.softmax(logits, 1), y): probabilities where log-probabilities belong",
        train=partial(train, bug="softmax"),
        expect=("TD506",),
        top="TD506",
        where={"source": line_in(__file__, "# BUG: nll_loss expects log-probabilities")},
        twin="loss_nll_log_softmax",
        steps=20,
    ),
    Scenario(name="loss_nll_log_softmax", bug="", train=train, steps=20),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
