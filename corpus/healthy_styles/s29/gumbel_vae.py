# A categorical VAE with Gumbel-softmax (hard, straight-through) latents, temperature annealed
# from 1.0 to 0.5, KL to the uniform prior.
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
L, C = 4, 6  # latent variables, categories
protos = (torch.rand(L, C, 24) > 0.5).float()


def batch(n):
    codes = torch.randint(0, C, (n, L))
    x = protos[torch.arange(L), codes].max(1).values  # OR of the chosen patterns
    return (x + 0.1 * torch.rand_like(x)).clamp(0, 1)


enc = nn.Sequential(nn.Linear(24, 128), nn.ReLU(), nn.Linear(128, L * C))
dec = nn.Sequential(nn.Linear(L * C, 128), nn.ReLU(), nn.Linear(128, 24))
opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
losses = []
for step in range(400):
    x = batch(128)
    logits = enc(x).view(-1, L, C)
    tau = max(0.5, math.exp(-3e-3 * step))
    z = F.gumbel_softmax(logits, tau=tau, hard=True)
    rec = F.binary_cross_entropy_with_logits(dec(z.view(-1, L * C)), x, reduction="sum") / len(x)
    q = F.softmax(logits, -1)
    kl = (q * (q.clamp_min(1e-10).log() + math.log(C))).sum() / len(x)
    loss = rec + kl
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("loss first/last", sum(losses[:20]) / 20, sum(losses[-20:]) / 20)
