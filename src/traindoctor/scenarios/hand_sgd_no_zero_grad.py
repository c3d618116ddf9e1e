"""TD106 in a loop without a torch optimizer: the weights are updated by hand and the
gradients never zeroed, so each update applies the sum of all past gradients
(https://discuss.pytorch.org/t/why-do-we-need-to-set-the-gradients-manually-to-zero-in-pytorch/4903)."""

import torch.nn.functional as F

from ._base import Scenario, batches, classification_data, line_in, log
from ._nets import Classifier


def train(steps: int = 40, watch=None, lr: float = 0.1):
    x, y = classification_data(n=512, seed=6)
    model = Classifier()
    doc = watch(model, None) if watch else None
    data = batches(x, y, batch=32, seed=6)
    for _ in range(steps):
        xb, yb = next(data)
        loss = F.cross_entropy(model(xb), yb)  # BUG: no model.zero_grad() in the loop
        loss.backward()
        log(doc, loss=loss)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)  # hand-written update
    return model


SCENARIO = Scenario(
    name="hand_sgd_no_zero_grad",
    bug="hand-written SGD (p.data.add_, no torch optimizer) that never zeroes the gradients",
    train=train,
    expect=("TD106",),
    top="TD106",
    where={"source": line_in(__file__, "# hand-written update")},
    twin="hand_sgd",
    steps=40,
)

if __name__ == "__main__":
    train()
