"""TD110: a freezing loop meant for the backbone runs over model.parameters(): nothing trains,
and backward() raises "element 0 of tensors does not require grad".

`bug=True` freezes everything; the healthy twin `freeze_backbone_only` freezes the backbone
only and trains the head."""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 60, watch=None, bug: bool = False):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    if bug:
        for p in model.parameters():  # BUG: meant model.backbone.parameters()
            p.requires_grad = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        for p in model.backbone.parameters():
            p.requires_grad = False
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    doc = watch(model, optimizer) if watch else None
    # The buggy variant crashes at its first backward(): it never validates.
    data = batches(x, y, batch=32, seed=6) if bug else batches(x[:448], y[:448], batch=32, seed=6)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        log(doc, loss=loss)
        loss.backward()  # RuntimeError: element 0 of tensors does not require grad
        optimizer.step()
        if not bug and (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIOS = (
    Scenario(
        name="freeze_loop_all_params",
        bug="`for p in model.parameters(): p.requires_grad = False` (meant: the backbone only)",
        train=partial(train, bug=True),
        expect=("TD110",),
        top="TD110",
        where={"module": "<model>", "source": "td110_freeze_loop_all_params.py"},
        twin="freeze_backbone_only",
        steps=20,
        raises=RuntimeError,
    ),
    Scenario(name="freeze_backbone_only", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
