# Perceiver (Jaegle et al. 2021): a learned latent array cross-attends to a large input set
# (Fourier position features concatenated), then a latent self-attention tower; the classifier
# reads the mean latent. Task: which of 4 quadrant patterns a 2-D point cloud of 64 points shows.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
C, P = 4, 32


def make(n):
    y = torch.randint(0, C, (n,))
    centers = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    pts = 1.2 * torch.randn(n, P, 2) + centers[y][:, None]
    return pts, y


def fourier(p, bands=4):
    f = (2.0 ** torch.arange(bands)) * math.pi
    a = p[..., None] * f
    return torch.cat([p, a.sin().flatten(-2), a.cos().flatten(-2)], -1)


class Block(nn.Module):
    def __init__(self, d, kv=None):
        super().__init__()
        self.nq, self.nkv = nn.LayerNorm(d), nn.LayerNorm(kv or d)
        self.att = nn.MultiheadAttention(d, 4, kdim=kv or d, vdim=kv or d, batch_first=True)
        self.ff = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)
        )

    def forward(self, q, kv):
        kv = self.nkv(kv)
        q = q + self.att(self.nq(q), kv, kv, need_weights=False)[0]
        return q + self.ff(q)


class Perceiver(nn.Module):
    def __init__(self, d=32, n_lat=8, d_in=2 + 2 * 2 * 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_lat, d) * 0.02)
        self.cross = Block(d, kv=d_in)
        self.selfs = nn.ModuleList([Block(d) for _ in range(2)])
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, C))

    def forward(self, pts):
        x = fourier(pts)
        z = self.cross(self.latents.expand(len(pts), -1, -1), x)
        for b in self.selfs:
            z = b(z, z)
        return self.head(z.mean(1))


model = Perceiver()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 120)
losses = []
for step in range(120):
    pts, y = make(32)
    loss = F.cross_entropy(model(pts), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
model.eval()
with torch.no_grad():
    pts, y = make(512)
    acc = (model(pts).argmax(1) == y).float().mean().item()
print("loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10, "acc", acc)
