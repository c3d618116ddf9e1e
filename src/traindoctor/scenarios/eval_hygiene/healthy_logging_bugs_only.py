"""Control: the training is correct; only the user's own logging is wrong. A running accuracy
is never reset between epochs, and the validation accuracy is computed with a broadcasting
mistake ((B, 1) predictions against (B,) labels compare every pair). Those are the user's
prints, not tensors that train anything: traindoctor must stay silent."""

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log, validating
from .._nets import Classifier


def train(steps: int = 48, watch=None):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=11)
    xv, yv = classification_data(n=128, seed=12)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=11)
    correct = seen = 0  # never reset per epoch: a logging bug, not a training bug
    for step in range(1, steps + 1):
        xb, yb = next(data)
        optimizer.zero_grad()
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        optimizer.step()
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
        log(doc, loss=loss, running_acc=correct / seen)
        if step % 16 == 0:
            with validating(doc, model):
                pred = model(xv).argmax(1, keepdim=True)  # (B, 1)
                acc = (pred == yv).float().mean()  # broadcasts to (B, B): wrong, but only a print
                log(doc, val_acc=acc)
    return model


SCENARIO = Scenario(name="logging_bugs_only", bug="", train=train, steps=48)

if __name__ == "__main__":
    train()
