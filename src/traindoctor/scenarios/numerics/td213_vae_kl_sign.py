"""TD213: a VAE whose KL divergence is subtracted from the reconstruction loss (the divergence
is already >= 0, written as -0.5 * sum(1 + logvar - mu^2 - exp(logvar))). Minimizing
`recon - KLD` blows the encoder's variance up: the loss heads for -inf while the
reconstruction gets worse.

`bug=True` subtracts it; the healthy twin `vae_kl_added` adds it."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, line_in, log


class VAE(nn.Module):
    def __init__(self, dim: int = 32, latent: int = 4):
        super().__init__()
        self.enc = nn.Linear(dim, 32)
        self.mu = nn.Linear(32, latent)
        self.logvar = nn.Linear(32, latent)
        self.dec = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, x):
        h = F.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.dec(z)), mu, logvar


def train(steps: int = 60, watch=None, bug: bool = False):
    g = torch.Generator().manual_seed(13)
    codes = torch.randint(0, 2, (256, 4), generator=g).float()
    x = torch.sigmoid(3 * (codes @ torch.randn(4, 32, generator=g)))
    torch.manual_seed(13)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    doc = watch(model, optimizer) if watch else None
    for step in range(steps):
        xb = x[(step * 32) % 256 : (step * 32) % 256 + 32]
        optimizer.zero_grad(set_to_none=True)
        recon, mu, logvar = model(xb)
        bce = F.binary_cross_entropy(recon, xb, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce - kld if bug else bce + kld  # BUG: the divergence subtracted
        loss.backward()
        optimizer.step()
        log(doc, loss=loss)
    return model


SCENARIOS = (
    Scenario(
        name="vae_kl_subtracted",
        bug="loss = recon - KLD with KLD >= 0: the loss falls without bound below zero",
        train=partial(train, bug=True),
        expect=("TD213",),
        top="TD213",
        where={"source": line_in(__file__, "loss.backward()")},
        twin="vae_kl_added",
        steps=60,
    ),
    Scenario(name="vae_kl_added", bug="", train=train, steps=60),
)

if __name__ == "__main__":
    train(bug=True)
