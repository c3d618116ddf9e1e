"""TD301: an ordinal distance penalty on the argmax class, `mse(logits.argmax(-1).float(), y)`:
argmax has no gradient, so the penalty trains nothing.

The healthy twin uses the expected class under the softmax; in both, argmax also feeds the
accuracy metric and a `gather` index (its gathered values keep the graph): healthy uses.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier

CLASSES = 4


def train(steps: int = 40, watch=None, bug: bool = False):
    torch.manual_seed(0)
    x, y = classification_data(n=512, classes=CLASSES, seed=13)
    model = Classifier(classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=13)
    ranks = torch.arange(CLASSES, dtype=torch.float32)
    for _ in range(steps):
        xb, yb = next(data)
        logits = model(xb)
        ce = F.cross_entropy(logits, yb)
        picked = (logits.softmax(-1) * ranks).sum(-1)  # expected class: differentiable
        if bug:
            picked = logits.argmax(-1).float()  # BUG: argmax has no gradient
        dist = 0.05 * F.mse_loss(picked, yb.float())  # ordinal distance penalty
        idx = logits.argmax(-1, keepdim=True)  # argmax as an index into gather: healthy
        top = logits.log_softmax(-1).gather(-1, idx).mean()
        loss = ce + dist - 0.01 * top
        acc = (logits.argmax(-1) == yb).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss, acc=acc)
    return model


SCENARIOS = (
    Scenario(
        name="argmax_selection_loss",
        bug="a distance penalty is computed on logits.argmax(-1): argmax has no gradient, so the "
        "penalty trains nothing",
        train=partial(train, bug=True),
        expect=("TD301",),
        top="TD301",
        where={"source": line_in(__file__, "picked = logits.argmax(-1).float()")},
        twin="argmax_metric_only",
        steps=40,
    ),
    Scenario(name="argmax_metric_only", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
