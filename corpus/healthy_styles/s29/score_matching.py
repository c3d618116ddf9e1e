# Denoising score matching with several noise levels (NCSN-style), sigma-weighted loss.
import torch
import torch.nn as nn

torch.manual_seed(0)
centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
data = centers[torch.randint(0, 3, (3000,))] + 0.3 * torch.randn(3000, 2)
sigmas = torch.exp(torch.linspace(0, -3, 8))  # 1.0 .. 0.05


class Score(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 64), nn.Softplus(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 2))

    def forward(self, x, sigma):
        return self.body(torch.cat([x, sigma.log()[:, None]], 1)) / sigma[:, None]


s = Score()
opt = torch.optim.Adam(s.parameters(), lr=1e-3)
losses = []
for step in range(400):
    x = data[torch.randint(0, 3000, (128,))]
    idx = torch.randint(0, len(sigmas), (128,))
    sig = sigmas[idx]
    noise = torch.randn_like(x) * sig[:, None]
    target = -noise / sig[:, None] ** 2
    pred = s(x + noise, sig)
    loss = 0.5 * ((pred - target) ** 2).sum(1).mul(sig**2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)
