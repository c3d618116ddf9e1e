"""The loop of seed report 002 (shared/seeds/002_*.txt), small: a regression model trained with
gradient accumulation, a LR scheduler and an EMA copy that is validated every epoch.

`bug` plants one of the report's real causes:
- "debug_scaling": `loss = loss / accum` sits inside a debug-only block (first batch only);
- "step_indent":   `optimizer.step()`, the scheduler and the EMA update are indented into
                   that block, so they run after the first batch only;
- "detached":      the trained loss is computed from detached outputs, and
                   `loss.requires_grad_(True)` was added to silence the error.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn

from .._base import Scenario, log, validating


class RISNet(nn.Module):
    def __init__(self, dim: int = 24, hidden: int = 64, out: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_data(n: int = 384, dim: int = 24, out: int = 8):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, out, generator=g) / dim**0.5
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, out, generator=g)
    return x[:320], y[:320], x[320:], y[320:]


def nmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).sum(1).mean() / (target**2).sum(1).mean()


def train(steps: int = 60, watch=None, bug: str | None = None, accum: int = 4, batch: int = 16):
    xtr, ytr, xva, yva = make_data()
    model = RISNet()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(
        [
            {"params": model.backbone.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 8e-3},
        ]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=1e-4)
    doc = watch(model, optimizer) if watch else None
    per_epoch = len(xtr) // batch
    g = torch.Generator().manual_seed(3)
    done, epoch = 0, 0
    while done < steps:
        epoch += 1
        perm = torch.randperm(len(xtr), generator=g)
        model.train()
        for bi in range(per_epoch):
            idx = perm[bi * batch : (bi + 1) * batch]
            pred = model(xtr[idx])
            if bug == "detached":
                loss = nmse(pred.detach(), ytr[idx])  # BUG: detached outputs
                loss.requires_grad_(True)  # ... and the error it raised, silenced
            else:
                loss = nmse(pred, ytr[idx])
            if bug != "debug_scaling":
                loss = loss / accum
            if epoch == 1 and bi == 0:  # debug block
                print(f"[debug] first batch loss {loss.item():.4f}")
                if bug == "debug_scaling":
                    loss = loss / accum  # BUG: scaling only in the debug block
                if bug == "step_indent":
                    optimizer.step()  # BUG: indented into the debug block
                    scheduler.step()
                    ema_update(ema, model)
                    optimizer.zero_grad()
            loss.backward()
            log(doc, loss=loss.detach() * accum if bug != "debug_scaling" else loss.detach())
            if bug != "step_indent" and (bi + 1) % accum == 0:
                optimizer.step()
                scheduler.step()
                ema_update(ema, model)
                optimizer.zero_grad()
                done += 1
                if done >= steps:
                    break
            elif bug == "step_indent" and (bi + 1) % accum == 0:
                done += 1  # the loop still counts its "steps"
                if done >= steps:
                    break
        with validating(doc, ema):
            val = nmse(ema(xva), yva)
            log(doc, loss=val)
    return model


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float = 0.9) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


SCENARIOS = (
    Scenario(
        name="seed002_debug_scaling",
        bug="loss / accum only inside the first-batch debug block (seed 002a)",
        train=partial(train, bug="debug_scaling"),
        expect=("TD109",),
        top="TD109",
        where={"source": "seed002.py"},
        twin="seed002_healthy",
        steps=30,
    ),
    Scenario(
        name="seed002_detached",
        bug="loss computed from pred.detach(), then loss.requires_grad_(True) (seed 002c)",
        train=partial(train, bug="detached"),
        expect=("TD101",),
        top="TD101",
        where={"source": "seed002.py"},
        twin="seed002_healthy",
        steps=30,
    ),
    Scenario(
        name="seed002_step_indent",
        bug="optimizer.step() indented into the first-batch debug block (seed 002b)",
        train=partial(train, bug="step_indent"),
        expect=("TD105",),
        top="TD105",
        where={"source": "seed002.py"},
        twin="seed002_healthy",
        steps=30,
    ),
    Scenario(name="seed002_healthy", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug="debug_scaling")
