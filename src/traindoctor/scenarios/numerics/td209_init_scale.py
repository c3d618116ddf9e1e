"""TD209: the first loss far above ln C, from the scale of what reaches cross-entropy.

- `bug="head_std"`: the final layer re-initialized with std=2: logits ~10x its input, first
  loss ≫ ln 4;
- `bug="unnormalized"`: features on a raw scale (x*40+100) reach cross-entropy as huge logits
  although every layer has PyTorch's default init.
The healthy twin `init_default` has the default init and standardized inputs.
"""

from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, batches, classification_data, log
from .._nets import Classifier


def train(steps: int = 40, watch=None, bug: str | None = None):
    x, y = classification_data(n=512, seed=8)
    if bug == "unnormalized":
        x = x * 40.0 + 100.0  # BUG (unnormalized): raw-scale features, never standardized
    model = Classifier()
    if bug == "head_std":
        nn.init.normal_(model.head.weight, std=2.0)  # BUG: far too large for fan-in 32
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=8)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="head_init_large",
        bug="nn.init.normal_(model.head.weight, std=2.0): logits std ≈ 10x the head input",
        train=partial(train, bug="head_std"),
        expect=("TD209",),
        top="TD209",
        where={"module": "head", "params_prefix": "head."},
        twin="init_default",
        steps=40,
    ),
    Scenario(
        name="ce_inputs_unnormalized",
        bug="inputs x*40+100 never standardized: cross-entropy starts far above ln 4 = 1.39",
        train=partial(train, bug="unnormalized"),
        expect=("TD209",),
        top="TD209",
        where={"source": "td209_init_scale.py"},
        twin="init_default",
        steps=40,
    ),
    Scenario(name="init_default", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug="head_std")
