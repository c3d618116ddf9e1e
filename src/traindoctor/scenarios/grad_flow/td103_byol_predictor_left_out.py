"""TD103: a BYOL-style self-supervised loop: an online encoder and a predictor are trained; the target
encoder is a copy of the online one, run under no_grad and moved towards it by an exponential
moving average (`torch._foreach_lerp_`), never by the optimizer.

`bug="predictor_left_out"`: the optimizer is built from the encoder only, so the predictor (which
does get gradients) never trains. The target encoder is out of the optimizer in both versions, on
purpose.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, batches, classification_data, log


class Online(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
        self.predictor = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.encoder(x))


def _regress(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * F.cosine_similarity(p, z, dim=-1).mean()


def train(steps: int = 40, watch=None, bug: str | None = None, tau: float = 0.99):
    torch.manual_seed(0)
    x, y = classification_data(n=512, seed=11)
    model = Online()
    target = copy.deepcopy(model.encoder)  # moved by EMA only
    params = model.encoder.parameters() if bug == "predictor_left_out" else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    doc = watch(model, optimizer) if watch else None
    data = batches(x, y, batch=64, seed=11)
    for _ in range(steps):
        xb, _ = next(data)
        v1 = xb + 0.1 * torch.randn_like(xb)
        v2 = xb + 0.1 * torch.randn_like(xb)
        with torch.no_grad():
            z1, z2 = target(v1), target(v2)
        loss = _regress(model(v1), z2) + _regress(model(v2), z1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
        with torch.no_grad():
            torch._foreach_lerp_(
                list(target.parameters()), [p.detach() for p in model.encoder.parameters()], 1 - tau
            )
    return model


SCENARIOS = (
    Scenario(
        name="byol_predictor_left_out",
        bug="optimizer = SGD(model.encoder.parameters()): the predictor is in no param group",
        train=partial(train, bug="predictor_left_out"),
        expect=("TD103",),
        top="TD103",
        where={"source": "td103_byol_predictor_left_out.py"},
        twin="byol_ema_target",
        steps=40,
    ),
    # The target encoder is out of the optimizer and moved by an EMA under no_grad, as designed.
    Scenario(name="byol_ema_target", bug="", train=train, steps=40),
)

if __name__ == "__main__":
    train(bug="predictor_left_out")
