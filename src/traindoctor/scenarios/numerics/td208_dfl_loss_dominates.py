"""TD208: a box head trained with three loss parts where the DFL part (-log of softmax bin
probabilities, summed over the 4 sides) is ~15x each of the other two, as in seed 003.

`bug=True` plants it; the healthy twin `dfl_loss_balanced` averages DFL over the sides and
weights it 0.25."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log

REG_MAX = 16  # distribution bins per box side


class BoxHead(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.reg = nn.Linear(hidden, 4 * REG_MAX)  # bin logits of the 4 sides
        self.cls = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor):
        f = self.backbone(x)
        return self.reg(f).view(-1, 4, REG_MAX), self.cls(f)


def box_data(n: int = 512, dim: int = 16, classes: int = 4, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    dist = torch.sigmoid(x @ torch.randn(dim, 4, generator=g)) * (REG_MAX - 1.01)
    labels = (x @ torch.randn(dim, classes, generator=g)).argmax(1)
    return x, dist, F.one_hot(labels, classes).float()


def dfl_loss(bins: torch.Tensor, dist: torch.Tensor, sides_reduce: str) -> torch.Tensor:
    """Distribution focal loss: -log of the probabilities of the two bins around the target."""
    prob = bins.softmax(-1)
    left = dist.long()
    w_right = dist - left
    p_left = prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    p_right = prob.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    per_side = -torch.log(p_left + 1e-7) * (1 - w_right) - torch.log(p_right + 1e-7) * w_right
    per_box = per_side.sum(-1) if sides_reduce == "sum" else per_side.mean(-1)
    return per_box.mean()


def train(steps: int = 60, watch=None, bug: bool = False):
    balanced = not bug
    x, dist, onehot = box_data()
    model = BoxHead()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    proj = torch.arange(REG_MAX, dtype=torch.float32)
    for step in range(steps):
        i = (step * 32) % 480
        xb, db, yb = x[i : i + 32], dist[i : i + 32], onehot[i : i + 32]
        bins, logits = model(xb)
        pred = bins.softmax(-1) @ proj
        box = F.l1_loss(pred, db) / REG_MAX
        cls = F.binary_cross_entropy_with_logits(logits, yb)
        # BUG (unless balanced): summed over the 4 sides, weight 1.0
        dfl = 0.25 * dfl_loss(bins, db, "mean") if balanced else dfl_loss(bins, db, "sum")
        loss = box + cls + dfl
        log(doc, loss=loss, parts={"box": box, "cls": cls, "dfl": dfl})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


SCENARIOS = (
    Scenario(
        name="dfl_loss_dominates",
        bug="DFL summed over the 4 box sides with weight 1: ~11 against box ~0.4 and cls ~0.7",
        train=partial(train, bug=True),
        expect=("TD208",),
        top="TD208",
        where={"source": "td208_dfl_loss_dominates.py"},
        twin="dfl_loss_balanced",
        steps=60,
        modes=("watch",),  # parts are named through doc.log(parts=...)
    ),
    Scenario(name="dfl_loss_balanced", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
