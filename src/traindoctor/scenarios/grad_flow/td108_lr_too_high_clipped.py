"""TD108: AdamW at lr=1.0 (about 300x a working lr) behind clip_grad_norm_(1.0): clipping keeps
every number finite (Adam's step is bounded by the lr whatever the gradient), so nothing blows
up to NaN, but each step moves the weights by several times their initial size and the loss
never gets below a uniform guess over the classes.

`bug=True` sets lr=1.0; the healthy twin `lr_clipped_well_chosen` has the same model, data and
clipping with AdamW lr=3e-3."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log

VOCAB = 16


def next_token_data(n: int = 64, seed: int = 0, step: int = 0):
    """Tokens and the token that follows each one (a fixed rule, 10% noise)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randint(0, VOCAB, (n,), generator=g)
    y = (3 * x + 1) % VOCAB
    noise = torch.rand(n, generator=g) < 0.1
    y = torch.where(noise, torch.randint(0, VOCAB, (n,), generator=g), y)
    return x, y


def train(steps: int = 60, watch=None, bug: bool = False):
    lr = 1.0 if bug else 3e-3  # BUG: lr=1.0
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(VOCAB, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, VOCAB)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    doc = watch(model, optimizer) if watch else None
    for step in range(steps):
        x, y = next_token_data(step=step)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="lr_too_high_clipped",
        bug="AdamW(lr=1.0) behind clip_grad_norm_(1.0): no NaN, but the loss never beats ln C",
        train=partial(train, bug=True),
        expect=("TD108",),
        top="TD108",
        where={"source": "td108_lr_too_high_clipped.py"},
        twin="lr_clipped_well_chosen",
        steps=60,
    ),
    Scenario(name="lr_clipped_well_chosen", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
