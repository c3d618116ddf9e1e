"""TD511: the dataset's labels are 1..4 and the head got 5 outputs "to make them fit": class 0
is never used and every class index is off by one."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 30, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=29)
    labels = y + 1 if bug else y  # BUG: 1-based labels (the file's class ids)
    model = Classifier(classes=5 if bug else 4)
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


SCENARIOS = (
    Scenario(
        name="labels_one_based",
        bug="labels 1..4 with 5 outputs: class 0 never used, indices off by one",
        train=partial(train, bug=True),
        expect=("TD511",),
        top="TD511",
        where={"source": line_in(__file__, "loss = F.cross_entropy(model(xb), yb)")},
        twin="labels_zero_based",
        steps=30,
    ),
    # 0-based labels and 4 outputs.
    Scenario(name="labels_zero_based", bug="", train=train, steps=30),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
