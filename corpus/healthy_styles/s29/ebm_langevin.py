# An energy-based model trained by contrastive divergence with short-run Langevin sampling from a
# replay buffer (Du & Mordatch 2019 style): autograd.grad of the energy wrt the samples, an
# energy-magnitude regularizer; the loss can be negative.
import torch
import torch.nn as nn

torch.manual_seed(0)
centers = torch.tensor([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5]])
data = centers[torch.randint(0, 3, (3000,))] + 0.2 * torch.randn(3000, 2)
E = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
opt = torch.optim.Adam(E.parameters(), lr=1e-3, betas=(0.0, 0.999))
buffer = torch.rand(1000, 2) * 6 - 3
gaps = []
for step in range(300):
    x_pos = data[torch.randint(0, 3000, (64,))]
    idx = torch.randint(0, 1000, (64,))
    x = buffer[idx].clone()
    fresh = torch.rand(64) < 0.05
    x[fresh] = torch.rand(int(fresh.sum()), 2) * 6 - 3
    for k in range(20):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(E(x).sum(), x)
        x = (x - 0.05 * g + 0.01 * torch.randn_like(x)).detach().clamp(-3, 3)
    buffer[idx] = x
    e_pos, e_neg = E(x_pos), E(x)
    loss = e_pos.mean() - e_neg.mean() + 0.1 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    opt.zero_grad()
    loss.backward()
    opt.step()
    gaps.append((e_neg.mean() - e_pos.mean()).item())
with torch.no_grad():
    d = torch.cdist(buffer, centers).min(1).values
print("energy gap first/last", sum(gaps[:20]) / 20, sum(gaps[-20:]) / 20, "buffer near modes", (d < 0.5).float().mean().item())
