# CLIP-style contrastive training of two encoders with a learnable temperature (logit_scale,
# clamped at 100 as in CLIP), symmetric cross-entropy over the in-batch similarity matrix.
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
N = 4000
z = torch.randn(N, 8)
A, B = torch.randn(8, 32), torch.randn(8, 24)
imgs = torch.tanh(z @ A) + 0.1 * torch.randn(N, 32)
txts = (z @ B).relu() + 0.1 * torch.randn(N, 24)


class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.txt = nn.Sequential(nn.Linear(24, 64), nn.GELU(), nn.Linear(64, 32))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, a, b):
        fa = F.normalize(self.img(a), dim=-1)
        fb = F.normalize(self.txt(b), dim=-1)
        return self.logit_scale.exp() * fa @ fb.T


model = CLIP()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
losses = []
for step in range(300):
    i = torch.randint(0, N, (128,))
    logits = model(imgs[i], txts[i])
    labels = torch.arange(128)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20, "scale", model.logit_scale.exp().item())
