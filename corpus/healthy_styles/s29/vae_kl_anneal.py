# VAE with KL annealing (beta from 0 to 1 over 200 steps) on 2-D-manifold data in 20-D.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
z_true = torch.randn(3000, 2)
A = torch.randn(2, 20)
X = torch.sigmoid(torch.tanh(z_true @ A) * 3)  # in (0, 1)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.mu = nn.Linear(64, 4)
        self.logvar = nn.Linear(64, 4)
        self.dec = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 20))

    def forward(self, x):
        h = self.enc(x)
        mu, lv = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * lv).exp()
        return self.dec(z), mu, lv


vae = VAE()
opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
losses = []
for step in range(500):
    x = X[torch.randint(0, 3000, (128,))]
    logits, mu, lv = vae(x)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
    kl = -0.5 * (1 + lv - mu.pow(2) - lv.exp()).sum() / len(x)
    beta = min(1.0, step / 200)
    loss = rec + beta * kl
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append((rec + kl).item())
print("elbo-loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)
