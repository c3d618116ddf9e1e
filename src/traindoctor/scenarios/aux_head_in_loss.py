"""Healthy twin of aux_head_unused: the auxiliary loss is weighted into the total."""

import torch
import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, log, validating
from ._nets import AuxClassifier


def train(steps: int = 60, watch=None):
    x, y = classification_data(n=512, seed=1)
    model = AuxClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x[:448], y[:448], batch=32, seed=1)
    for step in range(steps):
        xb, yb = next(data)
        logits, aux_logits = model(xb)
        main = F.cross_entropy(logits, yb)
        aux = F.cross_entropy(aux_logits, yb)
        loss = main + 0.4 * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(doc, loss=loss, parts={"main": main, "aux": aux})
        if (step + 1) % 10 == 0:
            with validating(doc, model):
                log(doc, loss=F.cross_entropy(model(x[448:])[0], y[448:]))
    return model


SCENARIO = Scenario(name="aux_head_in_loss", bug="", train=train, steps=60)

if __name__ == "__main__":
    train()
