"""TD103: the optimizer is built from the backbone's parameters only; the head never trains."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 30, watch=None):
    x, y = classification_data(n=512, seed=2)
    model = Classifier()
    optimizer = torch.optim.SGD(model.backbone.parameters(), lr=0.05, momentum=0.9)  # BUG
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=2)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIO = Scenario(
    name="optimizer_backbone_only",
    bug="optimizer = SGD(model.backbone.parameters()): the head is in no param group",
    train=train,
    expect=("TD103",),
    top="TD103",
    where={"module": "head", "params_prefix": "head.", "source": "optimizer_backbone_only.py"},
    twin="optimizer_all_params",
    steps=30,
)

if __name__ == "__main__":
    train()
