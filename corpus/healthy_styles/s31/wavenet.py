# WaveNet (van den Oord et al. 2016): a stack of dilated causal conv1d (left padding only),
# gated tanh * sigmoid units, residual and skip connections, 1x1 output convs, softmax over
# 64 mu-law levels of the next sample; trained by teacher forcing on random sums of sines.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
Q, T = 64, 256


def mu_law(x, q=Q):
    mu = q - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def signals(n):
    t = torch.arange(T + 1).float()
    f = 0.02 + 0.1 * torch.rand(n, 3, 1)
    ph = 2 * math.pi * torch.rand(n, 3, 1)
    return (torch.sin(2 * math.pi * f * t + ph).sum(1) / 3).clamp(-1, 1)


class Layer(nn.Module):
    def __init__(self, c, d, last=False):
        super().__init__()
        self.d = d
        self.conv = nn.Conv1d(c, 2 * c, 2, dilation=d)
        self.res = None if last else nn.Conv1d(c, c, 1)  # the last layer's residual is unused
        self.skip = nn.Conv1d(c, c, 1)

    def forward(self, x):
        a, b = self.conv(F.pad(x, (self.d, 0))).chunk(2, 1)
        h = torch.tanh(a) * torch.sigmoid(b)
        return (x if self.res is None else x + self.res(h)), self.skip(h)


class WaveNet(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.emb = nn.Embedding(Q, c)
        self.layers = nn.ModuleList([Layer(c, 2**i, last=i == 5) for i in range(6)])
        self.out = nn.Sequential(nn.ReLU(), nn.Conv1d(c, c, 1), nn.ReLU(), nn.Conv1d(c, Q, 1))

    def forward(self, q):
        x = self.emb(q).transpose(1, 2)
        skips = 0
        for layer in self.layers:
            x, s = layer(x)
            skips = skips + s
        return self.out(skips)


model = WaveNet()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
losses = []
for step in range(200):
    q = mu_law(signals(16))
    loss = F.cross_entropy(model(q[:, :-1]), q[:, 1:])
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first10/last10", sum(losses[:10]) / 10, sum(losses[-10:]) / 10, "uniform", math.log(Q))
