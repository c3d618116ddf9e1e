# Conditional flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t)
# x0 + t x1 with x0 ~ N(0, I) and x1 from the data, the network regresses the constant velocity
# x1 - x0 given (x_t, t) with a sinusoidal time embedding; samples by 50 Euler steps. Data: a
# ring of 8 Gaussians. Learns: the generated samples' mean distance to the nearest mode shrinks.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
ang = torch.arange(8) * 2 * math.pi / 8
modes = 2 * torch.stack([ang.cos(), ang.sin()], 1)


def data(n):
    return modes[torch.randint(0, 8, (n,))] + 0.1 * torch.randn(n, 2)


def temb(t, d=16):
    f = torch.exp(-math.log(1000) * torch.arange(d // 2) / (d // 2))
    a = t[:, None] * 100 * f
    return torch.cat([a.sin(), a.cos()], 1)


class Velocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, temb(t)], 1))


@torch.no_grad()
def sample(model, n=1000, steps=50):
    x = torch.randn(n, 2)
    for i in range(steps):
        t = torch.full((n,), i / steps)
        x = x + model(x, t) / steps
    return x


def quality(model):
    return torch.cdist(sample(model), modes).min(1).values.mean().item()


model = Velocity()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
before = quality(model)
for step in range(800):
    x1 = data(256)
    x0 = torch.randn_like(x1)
    t = torch.rand(len(x1))
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    loss = F.mse_loss(model(xt, t), x1 - x0)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("last loss", loss.item(), "distance to nearest mode before", before, "after", quality(model))
