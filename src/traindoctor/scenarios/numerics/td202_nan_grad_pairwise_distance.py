"""TD202: a pairwise-distance regularizer `sqrt(((a - b) ** 2).sum(-1))` over all pairs of a
batch: the forward is finite, but on the diagonal the distance is exactly 0, sqrt's derivative
there is infinite and the backward of the square turns it into NaN (0 * inf). Every step's
gradient is NaN in `embed` while the loss stays finite: only a backward replay under anomaly
detection can name the op and line. `bug=True` plants it; the healthy twin
`nan_grad_pairwise_distance_eps` adds an epsilon under the sqrt."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, line_in, log


class SpreadNet(nn.Module):
    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.head = nn.Linear(32, 4)
        self.eps = eps

    def forward(self, x: torch.Tensor):
        z = self.embed(x)
        diff = z[:, None, :] - z[None, :, :]
        dist = torch.sqrt((diff**2).sum(-1) + self.eps)  # BUG if eps == 0: NaN grad at dist 0
        return self.head(z), dist


def train(steps: int = 20, watch=None, bug: bool = False):
    eps = 0.0 if bug else 1e-8
    x, y = classification_data(n=256, seed=4)
    model = SpreadNet(eps=eps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=4)
    for _ in range(steps):
        xb, yb = next(data)
        optimizer.zero_grad(set_to_none=True)
        logits, dist = model(xb)
        loss = F.cross_entropy(logits, yb) - 0.01 * dist.mean()  # spread the embeddings
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="nan_grad_pairwise_distance",
        bug="sqrt of pairwise squared distances: finite forward, NaN gradient on the diagonal",
        train=partial(train, bug=True),
        expect=("TD202",),
        top="TD202",
        where={"module": "embed", "source": line_in(__file__, "BUG if eps == 0: NaN grad")},
        twin="nan_grad_pairwise_distance_eps",
        steps=20,
    ),
    Scenario(name="nan_grad_pairwise_distance_eps", bug="", train=train, steps=20),
)

if __name__ == "__main__":
    train(bug=True)
