"""TD505: `train_loss += loss` (recon + KL, the PyTorch VAE example's loop without .item()),
the total reset at each epoch: every step's graph lives until the epoch ends."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log


def train(steps: int = 60, watch=None, bug: bool = False):
    torch.manual_seed(0)
    data = torch.sigmoid(torch.randn(480, 4) @ torch.randn(4, 32) * 2)
    encoder, decoder = nn.Linear(32, 8), nn.Linear(4, 32)
    model = nn.ModuleDict({"enc": encoder, "dec": decoder})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, optimizer) if watch else None
    done = 0
    while done < steps:
        train_loss = 0
        for i in range(0, 480, 16):  # 30 steps per epoch
            xb = data[torch.arange(i, i + 16)]
            mu, logvar = encoder(xb).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = torch.sigmoid(decoder(z))
            bce = F.binary_cross_entropy(recon, xb, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            optimizer.zero_grad()
            loss.backward()
            train_loss += loss if bug else loss.item()  # BUG (without .item()): keeps graphs
            optimizer.step()
            log(doc, loss=loss)
            done += 1
            if done == steps:
                break
    return model


SCENARIOS = (
    Scenario(
        name="loss_total_per_epoch",
        bug="`train_loss += loss` reset each epoch: graphs live until the epoch ends",
        train=partial(train, bug=True),
        expect=("TD505",),
        top="TD505",
        where={"source": line_in(__file__, "# BUG (without .item())")},
        twin="loss_total_per_epoch_item",
        steps=60,
    ),
    # `train_loss += loss.item()`.
    Scenario(name="loss_total_per_epoch_item", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    SCENARIOS[0].train()
