"""TD509: the model ends in a ReLU "to make the outputs positive" and the loss is
nll_loss(log(out)): ReLU outputs are exactly 0 for about half the units, log(0) = -inf."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 20, watch=None, healthy: bool = False):
    x, y = classification_data(n=512, seed=23)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=23)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        if healthy:
            loss = F.nll_loss(F.log_softmax(out, dim=1), yb)
        else:
            loss = F.nll_loss(torch.log(F.relu(out)), yb)  # BUG: log of ReLU outputs
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIO = Scenario(
    name="loss_nll_log_relu",
    bug="nll_loss(torch.log(relu(out))): log(0) = -inf on the inactive units",
    train=train,
    expect=("TD509",),
    top="TD509",
    where={"source": "loss_nll_log_relu.py:24"},
    twin="loss_nll_log_softmax",
    steps=20,
)

if __name__ == "__main__":
    train()
