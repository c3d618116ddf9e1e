"""TD105 and TD106 in a loop without a torch optimizer: the loop updates the weights itself
(`p.data.add_(p.grad, alpha=-lr)`, as pytorch/examples' word_language_model does).

- `bug="no_zero_grad"` (TD106): the gradients are never zeroed, so each update applies the sum
  of all past gradients
  (https://discuss.pytorch.org/t/why-do-we-need-to-set-the-gradients-manually-to-zero-in-pytorch/4903);
- `bug="update_skipped"` (TD105): the hand-written update sits under a condition that is never
  true, so nothing ever applies the gradients.
The healthy twin `hand_sgd` calls `model.zero_grad()` before each backward and updates each step.
"""

from functools import partial

import torch
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log
from .._nets import Classifier


def train(steps: int = 40, watch=None, bug: str | None = None, lr: float = 0.1, warmup: int = 1000):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    doc = watch(model, None) if watch else None
    data = batches(x, y, batch=32, seed=6)
    for i in range(steps):
        xb, yb = next(data)
        if bug != "no_zero_grad":  # BUG (no_zero_grad): no model.zero_grad() in the loop
            model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        log(doc, loss=loss)
        if bug == "update_skipped":
            if i > warmup:  # BUG: the update is skipped for the whole (shorter) run
                with torch.no_grad():
                    for p in model.parameters():
                        p -= lr * p.grad
        else:
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)  # hand-written update
    return model


SCENARIOS = (
    Scenario(
        name="hand_sgd_no_zero_grad",
        bug="hand-written SGD (p.data.add_, no torch optimizer) that never zeroes the gradients",
        train=partial(train, bug="no_zero_grad"),
        expect=("TD106",),
        top="TD106",
        where={"source": line_in(__file__, "# hand-written update")},
        twin="hand_sgd",
        steps=40,
    ),
    Scenario(
        name="hand_sgd_update_skipped",
        bug="hand-written update (no torch optimizer) under a condition that is never true",
        train=partial(train, bug="update_skipped"),
        expect=("TD105",),
        top="TD105",
        where={"source": line_in(__file__, "loss.backward()")},
        twin="hand_sgd",
        steps=40,
    ),
    Scenario(name="hand_sgd", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug="no_zero_grad")
