"""Healthy: a GAN on a ring of 8 Gaussians, the generator and the discriminator each stepped by
its own optimizer on its own loss. The discriminator's loss rises as the generator improves and
the generator's moves against it: neither is meant to fall (TD108/TD210 stay silent)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._base import Scenario, log


def ring(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * 2.0
    return centers + 0.05 * torch.randn(n, 2, generator=g)


def train(steps: int = 120, watch=None):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    gen = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    disc = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    doc = watch({"gen": gen, "disc": disc}, [opt_g, opt_d]) if watch else None
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    for _ in range(steps):
        fake = gen(torch.randn(64, 8, generator=g))
        d_loss = F.binary_cross_entropy_with_logits(
            disc(ring(64, g)), ones
        ) + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(disc(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        log(doc, loss=g_loss)
    return gen


SCENARIO = Scenario(name="gan_two_players", bug="", train=train, steps=120)

if __name__ == "__main__":
    train()
