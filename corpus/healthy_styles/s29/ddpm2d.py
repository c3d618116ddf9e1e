# DDPM on 2-D points (two moons made in the script), epsilon-prediction, sinusoidal time embedding.
import math
import torch
import torch.nn as nn

torch.manual_seed(0)


def moons(n):
    t = torch.rand(n) * math.pi
    up = torch.rand(n) < 0.5
    x = torch.where(up, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(up, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2)


T = 100
betas = torch.linspace(1e-4, 0.02, T)
abar = torch.cumprod(1 - betas, 0)


def temb(t, d=16):
    f = torch.exp(-math.log(1000) * torch.arange(d // 2) / (d // 2))
    a = t[:, None].float() * f[None]
    return torch.cat([a.sin(), a.cos()], 1)


class Eps(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, temb(t)], 1))


model = Eps()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = moons(2000)
losses = []
for step in range(400):
    x0 = data[torch.randint(0, len(data), (128,))]
    t = torch.randint(0, T, (128,))
    noise = torch.randn_like(x0)
    xt = abar[t].sqrt()[:, None] * x0 + (1 - abar[t]).sqrt()[:, None] * noise
    loss = nn.functional.mse_loss(model(xt, t), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)
with torch.no_grad():
    x = torch.randn(500, 2)
    for i in reversed(range(T)):
        e = model(x, torch.full((500,), i))
        x = (x - betas[i] / (1 - abar[i]).sqrt() * e) / (1 - betas[i]).sqrt()
        if i > 0:
            x = x + betas[i].sqrt() * torch.randn_like(x)
print("sample mean", x.mean(0).tolist(), "data mean", data.mean(0).tolist())
