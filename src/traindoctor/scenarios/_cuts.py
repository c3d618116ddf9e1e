"""Loss terms whose gradient is cut before they reach the loss (TD302, TD301), and their twins.

One small classifier, trained with cross-entropy plus one extra term; `bug` plants a cut:
- "numpy":   a confidence penalty computed on a numpy round-trip of the probabilities
             (`torch.from_numpy(p.detach().cpu().numpy())`): it trains nothing (TD302);
- "no_grad": a z-loss regularizer computed under `torch.no_grad()` (TD302);
- "argmax":  an ordinal distance penalty on the argmax class,
             `mse(logits.argmax(-1).float(), y)`: argmax has no gradient (TD301).

The same loops also hold the healthy uses that must stay silent: `.item()` for logging, a hard
example mask from a comparison, argmax for an accuracy metric and as an index into `gather`,
and a detached EMA teacher's output as a target.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ._base import batches, classification_data, line_in, log
from ._nets import Classifier

CLASSES = 4


def train_numpy(steps: int = 40, watch=None, bug: bool = True):
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


def train_no_grad(steps: int = 40, watch=None, bug: bool = True):
    torch.manual_seed(0)
    x, y = classification_data(n=512, classes=CLASSES, seed=12)
    model = Classifier(classes=CLASSES)
    teacher = copy.deepcopy(model).requires_grad_(False).eval()  # an EMA teacher
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=32, seed=12)
    for _ in range(steps):
        xb, yb = next(data)
        logits = model(xb)
        with torch.no_grad():
            target = teacher(xb).softmax(-1)  # a teacher's output as a target: healthy
        ce = F.cross_entropy(logits, yb)
        kd = 0.5 * F.mse_loss(logits.softmax(-1), target.detach())
        if bug:
            with torch.no_grad():  # BUG: the regularizer computed without gradients
                z = 0.2 * torch.logsumexp(logits, -1).pow(2).mean()  # z-loss, no graph
        else:
            z = 0.2 * torch.logsumexp(logits, -1).pow(2).mean()
        loss = ce + kd + z
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), model.parameters()):
                pt.mul_(0.9).add_(ps.detach(), alpha=0.1)
        log(doc, loss=loss, parts={"ce": ce, "kd": kd, "z": z})
    return model


def train_argmax(steps: int = 40, watch=None, bug: bool = True):
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


def line_of(marker: str) -> str:
    """`_cuts.py:LINE` of the first line holding `marker`: where a finding must point."""
    return line_in(__file__, marker)
