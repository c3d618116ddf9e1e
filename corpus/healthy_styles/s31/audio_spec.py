# Audio classification from spectrograms: waveforms of 4 synthetic sound classes (tone, chirp,
# AM tone, noise burst) -> torch.stft magnitude -> log(1 + x) -> SpecAugment (a random time and
# frequency band zeroed, training only) -> a small CNN with BatchNorm and global pooling; AdamW.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
SR, N = 4000, 2000


def wave(c, n):
    t = torch.arange(N) / SR
    f0 = 200 + 800 * torch.rand(n, 1)
    if c == 0:
        w = torch.sin(2 * math.pi * f0 * t)
    elif c == 1:
        w = torch.sin(2 * math.pi * (f0 + 600 * t) * t)
    elif c == 2:
        w = torch.sin(2 * math.pi * f0 * t) * (1 + torch.sin(2 * math.pi * 8 * t)) / 2
    else:
        w = torch.randn(n, N) * ((t > 0.1) & (t < 0.3)).float()
    return w + 0.3 * torch.randn(n, N)


def data(n):
    y = torch.randint(0, 4, (n,))
    x = torch.stack([wave(int(c), 1)[0] for c in y])
    return x, y


win = torch.hann_window(256)


def spec(x, train):
    s = torch.stft(x, 256, 64, window=win, return_complex=True).abs()
    s = torch.log1p(s)[:, None]  # (B, 1, F, T)
    if train:
        f0, t0 = torch.randint(0, s.shape[2] - 12, ()), torch.randint(0, s.shape[3] - 6, ())
        s = s.clone()
        s[:, :, f0 : f0 + 12] = 0
        s[:, :, :, t0 : t0 + 6] = 0
    return s


model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.BatchNorm2d(16),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1),
    nn.BatchNorm2d(32),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 32, 3, padding=1),
    nn.BatchNorm2d(32),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(32, 4),
)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
Xtr, ytr = data(800)
Xte, yte = data(200)
for epoch in range(4):
    model.train()
    perm = torch.randperm(len(Xtr))
    for i in range(0, len(Xtr), 32):
        idx = perm[i : i + 32]
        loss = F.cross_entropy(model(spec(Xtr[idx], True)), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(spec(Xte, False)).argmax(1) == yte).float().mean().item()
    print("epoch", epoch, "loss", round(loss.item(), 4), "test acc", acc)
