"""TD302: a confidence penalty computed on a numpy round-trip of the probabilities
(`torch.from_numpy(p.detach().cpu().numpy())`): it is in the loss but trains nothing.

The same loop holds the healthy uses that must stay silent: `.item()` for logging, a hard
example mask from a comparison and argmax for an accuracy metric. The healthy twin keeps the
penalty in torch.
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
    x, y = classification_data(n=512, classes=CLASSES, seed=11)
    model = Classifier(classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=11)
    running = 0.0
    for _ in range(steps):
        xb, yb = next(data)
        logits = model(xb)
        ce_each = F.cross_entropy(logits, yb, reduction="none")
        hard = (ce_each > ce_each.mean()).float()  # a mask from a comparison: healthy
        ce = (ce_each * (1.0 + hard)).mean()
        probs = logits.softmax(-1)
        if bug:
            probs = torch.from_numpy(probs.detach().cpu().numpy())  # BUG: numpy round-trip
        conf = 0.5 * (probs * probs.clamp_min(1e-8).log()).sum(-1).mean()  # confidence penalty
        loss = ce + conf
        acc = (logits.argmax(-1) == yb).float().mean()  # argmax for a metric: healthy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()  # .item() for logging: healthy
        log(doc, loss=loss, acc=acc)
    return model


SCENARIOS = (
    Scenario(
        name="aux_loss_numpy_roundtrip",
        bug="the confidence penalty is computed from torch.from_numpy(p.detach().cpu().numpy()): "
        "it is in the loss but trains nothing",
        train=partial(train, bug=True),
        expect=("TD302",),
        top="TD302",
        where={"source": line_in(__file__, "loss = ce + conf")},
        twin="aux_loss_in_torch",
        steps=40,
    ),
    Scenario(name="aux_loss_in_torch", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
