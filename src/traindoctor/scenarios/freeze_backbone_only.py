"""Healthy twin of freeze_loop_all_params: only the backbone is frozen, the head trains."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import Classifier


def train(steps: int = 60, watch=None):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    for p in model.backbone.parameters():
        p.requires_grad = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=6)
    for step in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        log(doc, loss=loss)
        loss.backward()
        optimizer.step()
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:]), y[448:]))
    return model


SCENARIO = Scenario(name="freeze_backbone_only", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
