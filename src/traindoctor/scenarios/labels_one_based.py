"""TD511: the dataset's labels are 1..4 and the head got 5 outputs "to make them fit": class 0
is never used and every class index is off by one."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log
from ._nets import Classifier


def train(steps: int = 30, watch=None, healthy: bool = False):
    x, y = classification_data(n=512, seed=29)
    labels = y if healthy else y + 1  # BUG: 1-based labels (the file's class ids)
    model = Classifier(classes=4 if healthy else 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, labels, batch=32, seed=29)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIO = Scenario(
    name="labels_one_based",
    bug="labels 1..4 with 5 outputs: class 0 never used, indices off by one",
    train=train,
    expect=("TD511",),
    top="TD511",
    where={"source": "labels_one_based.py:21"},
    twin="labels_zero_based",
    steps=30,
)

if __name__ == "__main__":
    train()
